package pgtest

import (
	"strings"
	"testing"
)

// StartStandby is NewStandby for programs; RestartMode and StopMode report
// errors instead of failing a test. An immediate restart is a crash: the
// server recovers, and committed data survive it.
func TestStandbyAndModes(t *testing.T) {
	requireCluster(t)
	t.Parallel()
	c := NewCluster(t)
	s, err := StartStandby(c)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Destroy(); err != nil {
			t.Error(err)
		}
	}()
	sdb := open(t, "pgx", s.DSN())
	if got := queryInt(t, sdb, "SELECT pg_is_in_recovery()::int"); got != 1 {
		t.Errorf("standby: pg_is_in_recovery() = %d, want 1", got)
	}
	sdb.Close()

	db := open(t, "pgx", c.DSN())
	if _, err := db.Exec("CREATE TABLE survives (x int); INSERT INTO survives VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, mode := range []string{"immediate", "fast"} {
		if err := c.RestartMode(mode); err != nil {
			t.Fatal(err)
		}
		db := open(t, "pgx", c.DSN())
		if got := queryInt(t, db, "SELECT x FROM survives"); got != 7 {
			t.Errorf("after restart -m %s: got %d, want 7", mode, got)
		}
		db.Close()
	}
	if err := c.StopMode("immediate"); err != nil {
		t.Fatal(err)
	}
	if err := c.StopMode("fast"); err == nil || !strings.Contains(err.Error(), "pg_ctl stop") {
		t.Errorf("stopping a stopped server: got %v, want a pg_ctl stop error", err)
	}
}

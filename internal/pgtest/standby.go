package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// NewStandby starts a hot standby of primary: a streaming replica made with
// pg_basebackup -R, on a port of its own, answering read-only queries while
// in recovery. It is stopped and deleted when the test ends.
func NewStandby(tb testing.TB, primary *Cluster) *Cluster {
	tb.Helper()
	// pg_basebackup of the same installation as pg_ctl, which may be a
	// symbolic link into it.
	pgCtl, err := filepath.EvalSymlinks(primary.pgCtl)
	if err != nil {
		pgCtl = primary.pgCtl
	}
	basebackup := filepath.Join(filepath.Dir(pgCtl), "pg_basebackup")
	if _, err := os.Stat(basebackup); err != nil {
		skipOrFatal(tb, "pgtest: NewStandby: no pg_basebackup beside %s: %v", pgCtl, err)
	}
	base, err := os.MkdirTemp(tempRoot(primary.runAs != nil), "pgtest-standby-")
	if err != nil {
		tb.Fatal(err)
	}
	s := &Cluster{
		pgCtl:   primary.pgCtl,
		base:    base,
		dataDir: filepath.Join(base, "data"),
		logFile: filepath.Join(base, "postgres.log"),
		runAs:   primary.runAs,
	}
	tb.Cleanup(func() {
		if err := s.destroy(); err != nil {
			tb.Errorf("pgtest: cleaning up standby: %v", err)
		}
	})
	if err := s.chown(base); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	start := time.Now()
	out, err := s.run(ctx, basebackup, "-D", s.dataDir, "-R", "-X", "stream", "--no-sync",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", superuser)
	if err != nil {
		tb.Fatalf("pgtest: pg_basebackup: %v\n%s", err, out)
	}
	// The copy includes the primary's pgtest.conf, whose socket directory
	// is the primary's; point it at the standby's own.
	if err := s.configure(nil); err != nil {
		tb.Fatal(err)
	}
	if s.port, err = freePort(); err != nil {
		tb.Fatal(err)
	}
	if err := s.writePortConf(); err != nil {
		tb.Fatal(err)
	}
	if err := s.start(); err != nil {
		tb.Fatalf("pgtest: starting standby: %v", err)
	}
	tb.Logf("pgtest: standby of port %d on port %d ready in %v", primary.port, s.port, time.Since(start).Round(time.Millisecond))
	return s
}

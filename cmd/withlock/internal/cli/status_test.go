package cli

import (
	"regexp"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// TestStatusText checks that each time is labelled for what it is: the
// session's start, its last change of state, and a waiter's wait start
// when the server gives one.
func TestStatusText(t *testing.T) {
	now := time.Date(2025, 3, 1, 10, 0, 44, 0, time.UTC)
	ago := func(s int) time.Time { return now.Add(-time.Duration(s) * time.Second) }
	hs := []sqllock.Holder{
		{PID: 41237, Granted: true, ApplicationName: "withlock:dbmigration", ClientAddr: "10.0.3.17",
			BackendStart: ago(42), State: "idle", StateChange: ago(1)},
		{PID: 41301, ApplicationName: "withlock:dbmigration", ClientAddr: "10.0.3.18",
			BackendStart: ago(15), WaitStart: ago(14), State: "active", StateChange: ago(14)},
		{PID: 41302, State: "active", StateChange: ago(3)}, // PostgreSQL 13: no wait start; another user's session
	}
	got := newLockStatus("dbmigration", "node", keyspace.Node.Key("dbmigration"), hs).text(now)
	ts := `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)`
	want := regexp.MustCompile(`^lock "dbmigration" \(keyspace node, key pair\(-1682085387,-1149921686\)\): held exclusively
  held by pid 41237 \(exclusive, withlock:dbmigration\) from 10\.0\.3\.17, session since ` + ts + ` \(42s ago\), idle since ` + ts + ` \(1s ago\)
2 sessions waiting
  waiting pid 41301 \(exclusive, withlock:dbmigration\) from 10\.0\.3\.18, waiting since ` + ts + ` \(14s ago\), session since ` + ts + ` \(15s ago\), active since ` + ts + ` \(14s ago\)
  waiting pid 41302 \(exclusive, \(no application_name\)\) from local socket, active since ` + ts + ` \(3s ago\)
$`)
	if !want.MatchString(got) {
		t.Errorf("got\n%s\nwant it to match\n%s", got, want)
	}
}

// TestStatusTextElection checks that a holder which has won an election
// but waits out its takeover delay is said not to lead yet.
func TestStatusTextElection(t *testing.T) {
	now := time.Date(2025, 3, 1, 10, 0, 44, 0, time.UTC)
	hs := []sqllock.Holder{{PID: 41237, Granted: true, ApplicationName: "clock@web-1", BackendStart: now}}
	for _, tc := range []struct {
		state sqllock.ElectionState
		want  string
		line  bool
	}{
		{sqllock.ElectionWaiting, "waiting", true},
		{sqllock.ElectionLeading, "leading", false},
		{sqllock.ElectionIdle, "none", false},
	} {
		st := newLockStatus("clock", "node", keyspace.Node.Key("clock"), hs)
		st.setElection(tc.state)
		got := st.text(now)
		if st.ElectionState != tc.want {
			t.Errorf("%v: election_state %q, want %q", tc.state, st.ElectionState, tc.want)
		}
		if line := regexp.MustCompile(`(?m)^  an election's winner, waiting out its takeover delay: it does not lead yet$`).MatchString(got); line != tc.line {
			t.Errorf("%v: the waiting line shown %v, want %v:\n%s", tc.state, line, tc.line, got)
		}
	}
}

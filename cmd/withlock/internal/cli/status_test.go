package cli

import (
	"regexp"
	"strings"
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

// TestSemStatusText checks status --slots: each slot, free or held and by
// whom, then who waits for which slot, then the watcher.
func TestSemStatusText(t *testing.T) {
	now := time.Date(2025, 3, 1, 10, 0, 44, 0, time.UTC)
	ago := func(s int) time.Time { return now.Add(-time.Duration(s) * time.Second) }
	s, err := lookupScheme("node")
	if err != nil {
		t.Fatal(err)
	}
	ks, err := s.semaphoreKeys("report", 3)
	if err != nil {
		t.Fatal(err)
	}
	hs := []sqllock.SlotHolder{
		{Slot: 0, Holder: sqllock.Holder{PID: 41237, Granted: true, ApplicationName: "withlock:report", ClientAddr: "10.0.3.17", BackendStart: ago(42), State: "idle", StateChange: ago(1)}},
		{Slot: 2, Holder: sqllock.Holder{PID: 41240, Granted: true, ApplicationName: "withlock:report", BackendStart: ago(30)}},
		{Slot: 0, Holder: sqllock.Holder{PID: 41301, ApplicationName: "withlock:report", ClientAddr: "10.0.3.18", WaitStart: ago(14), State: "active", StateChange: ago(14)}},
		{Slot: -1, Holder: sqllock.Holder{PID: 41302, Granted: true, ApplicationName: "withlock:report", ClientAddr: "10.0.3.18", BackendStart: ago(15)}},
	}
	st := newSemStatus("report", "node", ks, hs)
	if !st.Held || st.HeldSlots != 2 || st.Waiting != 1 || st.Watcher == nil || st.Watcher.PID != 41302 {
		t.Errorf("got held %v, %d held slots, %d waiting, watcher %+v; want true, 2, 1 and pid 41302", st.Held, st.HeldSlots, st.Waiting, st.Watcher)
	}
	got := st.text(now)
	ts := `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)`
	key := func(i int) string { return regexp.QuoteMeta(keyspace.Node.Key(sqllock.SlotName("report", i)).String()) }
	want := regexp.MustCompile(`^semaphore "report" \(keyspace node\): 2 of 3 slots held
  slot 0 \(key ` + key(0) + `\): held by pid 41237 \(exclusive, withlock:report\) from 10\.0\.3\.17, session since ` + ts + ` \(42s ago\), idle since ` + ts + ` \(1s ago\)
  slot 1 \(key ` + key(1) + `\): free
  slot 2 \(key ` + key(2) + `\): held by pid 41240 \(exclusive, withlock:report\) from local socket, session since ` + ts + ` \(30s ago\)
1 session waiting for a slot
  slot 0: waiting pid 41301 \(exclusive, withlock:report\) from 10\.0\.3\.18, waiting since ` + ts + ` \(14s ago\), active since ` + ts + ` \(14s ago\)
  watch lock "report#watch" held by pid 41302 \(exclusive, withlock:report\) from 10\.0\.3\.18, session since ` + ts + ` \(15s ago\)
$`)
	if !want.MatchString(got) {
		t.Errorf("got\n%s\nwant it to match\n%s", got, want)
	}

	free := newSemStatus("report", "node", ks, nil).text(now)
	if want := "): 0 of 3 slots held\n"; !strings.Contains(free, want) || !strings.HasSuffix(free, "  slot 2 (key "+keyspace.Node.Key("report#2").String()+"): free\nno session waiting\n") {
		t.Errorf("free semaphore: got\n%s\nwant 0 of 3 held, each slot free, and no one waiting", free)
	}
}

package sqltext

import (
	"strings"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// With a lease, every grant sets it and counts as work after the grant; the
// unlocks of a session's last lock give it back, the others keep it.
// Without one, the statements are the plain ones.
func TestLease(t *testing.T) {
	q := Build(keyspace.Int64(42), true)
	plain := q
	q.Fence()
	q.Lease(10 * time.Second)
	on := LeaseOn(10 * time.Second)
	if !strings.Contains(on, "'10000'") {
		t.Errorf("LeaseOn(10s) = %s; want the lease in milliseconds", on)
	}
	for _, s := range []*LockStmt{q.Lock, q.LockShared, q.Try, q.TryShared, q.TrySharedBehind} {
		text := strings.Join(s.Parts, "7")
		if !strings.Contains(text, on) || !s.AfterGrant {
			t.Errorf("kind %d: %s (after grant %v); want the lease set after the grant", s.Kind, text, s.AfterGrant)
		}
	}
	if !q.Lock.Fenced || !strings.Contains(strings.Join(q.Lock.Parts, "7"), FencedToken) {
		t.Errorf("the fenced lock lost its token: %s", q.Lock.Parts)
	}
	text := func(s *LockStmt) string { return strings.Join(s.Parts, "7") }
	for _, u := range []*LockStmt{q.Unlock, q.UnlockShared} {
		if !strings.Contains(text(u), LeaseOff(10*time.Second)) || !strings.Contains(text(u), "= '10s'") {
			t.Errorf("%s; want the lease given back", text(u))
		}
	}
	if text(q.UnlockKeep) != text(plain.Unlock) || text(q.UnlockSharedKeep) != text(plain.UnlockShared) {
		t.Errorf("keep forms %q, %q; want the plain unlocks", text(q.UnlockKeep), text(q.UnlockSharedKeep))
	}
	q.Lease(0)
	if text(q.Unlock) != text(plain.Unlock) || q.LockShared.AfterGrant || text(q.LockShared) != text(plain.LockShared) {
		t.Errorf("Lease(0) left %q, %q", text(q.Unlock), q.LockShared.Parts)
	}
}

// shown writes a duration as the server shows it (checked against
// PostgreSQL 15's SHOW).
func TestShown(t *testing.T) {
	for ms, want := range map[int64]string{10000: "10s", 1500: "1500ms", 60000: "1min", 90000: "90s", 7200000: "2h", 86400000: "1d", 60500: "60500ms", 800: "800ms"} {
		if got := shown(ms); got != want {
			t.Errorf("shown(%d) = %q, want %q", ms, got, want)
		}
	}
}

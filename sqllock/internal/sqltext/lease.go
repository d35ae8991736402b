package sqltext

import (
	"strconv"
	"time"
)

// A lease is the server's bound on a holder that stops: a grant sets the
// session's idle_session_timeout (PostgreSQL 14 and later) to it, so that
// the keep-alive's probes keep a live holder's session, and a holder that
// stops probing (SIGSTOP, a frozen VM) loses its session, and its locks,
// once the session has been idle that long. Only a session with no
// idle_session_timeout of its own gets one; the unlock of a session's last
// lock resets the setting, so that a connection back in the pool carries
// nothing of sqllock's. Two set_config calls per Lock+Unlock: each costs
// the server about as much as the rest of the statement's own work (see
// docs/benchmarks.md).

// LeaseOn is the SQL that sets lease d on a session that has no
// idle_session_timeout of its own, and answers true. Before PostgreSQL 14
// the setting does not exist: current_setting's missing_ok gives NULL, and
// nothing is set.
func LeaseOn(d time.Duration) string {
	return "CASE WHEN current_setting('idle_session_timeout', true) = '0'" +
		" THEN set_config('idle_session_timeout', '" + strconv.FormatInt(leaseMS(d), 10) + "', false) <> '' ELSE true END"
}

// LeaseOff is the SQL that resets a session's idle_session_timeout if it
// is lease d (see LeaseOn), and answers true. A session whose own value
// is exactly d is reset too, to its configured value.
func LeaseOff(d time.Duration) string {
	return "CASE WHEN current_setting('idle_session_timeout', true) = '" + shown(leaseMS(d)) + "'" +
		" THEN set_config('idle_session_timeout', NULL, false) <> '' ELSE true END"
}

// leaseMS is d in whole milliseconds, at least one.
func leaseMS(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// shown is how the server shows a setting of ms milliseconds: in the
// largest unit that gives a whole number.
func shown(ms int64) string {
	for _, u := range []struct {
		name string
		ms   int64
	}{{"d", 86400000}, {"h", 3600000}, {"min", 60000}, {"s", 1000}} {
		if ms%u.ms == 0 {
			return strconv.FormatInt(ms/u.ms, 10) + u.name
		}
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

// Lease makes q's grants set lease d on their session, and q's unlocks
// give it back (see LeaseOn); d <= 0 takes the lease away.
func (q *Queries) Lease(d time.Duration) {
	q.lease = max(d, 0)
	q.assemble()
}

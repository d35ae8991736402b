package sqltext

import (
	"strconv"
	"time"
)

// A lease is the server's bound on a holder that stops: a grant sets the
// session's idle_session_timeout (PostgreSQL 14 and later) to it, so that
// the keep-alive's probes keep a live holder's session, and a holder that
// stops probing (SIGSTOP, a frozen VM) loses its session, and its locks,
// once the session has been idle that long. The value the session had is
// kept in LeaseSavedGUC and given back by the unlock of the session's last
// lock, so that a connection back in the pool carries no setting of ours.
// A grant on a session that already has a lease keeps the saved value; a
// session whose own value is shorter keeps its own.

// LeaseSavedGUC holds a leased session's own idle_session_timeout.
const LeaseSavedGUC = "sqllock.idle_session_timeout"

// LeaseOn is the SQL that sets lease d on the session and answers true,
// saving the session's own value first (an argument is evaluated before
// its function). A session whose own idle_session_timeout is shorter
// keeps it: its owner chose to end idle sessions sooner. Servers without
// idle_session_timeout (before PostgreSQL 14) get no lease: CASE
// evaluates only the branch it takes.
func LeaseOn(d time.Duration) string {
	ms := strconv.FormatInt(max(d.Milliseconds(), 1), 10)
	own := "current_setting('idle_session_timeout')::interval"
	return "CASE WHEN current_setting('idle_session_timeout', true) IS NULL THEN true" +
		" ELSE set_config('idle_session_timeout', CASE WHEN set_config('" + LeaseSavedGUC + "'," +
		" COALESCE(NULLIF(current_setting('" + LeaseSavedGUC + "', true), ''), current_setting('idle_session_timeout')), false) <> ''" +
		" AND (" + own + " = '0' OR " + own + " > '" + ms + "ms') THEN '" + ms + "' ELSE current_setting('idle_session_timeout') END, false) <> '' END"
}

// LeaseOff is the SQL that gives a leased session its own
// idle_session_timeout back and answers true; on a session without a
// lease it changes nothing.
const LeaseOff = "CASE WHEN COALESCE(current_setting('" + LeaseSavedGUC + "', true), '') = '' THEN true" +
	" ELSE set_config('" + LeaseSavedGUC + "', CASE WHEN set_config('idle_session_timeout', current_setting('" + LeaseSavedGUC + "'), false) <> ''" +
	" THEN '' END, false) = '' END"

// Lease makes q's grants set lease d on their session, and q's unlocks
// give it back (see LeaseOn); d <= 0 takes the lease away.
func (q *Queries) Lease(d time.Duration) {
	q.lease = max(d, 0)
	q.assemble()
}

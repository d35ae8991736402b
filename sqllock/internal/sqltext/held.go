package sqltext

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// Held is the SQL of one key's lock on a session held in a transaction,
// as behind a transaction-mode pooler, which keeps a client on one server
// session only from BEGIN to the transaction's end. The lock is a
// transaction-level one: whatever ends the transaction (the unlock's
// ROLLBACK, an error, the client's disconnection, the server ending the
// session) releases it, so no server session goes back to the pooler
// carrying it. The key is written into the text: a pooled connection
// reaches another server session with every transaction, where nothing is
// prepared.
type Held struct {
	Try, TryShared   string // answer the backend pid times 2, plus 1 if granted; a space; the transaction's start (see XactStart)
	Wait, WaitShared string // one row, once granted

	// A multiplexed session held in a transaction (see HeldTx) carries
	// session-level locks, each released by its own unlock.
	First, FirstShared     string // the transaction's first lock: answers as Try does
	In, InShared, InBehind string // a later lock's select list: true if granted (see HeldTx.Try); InBehind yields to a queued waiter (see waiterQueued)
	Unlock, UnlockShared   string // an unlock's condition: true if it released the lock (see HeldTx.Unlock)
}

// Statements of a session held in a transaction.
const (
	RollbackSQL = "ROLLBACK"
	// HeldSettingsSQL answers, as one integer, the server's
	// idle_in_transaction_session_timeout in milliseconds (0: none), which
	// ends a session held idle longer, times 2, plus 1 if the session's
	// default isolation is REPEATABLE READ or SERIALIZABLE, whose
	// transactions keep their first statement's snapshot, which would hold
	// back VACUUM for as long as the lock is held (READ UNCOMMITTED is READ
	// COMMITTED in PostgreSQL).
	HeldSettingsSQL = "SELECT setting::int8*2 + (current_setting('default_transaction_isolation') IN ('repeatable read', 'serializable'))::int" +
		" FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'"
)

// BuildHeld returns the statements of key k held in a transaction. A lease
// d > 0 sets the transaction's idle_in_transaction_session_timeout to d,
// for the transaction alone (see LeaseOn): a holder that stops probing
// loses its session, and its lock. The caller passes d only for a server
// with no idle_in_transaction_session_timeout of its own, which, as
// LeaseOn, is kept otherwise. The try sets it before it tries, so that a
// wait that follows inherits it.
func BuildHeld(k keyspace.Key, d time.Duration) *Held {
	q := Build(k, false)
	list := q.KeyList
	try := func(fn string) string {
		granted := fn + "(" + list + ")::int"
		if d > 0 {
			granted = "CASE WHEN " + heldLease(d) + " THEN 0 WHEN " + fn + "(" + list + ") THEN 1 ELSE 0 END"
		}
		return "SELECT (pg_backend_pid()::int8*2 + " + granted + ")::text || ' ' || " + XactStart
	}
	return &Held{
		Try:          try("pg_try_advisory_xact_lock"),
		TryShared:    try("pg_try_advisory_xact_lock_shared"),
		Wait:         "SELECT 1 FROM pg_advisory_xact_lock(" + list + ")",
		WaitShared:   "SELECT 1 FROM pg_advisory_xact_lock_shared(" + list + ")",
		First:        try("pg_try_advisory_lock"),
		FirstShared:  try("pg_try_advisory_lock_shared"),
		In:           "pg_try_advisory_lock(" + list + ")",
		InShared:     "pg_try_advisory_lock_shared(" + list + ")",
		InBehind:     "CASE WHEN " + q.queued + " THEN false ELSE pg_try_advisory_lock_shared(" + list + ") END",
		Unlock:       "pg_advisory_unlock(" + list + ")",
		UnlockShared: "pg_advisory_unlock_shared(" + list + ")",
	}
}

// heldLease is LeaseOn for a session held in a transaction: an idle
// transaction is ended by idle_in_transaction_session_timeout, not by
// idle_session_timeout, and set_config's is_local makes the transaction's
// end give the setting back.
func heldLease(d time.Duration) string {
	return "set_config('idle_in_transaction_session_timeout', '" + strconv.FormatInt(leaseMS(d), 10) + "', true) = ''"
}

// LockTimeout is the statement that makes the held transaction's lock
// waits end after d (rounded up to a millisecond), as ctx's deadline would.
func LockTimeout(d time.Duration) string {
	return "SET LOCAL lock_timeout = " + strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
}

// HeldAnswer reads a held try's answer: the backend pid, whether the lock
// was granted, and the transaction's start (see XactStart).
func HeldAnswer(v any) (pid int64, granted bool, tx int64, err error) {
	var s string
	switch a := v.(type) {
	case string:
		s = a
	case []byte:
		s = string(a)
	}
	n, t, ok := strings.Cut(s, " ")
	nn, nerr := strconv.ParseInt(n, 10, 64)
	tx, terr := strconv.ParseInt(t, 10, 64)
	if !ok || nerr != nil || terr != nil || nn <= 1 || tx == 0 {
		return 0, false, 0, fmt.Errorf("the lock statement answered %T %v, not a backend, a grant and a transaction: whether the session holds the lock is unknown, so it is discarded", v, v)
	}
	return nn >> 1, nn&1 == 1, tx, nil
}

// HeldToken is the SQL that draws the fencing token of key k's exclusive
// lock held in a transaction by backend pid, run in a transaction of its
// own on another session: the held transaction never gets a transaction
// id, which would hold back VACUUM for as long as the lock is held. The
// token's transaction id is assigned first (see FencedToken); pg_locks is
// read after it, and the token is answered only if the holder still holds
// the lock then, else '0'. A later grant is made after that read, and its
// token drawn after its grant, so every later token is larger.
func HeldToken(pid int64, k keyspace.Key) string {
	c, o, s := k.LockTag()
	return "SELECT CASE WHEN pg_logical_emit_message(true, 'sqllock', '') IS NOT NULL" +
		" AND (current_setting('synchronous_commit') <> 'off' OR set_config('synchronous_commit', 'on', true) <> '')" +
		" THEN CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'" +
		" AND pid = " + strconv.FormatInt(pid, 10) +
		" AND classid = " + strconv.FormatUint(uint64(c), 10) + " AND objid = " + strconv.FormatUint(uint64(o), 10) +
		" AND objsubid = " + strconv.Itoa(int(s)) +
		" AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))" +
		" THEN left(pg_walfile_name(pg_current_wal_lsn()), 8) || ' ' || pg_current_xact_id()::text ELSE '0' END END"
}

// Marked returns a held try (Held.Try, Held.TryShared) as one statement
// that also begins the transaction, "try; BEGIN", marked by a comment
// with mark first (see NewMark): a simple query of several statements runs
// as one transaction, which its BEGIN turns into one that stays open with
// the try's lock, so that taking a lock costs one round trip. Without
// begin, the try alone (its transaction begun before).
func Marked(mark, try string, begin bool) string {
	if begin {
		return mark + try + "; BEGIN"
	}
	return mark + try
}

// NewMark returns a comment that marks one held try (see Marked), unlike
// any other of any process: pg_stat_activity shows it as its session's
// last query, where the settling of a try whose answer never came finds
// the session. The sequence is the process's, as ProcessToken is: two
// Lockers of one process must not mark alike, or one's settling would end
// the other's session.
func NewMark() string {
	return "/* sqllock " + ProcessToken() + strconv.FormatUint(markSeq.Add(1), 36) + " */ "
}

var markSeq atomic.Uint64

// MarkedTerminate terminates every other backend whose last query began
// with mark (see NewMark) and that has not gone idle since: in the
// transaction that statement began, or still running it. A backend idle
// since is back in its pool, its transaction over. It answers one row per
// backend, true if it was signalled; TerminateMarked then looks until
// none is left.
func MarkedTerminate(mark string) string {
	return "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE " + markedSession(mark)
}

// MarkedLook counts the backends MarkedTerminate would terminate.
func MarkedLook(mark string) string {
	return "SELECT count(*) FROM pg_stat_activity WHERE " + markedSession(mark)
}

func markedSession(mark string) string {
	return "left(query, " + strconv.Itoa(len(mark)) + ") = '" + mark + "' AND state <> 'idle' AND pid <> pg_backend_pid()"
}

// Behind a transaction pooler, a multiplexed session (WithSessions) carries
// its locks in a transaction held open for as long as it carries any, begun
// by BeginRCSQL and, with its first lock, a savepoint (First): the locks are
// session-level ones, so that each unlock releases its own, and the
// transaction ends only once the session carries none (HeldTx.Unlock,
// HeldTx.End). Every statement after the first is guarded by the
// transaction's backend pid and start, so that none takes or releases
// anything elsewhere. A query of several statements has rows in its first
// alone: bun's pgdriver, for one, reads no second result.
const (
	// BeginRCSQL begins a multiplexed session's transaction: READ
	// COMMITTED whatever the role's default, so that the idle transaction
	// keeps no snapshot between statements.
	BeginRCSQL = "BEGIN ISOLATION LEVEL READ COMMITTED"
	// SavepointSQL follows the transaction's first lock: an error in a
	// later statement aborts the transaction, and RecoverSQL gives it back,
	// with every session lock it holds (a rollback to a savepoint releases
	// no session lock).
	SavepointSQL = "SAVEPOINT sqllock"
	RecoverSQL   = "ROLLBACK TO SAVEPOINT sqllock"
	// freeAll releases every session-level advisory lock of the session,
	// and is true: what ends a transaction calls it first, so that no
	// session lock outlives the transaction, whatever the session holds.
	freeAll = "pg_advisory_unlock_all() IS NOT NULL"
)

// A HeldTx is one transaction of a multiplexed session held in a
// transaction: its backend and its start (see XactStart).
type HeldTx struct {
	PID, Start int64
	in, out    string
}

// InHeldTx returns the transaction of backend pid that began at start.
func InHeldTx(pid, start int64) *HeldTx {
	p, t := strconv.FormatInt(pid, 10), strconv.FormatInt(start, 10)
	return &HeldTx{PID: pid, Start: start,
		in:  " WHERE pg_backend_pid() = " + p + " AND " + XactStart + " = " + t,
		out: "pg_backend_pid() <> " + p + " OR " + XactStart + " <> " + t,
	}
}

// notInTx raises an error (a cast of text that is no integer, which the
// planner cannot fold) where a statement finds itself outside the
// transaction it was written for: the statements after it in the same
// query do not run.
const notInTx = "('sqllock: backend ' || pg_backend_pid() || ' is not in the transaction that holds its locks')::int"

// First is a held try (Held.First, Held.FirstShared) marked with mark (see
// Marked), then the savepoint, for a transaction that BeginRCSQL began;
// apart, with split, for a driver that takes one statement at a time.
func First(mark, try string, split bool) []string {
	return joined(split, mark+try, SavepointSQL)
}

// Try is a later lock in x (Held.In, Held.InShared, Held.InBehind): true
// if granted, false if taken, and no row, taking nothing, outside x.
func (x *HeldTx) Try(sel string) string {
	return "SELECT " + sel + x.in
}

// Unlock releases a lock in x by cond (Held.Unlock, Held.UnlockShared),
// answering 1 if it released it, 0 if the session did not hold it, and an
// error outside x. The last lock the session carries frees every lock the
// session holds and ends x.
func (x *HeldTx) Unlock(cond string, last, split bool) []string {
	if !last {
		return []string{"SELECT CASE WHEN " + x.out + " THEN " + notInTx + " WHEN " + cond + " THEN 1 ELSE 0 END"}
	}
	return joined(split, "SELECT CASE WHEN "+x.out+" THEN "+notInTx+" WHEN "+cond+" THEN CASE WHEN "+freeAll+" THEN 1 ELSE 1 END"+
		" WHEN "+freeAll+" THEN 0 ELSE 0 END", RollbackSQL)
}

// End frees every lock the session holds and ends x, which carries none
// that anyone holds: answers 1, or an error outside x.
func (x *HeldTx) End(split bool) []string {
	return joined(split, "SELECT CASE WHEN "+x.out+" THEN "+notInTx+" WHEN "+freeAll+" THEN 1 ELSE 1 END", RollbackSQL)
}

// Recover gives back x after an error that aborted it (see RecoverSQL),
// then releases by undo (Held.Unlock, Held.UnlockShared) what the failed
// statement may have taken: two queries, since the second has rows.
func (x *HeldTx) Recover(undo string) []string {
	return []string{RecoverSQL, "SELECT CASE WHEN " + x.out + " THEN " + notInTx + " WHEN " + undo + " THEN 1 ELSE 0 END"}
}

// Probe is the keep-alive query in x: the backend pid, and no row
// outside x.
func (x *HeldTx) Probe() string {
	return "SELECT pg_backend_pid()" + x.in
}

// joined returns the statements as one query, whose statements after a
// failed one do not run, or apart, with split, for a driver that takes one
// statement at a time (whose caller stops at the first that fails).
func joined(split bool, stmts ...string) []string {
	if split {
		return stmts
	}
	return []string{strings.Join(stmts, "; ")}
}

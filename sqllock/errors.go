package sqllock

import (
	"errors"
	"strconv"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
)

var (
	// ErrNotHeld reports an Unlock or UnlockShared of a lock that the
	// Mutex does not hold in that mode.
	ErrNotHeld = errs.ErrNotHeld

	// ErrLockLost reports that a lock stopped being held before it was
	// released: its database session ended (terminated backend, server
	// restart, broken network), the keep-alive got no answer in time, or the
	// server no longer recognises the session as the holder. Errors that wrap
	// it also wrap the underlying cause.
	ErrLockLost = errs.ErrLockLost

	// ErrStandby reports a lock refused because the server is a hot standby
	// (pg_is_in_recovery() is true). Advisory locks taken on a standby are
	// local to it and exclude nobody on the primary. See [WithAllowStandby].
	ErrStandby = errs.ErrStandby

	// ErrSharedSession reports a lock refused because no server session can
	// stay this client's while it holds the lock: a pooler in statement mode
	// (PgBouncer pool_mode=statement), which refuses transactions, or a
	// session already used for a lock by another client connection where
	// sqllock cannot tell a pooler from the server. Behind a
	// transaction-mode pooler a lock is held in a transaction, of its own
	// or, with WithSessions, of its session's (docs/drivers.md). Use a
	// session- or transaction-mode pool, or transaction-scoped locks
	// ([Mutex.LockTx]).
	ErrSharedSession = errs.ErrForeignSession

	// ErrIdleInTransaction reports a lock refused behind a transaction-mode
	// pooler, where sqllock holds each lock in an open transaction, because
	// the server's idle_in_transaction_session_timeout would end that
	// transaction, and the lock, between two keep-alive probes. The message
	// names the setting, its value and the value it needs.
	ErrIdleInTransaction = errs.ErrIdleInTransaction

	// ErrNotReleased reports that sqllock gave up on a session that may
	// hold the lock (a release or a grant that got no answer, a session
	// that could not be reached) and could not confirm, within the
	// keep-alive timeout, that the server ended it: the lock may be held
	// until the server notices the session is gone (see the server's
	// tcp_keepalives_* and idle_session_timeout settings). The caller does
	// not hold the lock either way.
	ErrNotReleased = errs.ErrNotReleased

	// ErrLockTableFull reports that the server's lock table had no room
	// for the lock (SQLSTATE 53200, "out of shared memory"). The table
	// holds max_locks_per_transaction × (max_connections +
	// max_prepared_transactions) entries (6,400 with the defaults), shared
	// by every client of the server; raise max_locks_per_transaction
	// (a restart) to hold more locks at once. Locks already held are not
	// affected, and the failed attempt took nothing.
	ErrLockTableFull = errs.ErrLockTableFull

	// ErrNoAnswer reports that sqllock stopped waiting for the server at a
	// bound of its own, not at the caller's context: the keep-alive timeout
	// (see [WithKeepAlive]), or the short bound on ending a session after
	// it. The message names the bound. An error that wraps it never wraps
	// context.Canceled or context.DeadlineExceeded on that account.
	ErrNoAnswer = errs.ErrNoAnswer

	// ErrStubLocks reports a lock refused because the server's advisory-lock
	// functions are stubs that lock nothing: CockroachDB answers every
	// pg_advisory_lock with true, so two holders would both "hold" one
	// lock. The server names itself in version(); sqllock checks once per
	// session, before the first lock on it. [conntest.Run] fails on any
	// setup where two sessions can hold one exclusive key.
	ErrStubLocks = errs.ErrStubLocks

	// ErrNotAcquired reports that WithLock, WithLockShared or TryWithLock
	// did not get the lock (the wait ended, the connection failed, the
	// session was refused), so fn did not run. It tells a failed wait from
	// an error that fn returned, which WithLock returns as fn returned it.
	ErrNotAcquired = errors.New("sqllock: lock not acquired, fn did not run")

	// ErrDriverTimeout reports a lock wait that the driver's own network
	// timeout ended before the call's context did: bun's pgdriver, for
	// one, gives up on any read after 10s (pgdriver.WithReadTimeout).
	// Nothing is left held or waiting; to wait longer, raise the driver's
	// timeout above the longest wait, or bound waits by the context alone.
	ErrDriverTimeout = errs.ErrDriverTimeout

	// ErrNotInTransaction reports a transaction-scoped lock call (LockTx
	// and friends) given something that runs its statement outside an
	// explicit transaction, such as a *sql.DB: the lock would be released
	// as soon as it was taken.
	ErrNotInTransaction = errors.New("sqllock: transaction-scoped lock needs an open transaction")

	// ErrDeadlock reports that the server's deadlock detector (SQLSTATE
	// 40P01) chose this lock request as the victim of a lock-order cycle.
	// The request holds nothing; retry it, ideally after releasing other
	// locks, or take locks in one global order.
	ErrDeadlock = errs.ErrDeadlock

	// ErrNilDB is the sticky error of a Locker built from a nil *sql.DB.
	ErrNilDB = errors.New("sqllock: nil *sql.DB")

	// ErrNilContext reports a nil context.Context passed to a method.
	ErrNilContext = errors.New("sqllock: nil context.Context")

	// ErrNilFunc reports a nil function passed to WithLock or WithLockShared.
	ErrNilFunc = errors.New("sqllock: nil function")
)

// Error records a failed operation on a named lock. Its message names the
// operation, the lock and its key; Unwrap exposes the cause, so
// errors.Is(err, context.DeadlineExceeded) or errors.Is(err, ErrLockLost)
// see through it.
type Error struct {
	Op   string       // "lock", "trylock", "unlock", "lock shared", "withlock", …
	Name string       // the lock's name; empty for a Mutex built from an explicit key
	Key  keyspace.Key // the advisory-lock key; invalid when the name had none
	Err  error        // the cause
}

// Error returns "sqllock: <op> "<name>" <key>: <cause>".
func (e *Error) Error() string {
	s := "sqllock: " + e.Op
	if e.Name != "" {
		s += " " + quote(e.Name)
	}
	if e.Key.Valid() {
		s += " " + e.Key.String()
	}
	if e.Err != nil {
		// Causes that are this package's sentinels keep their meaning
		// without repeating the package name, nested ones too.
		cause := strings.TrimPrefix(e.Err.Error(), "sqllock: ")
		s += ": " + nestedPrefix.Replace(cause)
	}
	return s
}

// nestedPrefix drops the package name where a nested cause of this
// package's starts: "lock lost: sqllock: no answer" reads "lock lost: no
// answer".
var nestedPrefix = strings.NewReplacer(": sqllock: ", ": ", "(sqllock: ", "(")

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// quote quotes a lock name for a message, shortening very long names.
func quote(s string) string {
	const max = 200
	if len(s) > max {
		return strconv.Quote(s[:max]) + "…"
	}
	return strconv.Quote(s)
}

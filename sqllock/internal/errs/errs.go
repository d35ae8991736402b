// Package errs holds the sentinel errors that sqllock's layers share (sqllock
// exports each under its own name: the same values, so errors.Is sees
// through either), and the one place where errors are classified: server
// errors by SQLSTATE, dead sessions, contexts that ended.
package errs

import "errors"

// The sentinels; sqllock documents each under its exported name.
var (
	// ErrLockLost is sqllock.ErrLockLost.
	ErrLockLost = errors.New("sqllock: lock lost")

	// ErrStandby is sqllock.ErrStandby.
	ErrStandby = errors.New("sqllock: server is a standby in recovery; its advisory locks exclude nobody on the primary")

	// ErrForeignSession is sqllock.ErrSharedSession.
	ErrForeignSession = errors.New("sqllock: server session shared with another client, as behind a statement-mode pooler")

	// ErrNotReleased is sqllock.ErrNotReleased.
	ErrNotReleased = errors.New("sqllock: release not confirmed: the abandoned session may hold the lock until the server ends it")

	// ErrLockTableFull is sqllock.ErrLockTableFull.
	ErrLockTableFull = errors.New("sqllock: the server's lock table is full (SQLSTATE 53200): raise max_locks_per_transaction; the table holds max_locks_per_transaction × (max_connections + max_prepared_transactions) locks of all clients")

	// ErrNoAnswer is sqllock.ErrNoAnswer.
	ErrNoAnswer = errors.New("sqllock: no answer from the server within sqllock's bound")

	// ErrDriverTimeout is sqllock.ErrDriverTimeout.
	ErrDriverTimeout = errors.New("sqllock: the driver's own network timeout ended the wait before the context did (bun's pgdriver: WithReadTimeout)")

	// ErrDeadlock is sqllock.ErrDeadlock.
	ErrDeadlock = errors.New("sqllock: deadlock detected")

	// ErrNotHeld is sqllock.ErrNotHeld.
	ErrNotHeld = errors.New("sqllock: lock not held")

	// ErrStubLocks is sqllock.ErrStubLocks.
	ErrStubLocks = errors.New("sqllock: the server's advisory locks are stubs that exclude nobody (CockroachDB): use a PostgreSQL server")

	// ErrIdleInTransaction is sqllock.ErrIdleInTransaction.
	ErrIdleInTransaction = errors.New("sqllock: a lock held in a transaction behind a pooler would outlive idle_in_transaction_session_timeout")

	// ErrFencingUnsupported is sqllock.ErrFencingUnsupported.
	ErrFencingUnsupported = errors.New("sqllock: WithFencing needs PostgreSQL 13 or later (pg_current_xact_id, pg_logical_emit_message)")
)

package sqllock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Transaction-scoped locks (pg_advisory_xact_lock and friends) belong to a
// transaction rather than a session: PostgreSQL releases them at COMMIT or
// ROLLBACK and offers no way to release them earlier. They are the locks to
// use behind a pooler in transaction mode (PgBouncer pool_mode=transaction),
// where a session lock neither excludes nor releases reliably, and when one
// transaction must take several locks: the server's deadlock detector then
// sees the whole cycle and fails one transaction with [ErrDeadlock].
//
// The transaction is the caller's: sqllock neither commits nor rolls it
// back. If a call fails (a cancelled context, a deadlock), roll the
// transaction back; that releases every lock it took.

// LockTx waits until tx holds the lock exclusively, or until ctx ends. The
// lock is released when tx commits or rolls back. A deadlock between
// transactions returns an error wrapping [ErrDeadlock].
func (m *Mutex) LockTx(ctx context.Context, tx *sql.Tx) error {
	_, err := m.txLock(ctx, tx, "pg_advisory_xact_lock", false, "lock tx")
	return err
}

// LockSharedTx is [Mutex.LockTx] in shared mode.
func (m *Mutex) LockSharedTx(ctx context.Context, tx *sql.Tx) error {
	_, err := m.txLock(ctx, tx, "pg_advisory_xact_lock_shared", false, "lock shared tx")
	return err
}

// TryLockTx takes the lock exclusively for tx if no one holds it, in one
// round trip; it returns (false, nil) when the lock is held elsewhere.
func (m *Mutex) TryLockTx(ctx context.Context, tx *sql.Tx) (bool, error) {
	return m.txLock(ctx, tx, "pg_try_advisory_xact_lock", true, "trylock tx")
}

// TryLockSharedTx is [Mutex.TryLockTx] in shared mode.
func (m *Mutex) TryLockSharedTx(ctx context.Context, tx *sql.Tx) (bool, error) {
	return m.txLock(ctx, tx, "pg_try_advisory_xact_lock_shared", true, "trylock shared tx")
}

func (m *Mutex) txLock(ctx context.Context, tx *sql.Tx, fn string, try bool, op string) (bool, error) {
	switch {
	case ctx == nil:
		return false, m.fail(op, ErrNilContext)
	case tx == nil:
		return false, m.fail(op, errors.New("sqllock: nil *sql.Tx"))
	case m.err != nil:
		return false, m.fail(op, m.err)
	}
	q := m.q.txQuery(fn, try)
	var granted = true
	var standby bool
	var err error
	if try {
		err = tx.QueryRowContext(ctx, q, m.q.args...).Scan(&granted, &standby)
	} else {
		err = tx.QueryRowContext(ctx, q, m.q.args...).Scan(&standby)
	}
	switch {
	case err != nil:
		return false, m.fail(op, classify(withCtxErr(ctx, err)))
	case granted && standby && !m.l.cfg.allowStandby:
		return false, m.fail(op, fmt.Errorf("%w (roll the transaction back: it holds the lock until then)", ErrStandby))
	}
	return granted, nil
}

// txQuery builds a transaction-lock statement for fn. Built per call: the
// transaction path is not the hot path of a session lock, and this keeps
// Mutex small.
func (q queries) txQuery(fn string, try bool) string {
	list := q.keyList
	if try {
		return "SELECT " + fn + "(" + list + "), pg_is_in_recovery()"
	}
	return "SELECT pg_is_in_recovery() FROM " + fn + "(" + list + ")"
}

// SQLSTATE codes sqllock recognises in server errors.
const (
	sqlstateDeadlock = "40P01" // deadlock_detected
)

// classify wraps server errors that have a sentinel. Drivers expose the
// SQLSTATE through a SQLState method (pgx's *pgconn.PgError, lib/pq's
// *pq.Error), so no driver is imported.
func classify(err error) error {
	var se interface{ SQLState() string }
	if errors.As(err, &se) && se.SQLState() == sqlstateDeadlock {
		return fmt.Errorf("%w: %w", ErrDeadlock, err)
	}
	return err
}

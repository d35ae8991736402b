package sqllock

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
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

// A Tx is the transaction a transaction-scoped lock is taken in: a
// *sql.Tx, or what an ORM hands out over one, such as *sqlx.Tx, bun.Tx or
// gorm's tx.Statement.ConnPool (a *sql.Tx, or a *gorm.PreparedStmtTX with
// PrepareStmt). The statement must run inside the transaction: something
// that runs each statement in a transaction of its own (a *sql.DB, a
// *sql.Conn outside BEGIN) would have the lock released the moment it was
// taken, so the lock calls refuse it with [ErrNotInTransaction].
type Tx interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// LockTx waits until tx holds the lock exclusively, or until ctx ends. The
// lock is released when tx commits or rolls back. A deadlock between
// transactions returns an error wrapping [ErrDeadlock].
func (m *Mutex) LockTx(ctx context.Context, tx Tx) error {
	_, err := m.txLock(ctx, tx, false, false, "lock tx")
	return err
}

// LockSharedTx is [Mutex.LockTx] in shared mode.
func (m *Mutex) LockSharedTx(ctx context.Context, tx Tx) error {
	_, err := m.txLock(ctx, tx, true, false, "lock shared tx")
	return err
}

// TryLockTx takes the lock exclusively for tx if no one holds it, in one
// round trip; it returns (false, nil) when the lock is held elsewhere.
func (m *Mutex) TryLockTx(ctx context.Context, tx Tx) (bool, error) {
	return m.txLock(ctx, tx, false, true, "trylock tx")
}

// TryLockSharedTx is [Mutex.TryLockTx] in shared mode.
func (m *Mutex) TryLockSharedTx(ctx context.Context, tx Tx) (bool, error) {
	return m.txLock(ctx, tx, true, true, "trylock shared tx")
}

func (m *Mutex) txLock(ctx context.Context, tx Tx, shared, try bool, op string) (bool, error) {
	switch {
	case ctx == nil:
		return false, m.fail(op, ErrNilContext)
	case isNil(tx):
		return false, m.fail(op, fmt.Errorf("sqllock: nil transaction (%T)", tx))
	case m.err != nil:
		return false, m.fail(op, m.err)
	}
	if what := notTx(tx); what != "" {
		return false, m.fail(op, fmt.Errorf("%w: got %s", ErrNotInTransaction, what))
	}
	// The statement runs on the *sql.Tx under an ORM's wrapper, where
	// there is one: wrappers may rewrite statements (bun formats its own
	// placeholders) but not the transaction. A Tx of unknown make gets the
	// key as literals, and a check that the lock outlived its statement.
	q, args := m.t.Q.TxQuery(shared, try), m.t.Args
	sqlTx := findSQLTx(reflect.ValueOf(tx), drv.MaxUnwrap)
	if sqlTx != nil {
		tx = sqlTx
	} else {
		q, args = sqltext.Build(m.t.Key, false).TxQuery(shared, try), nil
	}
	var granted = true
	var verdict int64
	var err error
	if try {
		err = tx.QueryRowContext(ctx, q, args...).Scan(&granted, &verdict)
	} else {
		err = tx.QueryRowContext(ctx, q, args...).Scan(&verdict)
	}
	if err != nil {
		return false, m.fail(op, errs.Classify(errs.WithCtxErr(ctx, err)))
	}
	if granted && sqlTx == nil && verdict != sqltext.TxStub {
		if err := m.stillHeldInTx(ctx, tx); err != nil {
			return false, m.fail(op, err)
		}
	}
	if verdict == sqltext.TxStub {
		return false, m.fail(op, ErrStubLocks)
	}
	if granted && verdict == sqltext.TxStandby && !m.l.cfg.allowStandby {
		return false, m.fail(op, fmt.Errorf("%w (roll the transaction back: it holds the lock until then)", ErrStandby))
	}
	return granted, nil
}

// stillHeldInTx checks, through tx, that tx's session holds the lock it
// was just granted: a Tx that runs statements outside a transaction block
// released it when the statement ended.
func (m *Mutex) stillHeldInTx(ctx context.Context, tx Tx) error {
	var held bool
	if err := tx.QueryRowContext(ctx, sqltext.HeldInTx(m.t.Key)).Scan(&held); err != nil {
		return errs.Classify(errs.WithCtxErr(ctx, err))
	}
	if !held {
		return fmt.Errorf("%w: %T ran the lock statement outside a transaction block, which released the lock as the statement ended", ErrNotInTransaction, tx)
	}
	return nil
}

// findSQLTx returns v if it is a *sql.Tx, or the one it holds within depth
// levels of exported fields (sqlx.Tx embeds one, bun.Tx and gorm's
// PreparedStmtTX keep one in their field Tx), or nil.
func findSQLTx(v reflect.Value, depth int) *sql.Tx {
	for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
		if v.IsNil() {
			return nil
		}
		if tx, ok := v.Interface().(*sql.Tx); ok {
			return tx
		}
		v = v.Elem()
	}
	if !v.IsValid() || v.Kind() != reflect.Struct || depth == 0 {
		return nil
	}
	for i := range v.NumField() {
		if v.Type().Field(i).IsExported() {
			if tx := findSQLTx(v.Field(i), depth-1); tx != nil {
				return tx
			}
		}
	}
	return nil
}

// notTx names tx's type if it is one of database/sql's that run each
// statement in a transaction of its own.
func notTx(tx Tx) string {
	switch tx.(type) {
	case *sql.DB:
		return "a *sql.DB"
	case *sql.Conn:
		return "a *sql.Conn"
	}
	return ""
}

// isNil reports whether tx is nil, or a nil pointer in an interface.
func isNil(tx Tx) bool {
	if tx == nil {
		return true
	}
	v := reflect.ValueOf(tx)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

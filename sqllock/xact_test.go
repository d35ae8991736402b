package sqllock_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTransactionLocks(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		require.NoError(t, mu.LockTx(t.Context(), tx))
		ok, err := other.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a transaction lock excludes a session lock")
		tx2, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		ok, err = other.TryLockSharedTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.False(t, ok)
		require.NoError(t, tx2.Rollback())

		require.NoError(t, tx.Commit()) // releases
		waitRows(t, db, mu.Key(), 0, 0)

		// Shared transaction locks coexist.
		tx, err = db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		tx2, err = db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		require.NoError(t, mu.LockSharedTx(t.Context(), tx))
		ok, err = other.TryLockSharedTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, tx.Rollback())
		require.NoError(t, tx2.Rollback())
		waitRows(t, db, mu.Key(), 0, 0)
	})
}

// TestTransactionDeadlock: one transaction holding several locks lets the
// server see a lock-order cycle; the victim gets ErrDeadlock.
func TestTransactionDeadlock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		m1, m2 := l.Mutex(t.Name()+"/1"), l.Mutex(t.Name()+"/2")
		tx1, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx1.Rollback()
		tx2, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx2.Rollback()
		require.NoError(t, m1.LockTx(t.Context(), tx1))
		require.NoError(t, m2.LockTx(t.Context(), tx2))
		errs := make(chan error, 2)
		go func() { errs <- m2.LockTx(t.Context(), tx1) }()
		waitRows(t, db, m2.Key(), 1, 1)
		go func() { errs <- m1.LockTx(t.Context(), tx2) }()
		// The server aborts the victim's transaction, releasing its locks at
		// once, so the survivor may be granted before the victim hears.
		a, b := <-errs, <-errs
		victim := a
		if a == nil {
			victim = b
		} else {
			require.NoError(t, b, "exactly one deadlock victim")
		}
		require.ErrorIs(t, victim, sqllock.ErrDeadlock)
		var se interface{ SQLState() string }
		require.ErrorAs(t, victim, &se)
		assert.Equal(t, "40P01", se.SQLState())
		require.NoError(t, tx1.Rollback())
		require.NoError(t, tx2.Rollback())
		waitRows(t, db, m1.Key(), 0, 0)
		waitRows(t, db, m2.Key(), 0, 0)
	})
}

// outsideTx runs each statement in a transaction of its own, as a
// wrapper over a *sql.DB would when mistaken for a transaction.
type outsideTx struct{ db *sql.DB }

func (o outsideTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return o.db.QueryRowContext(ctx, q, args...)
}

// insideTx wraps a *sql.Tx, as ORMs' transaction types do; hiddenTx
// hides it, so that sqllock checks the lock outlived its statement.
type (
	insideTx struct{ *sql.Tx }
	hiddenTx struct{ tx *sql.Tx }
)

func (h hiddenTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return h.tx.QueryRowContext(ctx, q, args...)
}

// The transaction locks take what ORMs hand out over a *sql.Tx, and refuse
// anything whose statement would run outside the transaction, which would
// release the lock as soon as it was taken.
func TestTransactionLocksTakeWrappersRefuseNonTransactions(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu := l.Mutex(t.Name())
		conn, err := db.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		for _, tc := range []struct {
			name string
			tx   sqllock.Tx
		}{{"*sql.DB", db}, {"*sql.Conn", conn}, {"wrapper over a *sql.DB", outsideTx{db}}} {
			err := mu.LockTx(t.Context(), tc.tx)
			require.ErrorIs(t, err, sqllock.ErrNotInTransaction, tc.name)
			assert.Contains(t, err.Error(), t.Name(), "the error names the lock")
			ok, err := mu.TryLockSharedTx(t.Context(), tc.tx)
			require.ErrorIs(t, err, sqllock.ErrNotInTransaction, tc.name)
			assert.False(t, ok)
		}
		var nilTx *sql.Tx
		require.ErrorContains(t, mu.LockTx(t.Context(), nilTx), "nil transaction")
		require.ErrorContains(t, mu.LockTx(t.Context(), nil), "nil transaction")

		for _, wrap := range []func(*sql.Tx) sqllock.Tx{
			func(tx *sql.Tx) sqllock.Tx { return insideTx{tx} },
			func(tx *sql.Tx) sqllock.Tx { return hiddenTx{tx} },
		} {
			tx, err := db.BeginTx(t.Context(), nil)
			require.NoError(t, err)
			require.NoError(t, mu.LockTx(t.Context(), wrap(tx)))
			ok, err := mu.TryLockTx(t.Context(), wrap(tx))
			require.NoError(t, err)
			assert.True(t, ok, "transaction locks are re-entrant within the transaction")
			held, _ := lockRows(t, db, mu.Key())
			assert.Equal(t, 1, held, "the wrapped transaction holds the lock")
			require.NoError(t, tx.Rollback())
			held, waiting := lockRows(t, db, mu.Key())
			assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
		}
	})
}

package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMockStandbyRefused(t *testing.T) {
	l, mock := newMock(t)
	// The verify statement marks nothing in recovery and no lock is
	// tried, so the connection is clean and goes back to the pool.
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, sqltext.FlagStandby))
	require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), sqllock.ErrStandby)

	l, mock = newMock(t, sqllock.WithAllowStandby(true))
	v := sqltext.BuildVerify(false, true).TextWith("TOKEN")
	assert.NotContains(t, v, "pg_is_in_recovery", "allowed standbys keep their locks")
	mock.ExpectQuery(v).WillReturnRows(verified(7, 0)) // the statement does not even ask
	mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WillReturnRows(granted(true))
	mock.ExpectExec(guardedSQL(q42.Unlock, 7)).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
}

func TestMockForeignSessionRefused(t *testing.T) {
	l, mock := newMock(t)
	// The session already carries another client's marker: no lock is
	// tried, and sqllock must refuse and discard.
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, sqltext.FlagForeign))
	mock.ExpectClose()
	err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
	require.ErrorIs(t, err, sqllock.ErrSharedSession)
	assert.Contains(t, err.Error(), "session 7 belongs to another client connection")
}

// A database that is not PostgreSQL: its driver does not understand the
// SQL. The error names the lock and wraps the driver's, and no connection
// stays in use.
func TestFakeNotPostgres(t *testing.T) {
	syntax := errors.New(`near "FROM": syntax error`)
	l, c := newFake(t, func(context.Context, string) ([]driver.Value, error) { return nil, syntax }, sqllock.WithKeepAlive(0, 0))
	mu := l.Mutex("reports")
	err := mu.Lock(t.Context())
	require.ErrorIs(t, err, syntax)
	assert.Contains(t, err.Error(), `lock "reports" `+mu.Key().String())
	assert.Equal(t, 0, sqllock.DBOf(l).Stats().InUse)
	assert.Equal(t, int32(1), c.Closed.Load(), "a connection in an unknown state is discarded")
}

// A server whose advisory-lock functions are stubs (CockroachDB: they
// answer true and lock nothing) is refused at the first lock, in both
// modes, before any lock statement runs: two holders would both "hold" the
// lock. The fake answers the verify statement as CockroachDB does, whose
// version() starts with "CockroachDB".
func TestFakeStubAdvisoryLocksRefused(t *testing.T) {
	for _, opts := range [][]sqllock.Option{nil, {sqllock.WithSessions(1)}} {
		var locks atomic.Int32
		l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
			switch {
			case strings.Contains(q, "version() LIKE 'CockroachDB%' THEN 8"):
				return []driver.Value{int64(7)<<sqltext.AnswerShift | sqltext.FlagStub}, nil
			case strings.Contains(q, "pg_advisory_lock"), strings.Contains(q, "pg_try_advisory_lock"):
				locks.Add(1) // a stub: granted, locking nothing
				return []driver.Value{true}, nil
			}
			return answerAs(q, 7), nil
		}, opts...)
		m := l.MutexKey(keyspace.Int64(42))
		err := m.Lock(t.Context())
		require.ErrorIs(t, err, sqllock.ErrStubLocks)
		require.ErrorContains(t, err, "CockroachDB")
		ok, err := m.TryLock(t.Context())
		require.ErrorIs(t, err, sqllock.ErrStubLocks)
		require.False(t, ok)
		require.Zero(t, locks.Load(), "no lock statement ran")
		require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrNotHeld)
	}
}

// A hot standby grants advisory locks that exclude nobody on the primary:
// sqllock refuses them, with no extra round trip, unless allowed.
func TestStandbyRefused(t *testing.T) {
	t.Parallel()
	primary := pgtest.NewCluster(t)
	standby := pgtest.NewStandby(t, primary)
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db, err := sql.Open(driver, standby.DSN())
			require.NoError(t, err)
			defer db.Close()
			var inRecovery bool
			require.NoError(t, db.QueryRowContext(t.Context(), "SELECT pg_is_in_recovery()").Scan(&inRecovery))
			require.True(t, inRecovery, "the standby is in recovery")

			mu := sqllock.New(db).Mutex(t.Name())
			require.ErrorIs(t, mu.Lock(t.Context()), sqllock.ErrStandby)
			ok, err := mu.TryLockShared(t.Context())
			require.ErrorIs(t, err, sqllock.ErrStandby)
			assert.False(t, ok)
			require.ErrorIs(t, mu.WithLock(t.Context(), func(ctx context.Context) error { return nil }), sqllock.ErrStandby)
			tx, err := db.BeginTx(t.Context(), &sql.TxOptions{ReadOnly: true}) // lib/pq asks for read-write otherwise
			require.NoError(t, err)
			require.ErrorIs(t, mu.LockTx(t.Context(), tx), sqllock.ErrStandby)
			require.NoError(t, tx.Rollback())
			assert.Equal(t, 0, db.Stats().InUse, "refused locks leave nothing pinned")

			allowed := sqllock.New(db, sqllock.WithAllowStandby(true)).Mutex(t.Name())
			require.NoError(t, allowed.Lock(t.Context()))
			require.NoError(t, allowed.Unlock(t.Context()))
		})
	}
}

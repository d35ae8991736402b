package sqllock_test

import (
	"database/sql"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// TestHolderState checks what Holders says of each session's state: an
// idle holder, a holder inside a transaction, and a waiter running its
// lock statement, each with the time it entered that state.
func TestHolderState(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		// No keep-alive probe runs on the holder's session during the test.
		l := sqllock.New(db, sqllock.WithKeepAlive(time.Hour, 5*time.Second))
		holder, inTx, waiter := l.Mutex(t.Name()), l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.LockShared(t.Context()))
		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback() }()
		require.NoError(t, inTx.LockSharedTx(t.Context(), tx))
		got := make(chan error, 1)
		go func() { got <- waiter.Lock(t.Context()) }()
		waitRows(t, db, holder.Key(), 2, 1)

		hs, err := holder.Holders(t.Context())
		require.NoError(t, err)
		require.Len(t, hs, 3)
		var states []string
		for _, h := range hs {
			states = append(states, h.State)
			assert.False(t, h.StateChange.IsZero(), "%+v", h)
			assert.False(t, h.StateChange.Before(h.BackendStart), "state since before the session began: %+v", h)
		}
		assert.ElementsMatch(t, []string{"idle", "idle in transaction"}, states[:2], "holders: %+v", hs[:2])
		assert.Equal(t, "active", hs[2].State, "waiter: %+v", hs[2])
		assert.False(t, hs[2].Granted)

		require.NoError(t, tx.Rollback())
		require.NoError(t, holder.UnlockShared(t.Context()))
		require.NoError(t, <-got)
		require.NoError(t, waiter.Unlock(t.Context()))
	})
}

// Terminate ends the sessions that hold the lock, not the waiters; each
// holder learns of its loss, and the waiter gets the lock. With no holder
// it ends nothing.
func TestTerminateHolders(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, fastLoss)
		holder, waiter, admin := l.Mutex(t.Name()), l.Mutex(t.Name()), sqllock.New(db).Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		pid := backendOf(t, db, holder.Key())
		got := make(chan error, 1)
		go func() { got <- waiter.Lock(t.Context()) }()
		waitRows(t, db, holder.Key(), 1, 1)

		ended, err := admin.Terminate(t.Context())
		require.NoError(t, err)
		require.Len(t, ended, 1)
		assert.Equal(t, pid, ended[0].PID)
		assert.True(t, ended[0].Granted)
		select {
		case <-holder.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the holder never learned of its loss")
		}
		require.ErrorIs(t, holder.Err(), sqllock.ErrLockLost)
		require.NoError(t, <-got, "the waiter gets the lock")
		require.ErrorIs(t, holder.Unlock(t.Context()), sqllock.ErrLockLost)
		require.NoError(t, waiter.Unlock(t.Context()))

		ended, err = admin.Terminate(t.Context())
		require.NoError(t, err)
		assert.Empty(t, ended, "nobody holds it")
		waitRows(t, db, holder.Key(), 0, 0)
	})
}

// A role that may not signal the holder's backend gets an error that says
// what it lacks, and the holder keeps its lock.
func TestTerminateNotPermitted(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	su := faultOpen(t, "pgx", c.DSN())
	_, err := su.ExecContext(t.Context(), "CREATE ROLE noterm LOGIN")
	require.NoError(t, err)
	u, err := url.Parse(c.DSN())
	require.NoError(t, err)
	u.User = url.User("noterm")
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			holder := sqllock.New(su).Mutex(t.Name())
			require.NoError(t, holder.Lock(t.Context()))
			defer func() { require.NoError(t, holder.Unlock(t.Context())) }()
			db := faultOpen(t, driver, u.String())
			_, err := sqllock.New(db).Mutex(t.Name()).Terminate(t.Context())
			t.Logf("Terminate as noterm: %v", err)
			require.ErrorContains(t, err, "pg_signal_backend")
			require.NoError(t, holder.Err(), "the holder keeps its lock")
		})
	}
}

func TestHolders(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, b, c := l.Mutex(t.Name()), l.Mutex(t.Name()), l.Mutex(t.Name())
		hs, err := a.Holders(t.Context())
		require.NoError(t, err)
		assert.Empty(t, hs)

		require.NoError(t, a.LockShared(t.Context()))
		require.NoError(t, b.LockShared(t.Context()))
		got := make(chan error, 1)
		go func() { got <- c.Lock(t.Context()) }()
		waitRows(t, db, a.Key(), 2, 1)

		hs, err = a.Holders(t.Context())
		require.NoError(t, err)
		require.Len(t, hs, 3)
		for i, h := range hs {
			assert.NotZero(t, h.PID)
			assert.False(t, h.BackendStart.IsZero())
			if i < 2 {
				assert.True(t, h.Granted && h.Shared, "holder %d: %+v", i, h)
			} else {
				assert.True(t, !h.Granted && !h.Shared, "waiter: %+v", h)
				assert.False(t, h.WaitStart.IsZero())
			}
		}
		require.NoError(t, a.UnlockShared(t.Context()))
		require.NoError(t, b.UnlockShared(t.Context()))
		require.NoError(t, <-got)
		require.NoError(t, c.Unlock(t.Context()))
	})
}

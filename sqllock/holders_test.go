package sqllock_test

import (
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

package sqllock_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

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

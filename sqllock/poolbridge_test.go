package sqllock_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// Under pgx's pool bridge (stdlib.OpenDBFromPool), closing a database/sql
// connection hands its pgx connection, session and locks back to pgxpool.
// The sequence issue 12 reported: an Unlock with a cancelled context
// returned nil with the lock still held by an idle pgxpool connection, and
// the next lock was refused as a shared session.
func TestPoolBridgeCancelledUnlockReleases(t *testing.T) {
	t.Parallel()
	db := pgtest.DB(t, pgtest.PgxPoolBridge)
	l := sqllock.New(db)
	first := keyspace.SHA256Int64.Key(t.Name() + "/first")
	next := keyspace.SHA256Int64.Key(t.Name() + "/next")

	m := l.MutexKey(first)
	require.NoError(t, m.Lock(t.Context()))
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	require.NoError(t, m.Unlock(cancelled), "an Unlock whose context ended still releases")
	held, waiting := lockRows(t, db, first)
	assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "pg_locks right after Unlock(cancelled) returned")

	n := l.MutexKey(next)
	require.NoError(t, n.Lock(t.Context()), "the next lock, on a session pgxpool kept")
	require.NoError(t, n.Unlock(t.Context()))
	held, waiting = lockRows(t, db, next)
	assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
}

// Whenever database/sql closes its wrapper of a pgx connection
// (SetMaxIdleConns(0), ConnMaxLifetime, ConnMaxIdleTime), pgxpool keeps
// the session behind it, and the next wrapper leads to a session sqllock
// has seen before. That session is the same owner, not another client's:
// every cycle locks.
func TestPoolBridgeWrappersComeAndGo(t *testing.T) {
	t.Parallel()
	db := pgtest.DB(t, pgtest.PgxPoolBridge)
	db.SetMaxIdleConns(0)
	l := sqllock.New(db)
	k := keyspace.SHA256Int64.Key(t.Name())
	for cycle := range 8 {
		m := l.MutexKey(k)
		require.NoError(t, m.Lock(t.Context()), "cycle %d", cycle)
		held, _ := lockRows(t, db, k)
		require.Equal(t, 1, held, "cycle %d", cycle)
		require.NoError(t, m.Unlock(t.Context()), "cycle %d", cycle)
		held, waiting := lockRows(t, db, k)
		require.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "cycle %d: pg_locks right after Unlock", cycle)
	}
}

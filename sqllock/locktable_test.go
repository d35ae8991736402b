package sqllock_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// fillLockTable takes advisory locks on conn until the server's lock table
// is full, and returns how many it took.
func fillLockTable(t *testing.T, conn *sql.Conn) int {
	t.Helper()
	n := 0
	for ; n < 1_000_000; n += 100 {
		_, err := conn.ExecContext(t.Context(), "SELECT pg_advisory_lock(k) FROM generate_series($1::int8, $1::int8 + 99) k", int64(900_000_000+n))
		if err != nil {
			require.ErrorContains(t, err, "53200", "the lock table is full")
			return n
		}
	}
	t.Fatal("the lock table never filled")
	return n
}

// fullLockTable opens driver on c, takes a lock with a Locker made with
// opts, and fills the server's lock table from another connection. An
// idle connection stays in the pool for the attempts that follow: with the
// table full, a new backend cannot even start (it needs an entry too).
func fullLockTable(t *testing.T, c *pgtest.Cluster, driver string, opts ...sqllock.Option) (*sql.DB, *sqllock.Locker, *sqllock.Mutex, *sql.Conn) {
	t.Helper()
	db, err := sql.Open(driver, c.DSN())
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	l := sqllock.New(db, opts...)
	held := l.Mutex(t.Name() + "/held")
	require.NoError(t, held.Lock(t.Context()))
	filler, err := db.Conn(t.Context())
	require.NoError(t, err)
	spare, err := db.Conn(t.Context())
	require.NoError(t, err)
	require.NoError(t, spare.Close())
	n := fillLockTable(t, filler)
	t.Logf("the lock table took %d advisory locks", n)
	return db, l, held, filler
}

// emptyLockTable releases the filler's locks, then checks that m, refused
// while the table was full, now locks, and that once m and held are
// released nothing is left in pg_locks.
func emptyLockTable(t *testing.T, db *sql.DB, filler *sql.Conn, m, held *sqllock.Mutex) {
	t.Helper()
	_, err := filler.ExecContext(t.Context(), "SELECT pg_advisory_unlock_all()")
	require.NoError(t, err)
	require.NoError(t, filler.Close())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, m.Lock(ctx), "room again")
	require.NoError(t, m.Unlock(t.Context()))
	require.NoError(t, held.Unlock(t.Context()))
	var left int
	require.NoError(t, db.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&left))
	assert.Zero(t, left, "nothing leaked")
}

// A full lock table (SQLSTATE 53200) fails the lock with an error that
// names the setting to raise; locks already held keep going, the session
// that could not take one goes back to the pool, and nothing leaks.
func TestLockTableFull(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "max_locks_per_transaction=10", "max_connections=20")
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db, l, held, filler := fullLockTable(t, c, driver, sqllock.WithKeepAlive(0, 0))

			m := l.MutexKey(keyspace.Int64(777))
			err := m.Lock(t.Context())
			t.Logf("Lock on a full table: %v", err)
			require.ErrorIs(t, err, sqllock.ErrLockTableFull)
			assert.Contains(t, err.Error(), "max_locks_per_transaction")
			ok, err := m.TryLock(t.Context())
			require.ErrorIs(t, err, sqllock.ErrLockTableFull)
			assert.False(t, ok)
			assert.NoError(t, held.Err(), "the lock already held is unaffected")
			assert.Equal(t, 2, db.Stats().InUse, "the failed attempts' connections went back to the pool")
			assert.Equal(t, 1, db.Stats().Idle, "and stayed open: a full table is no reason to end a session")

			emptyLockTable(t, db, filler, m, held)
		})
	}
}

// With WithSessions, a full lock table fails the lock on the shared
// session without ending it: the locks it carries keep going.
func TestLockTableFullMultiplexedSession(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "max_locks_per_transaction=10", "max_connections=20")
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db, l, held, filler := fullLockTable(t, c, driver, sqllock.WithSessions(1), sqllock.WithKeepAlive(0, 0))

			m := l.MutexKey(keyspace.Int64(778))
			err := m.Lock(t.Context())
			require.ErrorIs(t, err, sqllock.ErrLockTableFull)
			assert.NoError(t, held.Err(), "the lock the shared session carries is unaffected")

			emptyLockTable(t, db, filler, m, held)
		})
	}
}

// A fenced lock whose advisory lock the server grants but whose token it
// cannot give (the transaction id needs a lock-table entry of its own, and
// the table has room for one lock only) fails with ErrLockTableFull and
// leaves nothing held: the grant, which outlives the statement's error, is
// undone on the same session.
func TestLockTableFullFenced(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "max_locks_per_transaction=10", "max_connections=20")
	key := int64(780)
	for _, driver := range []string{"postgres", "pgx"} {
		for _, mode := range []string{"conn", "sessions"} {
			for _, call := range []string{"Lock", "TryLock"} {
				key++
				t.Run(driver+"/"+mode+"/"+call, func(t *testing.T) {
					opts := []sqllock.Option{sqllock.WithFencing(), sqllock.WithKeepAlive(0, 0)}
					if mode == "sessions" {
						opts = append(opts, sqllock.WithSessions(1))
					}
					db, l, held, filler := fullLockTable(t, c, driver, opts...)
					// Room for exactly one more lock: the advisory lock's.
					var freed bool
					require.NoError(t, filler.QueryRowContext(t.Context(), "SELECT pg_advisory_unlock(900000000::int8)").Scan(&freed))
					require.True(t, freed)

					m := l.MutexKey(keyspace.Int64(key))
					var err error
					if call == "Lock" {
						err = m.Lock(t.Context())
					} else {
						var ok bool
						ok, err = m.TryLock(t.Context())
						assert.False(t, ok)
					}
					t.Logf("%s: %v", call, err)
					require.ErrorIs(t, err, sqllock.ErrLockTableFull)
					_, ok := m.Token()
					assert.False(t, ok)
					var left int
					require.NoError(t, filler.QueryRowContext(t.Context(),
						"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = $1 AND objsubid = 1", key).Scan(&left))
					assert.Zero(t, left, "the refused lock is not held once the call returns")
					assert.NoError(t, held.Err(), "the lock already held is unaffected")

					emptyLockTable(t, db, filler, m, held)
				})
			}
		}
	}
}

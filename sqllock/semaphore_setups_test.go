package sqllock_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// semaphoreRound fills a 2-slot semaphore from two Semaphores (as two
// processes), checks that a third caller is refused and then waits until
// a slot is released, and that each grant holds one slot; direct reads
// pg_locks.
func semaphoreRound(t *testing.T, db, direct *sql.DB, opts ...sqllock.Option) {
	t.Helper()
	name := t.Name()
	ctx := t.Context()
	a, b := sqllock.New(db, opts...).Semaphore(name, 2), sqllock.New(db, opts...).Semaphore(name, 2)
	require.NoError(t, a.Acquire(ctx))
	require.NoError(t, b.Acquire(ctx))
	slots, _ := slotKeys(name, 2)
	for _, k := range slots {
		waitRows(t, direct, k, 1, 0)
	}
	ok, err := b.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	require.ErrorIs(t, b.Acquire(short), context.DeadlineExceeded)
	cancel()
	got := make(chan error, 1)
	go func() { got <- b.Acquire(ctx) }()
	require.NoError(t, a.Release(ctx))
	require.NoError(t, <-got)
	require.NoError(t, b.Release(ctx))
	require.NoError(t, b.Release(ctx))
	requireNoSlots(t, direct, name, 2)
}

// On shared sessions (WithSessions) a semaphore works as on connections of
// its own, and a session that ends reports the loss of every slot it
// carried.
func TestSemaphoreSessions(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		semaphoreRound(t, db, db, sqllock.WithSessions(2))

		name := t.Name() + "/loss"
		sem := sqllock.New(db, sqllock.WithSessions(1), fastLoss).Semaphore(name, 3)
		ctx := t.Context()
		for range 3 {
			require.NoError(t, sem.Acquire(ctx))
		}
		slots, _ := slotKeys(name, 3)
		pid := backendOf(t, db, slots[0])
		for _, k := range slots {
			assert.Equal(t, pid, backendOf(t, db, k), "one session carries every slot")
		}
		terminate(t, db, pid)
		for range 3 {
			require.ErrorIs(t, sem.Release(ctx), sqllock.ErrLockLost)
		}
		requireNoSlots(t, db, name, 3)
	})
}

// Behind PgBouncer in transaction mode each slot is held in a transaction
// of its own, as a Mutex's lock is; a storm of acquisitions under short
// deadlines leaves nothing held and no transaction open.
func TestPgBouncerSemaphore(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 8, func(t *testing.T, db *sql.DB) {
		direct := pgtest.DB(t, "pgx")
		semaphoreRound(t, db, direct)

		name := t.Name() + "/storm"
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem := sqllock.New(db).Semaphore(name, 2)
				for i := range 10 {
					ctx, cancel := context.WithTimeout(t.Context(), time.Duration(w*7+i*3)*time.Millisecond)
					err := sem.WithSlot(ctx, func(context.Context) error { time.Sleep(2 * time.Millisecond); return nil })
					cancel()
					if err != nil && ctx.Err() == nil {
						t.Errorf("WithSlot: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		requireNoSlots(t, direct, name, 2)
		noOpenTransactions(t, direct)
	})
}

// Behind PgBouncer 1.18 (which exits on a cancel request that races the
// end of its query) a waiter whose other slot frees first ends its wait
// for the first slot again and again, and the pooler stays up: sqllock
// ends such waits on the server.
func TestPgBouncerSemaphoreWaitsEnded(t *testing.T) {
	t.Parallel()
	eachBouncerDriver(t, "transaction", 12, func(t *testing.T, db *sql.DB) {
		direct := pgtest.DB(t, "pgx")
		name := t.Name()
		ctx := t.Context()
		holder := sqllock.New(db).Semaphore(name, 3)
		for range 3 {
			require.NoError(t, holder.Acquire(ctx))
		}
		waiter := sqllock.New(db).Semaphore(name, 3)
		slots, _ := slotKeys(name, 3)
		for range 6 {
			got := make(chan error, 1)
			go func() { got <- waiter.Acquire(ctx) }()
			// The waiter waits in the server for one slot; free another.
			waitingOn := -1
			for waitingOn < 0 {
				for i, k := range slots {
					if _, w := lockRows(t, direct, k); w == 1 {
						waitingOn = i
					}
				}
			}
			// Release until a slot other than the waited one is free: the
			// oldest first, which may be the waited one (then the waiter
			// just gets it).
			require.NoError(t, holder.Release(ctx))
			require.NoError(t, <-got)
			require.NoError(t, waiter.Release(ctx))
			require.NoError(t, holder.Acquire(ctx))
		}
		for range 3 {
			require.NoError(t, holder.Release(ctx))
		}
		requireNoSlots(t, direct, name, 3)
		noOpenTransactions(t, direct)
	})
}

// noOpenTransactions is assertNoOpenTransactions for a test whose server
// sessions may all be gone by now: ended waits end theirs.
func noOpenTransactions(t *testing.T, direct *sql.DB) {
	t.Helper()
	var inTx, locks int
	require.NoError(t, direct.QueryRowContext(t.Context(), `SELECT count(*) FILTER (WHERE a.state LIKE 'idle in transaction%'),
		count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))
		FROM pg_stat_activity a WHERE a.application_name = $1`, appName(t)).Scan(&inTx, &locks))
	assert.Zero(t, inTx, "server sessions left in a transaction")
	assert.Zero(t, locks, "server sessions left carrying advisory locks")
}

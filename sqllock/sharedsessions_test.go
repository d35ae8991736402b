package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// sessionsOf returns the distinct backends holding advisory locks on keys.
func sessionsOf(t *testing.T, db *sql.DB, keys []keyspace.Key) map[int64]int {
	t.Helper()
	pids := map[int64]int{}
	for _, k := range keys {
		c, o, s := k.LockTag()
		rows, err := db.QueryContext(t.Context(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND classid = $1 AND objid = $2 AND objsubid = $3`, int64(c), int64(o), int64(s))
		require.NoError(t, err)
		for rows.Next() {
			var pid int64
			require.NoError(t, rows.Scan(&pid))
			pids[pid]++
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	return pids
}

// Held locks share at most n sessions, and leave nothing behind.
func TestSessionsShareConnections(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		const n, locks = 2, 24
		l := sqllock.New(db, sqllock.WithSessions(n))
		ms := make([]*sqllock.Mutex, locks)
		keys := make([]keyspace.Key, locks)
		var wg sync.WaitGroup
		for i := range ms {
			ms[i] = l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i)) // keys of its own: the drivers' subtests run at once
			keys[i] = ms[i].Key()
			wg.Go(func() { assert.NoError(t, ms[i].Lock(t.Context())) })
		}
		wg.Wait()
		pids := sessionsOf(t, db, keys)
		total := 0
		for _, c := range pids {
			total += c
		}
		assert.Equal(t, locks, total, "every lock held once")
		assert.LessOrEqual(t, len(pids), n, "on at most %d sessions: %v", n, pids)
		assert.LessOrEqual(t, db.Stats().InUse, n)
		for _, m := range ms {
			require.NoError(t, m.Err())
			require.NoError(t, m.Unlock(t.Context()))
		}
		assert.Empty(t, sessionsOf(t, db, keys), "nothing left in pg_locks")
		assert.Zero(t, db.Stats().InUse, "the sessions went back to the pool")
	})
}

// Holders in one process exclude each other exactly as two processes do,
// across modes, tries, waits and cancellations at random points.
func TestSessionsInProcessExclusion(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithSessions(2))
		k := keyspace.SHA256Int64.Key(t.Name())
		var excl, shared atomic.Int32
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 2))
				for range 25 {
					m := l.MutexKey(k)
					sh := r.IntN(2) == 0
					ctx, cancel := context.WithTimeout(t.Context(), time.Duration(r.IntN(3000))*time.Microsecond)
					try := r.IntN(3) == 0
					var err error
					switch {
					case try && sh:
						var ok bool
						if ok, err = m.TryLockShared(ctx); err == nil && !ok {
							err = errNotTaken
						}
					case try:
						var ok bool
						if ok, err = m.TryLock(ctx); err == nil && !ok {
							err = errNotTaken
						}
					case sh:
						err = m.LockShared(ctx)
					default:
						err = m.Lock(ctx)
					}
					cancel()
					if err != nil {
						if !errors.Is(err, errNotTaken) && !errors.Is(err, context.DeadlineExceeded) {
							t.Errorf("lock: %v", err)
						}
						continue
					}
					if sh {
						shared.Add(1)
						if excl.Load() != 0 {
							t.Error("a shared holder alongside an exclusive one")
						}
					} else if excl.Add(1) != 1 || shared.Load() != 0 {
						t.Error("an exclusive holder alongside another holder")
					}
					time.Sleep(time.Duration(r.IntN(500)) * time.Microsecond)
					if sh {
						shared.Add(-1)
						assert.NoError(t, m.UnlockShared(context.Background()))
					} else {
						excl.Add(-1)
						assert.NoError(t, m.Unlock(context.Background()))
					}
				}
			})
		}
		wg.Wait()
		held, waiting := lockRows(t, db, k)
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "pg_locks clean")
		// A new session's dial that its caller gave up on (lib/pq) gives
		// its connection back once the dial ends.
		faultNoConnsInUse(t, db)
	})
}

var errNotTaken = errors.New("not taken")

// A terminated shared session reports the loss to every lock it carries,
// and to no other.
func TestSessionsLossReachesEveryLockOnTheSession(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithSessions(2), fastLoss)
		ms := make([]*sqllock.Mutex, 8)
		keys := make([]keyspace.Key, len(ms))
		for i := range ms {
			ms[i] = l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			keys[i] = ms[i].Key()
			require.NoError(t, ms[i].Lock(t.Context()))
		}
		pids := sessionsOf(t, db, keys)
		require.Len(t, pids, 2, "two sessions carry the locks")
		owner := make([]int64, len(keys))
		for i, k := range keys {
			owner[i] = backendOf(t, db, k)
		}
		victim := owner[0]
		terminate(t, db, victim)
		var lost, kept int
		for i, m := range ms {
			if owner[i] == victim {
				select {
				case <-m.Done():
				case <-time.After(10 * time.Second):
					t.Fatalf("lock %d on the terminated session: Done still open", i)
				}
				require.ErrorIs(t, m.Err(), sqllock.ErrLockLost)
				require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost)
				lost++
				continue
			}
			require.NoError(t, m.Err(), "lock %d on the other session is unaffected", i)
			require.NoError(t, m.Unlock(t.Context()))
			kept++
		}
		assert.Equal(t, pids[victim], lost)
		assert.Positive(t, kept)
		assert.Empty(t, sessionsOf(t, db, keys))
	})
}

// A lock another process holds is waited for in the server, on a
// connection of its own, and granted when the holder lets go.
func TestSessionsWaitInTheServer(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		other := sqllock.New(db).Mutex(t.Name()) // another "process": the default mode
		require.NoError(t, other.Lock(t.Context()))
		m := sqllock.New(db, sqllock.WithSessions(2)).Mutex(t.Name())
		got := make(chan error, 1)
		go func() { got <- m.Lock(t.Context()) }()
		waitRows(t, db, m.Key(), 1, 1)
		require.NoError(t, other.Unlock(t.Context()))
		require.NoError(t, <-got)
		require.NoError(t, m.Unlock(t.Context()))
		held, waiting := lockRows(t, db, m.Key())
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
	})
}

func TestWithSessionsRejectsNonPositive(t *testing.T) {
	for _, n := range []int{0, -1} {
		err := sqllock.New(nil, sqllock.WithSessions(n)).Err()
		require.ErrorContains(t, err, fmt.Sprintf("WithSessions(%d)", n))
	}
}

// Observers see each hold on a shared session: its acquisition, its
// release, and its loss with the session.
func TestSessionsObserved(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var mu sync.Mutex
		events := map[sqllock.EventKind]int{}
		obs := sqllock.ObserverFunc(func(e sqllock.Event) {
			mu.Lock()
			events[e.Kind]++
			mu.Unlock()
		})
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithObserver(obs), fastLoss)
		a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
		require.NoError(t, a.Lock(t.Context()))
		require.NoError(t, b.Lock(t.Context()))
		require.NoError(t, b.Unlock(t.Context()))
		require.NoError(t, b.Lock(t.Context()))
		terminate(t, db, backendOf(t, db, a.Key()))
		for _, m := range []*sqllock.Mutex{a, b} {
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the loss went unnoticed")
			}
			require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost)
		}
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, 3, events[sqllock.EventAcquired])
		assert.Equal(t, 1, events[sqllock.EventReleased])
		assert.Equal(t, 2, events[sqllock.EventLost], "each lock on the session is reported lost once")
	})
}

// A lock lost with its shared session no longer keeps this process's
// other holders out: the key is free on the server, so a new Lock gets it
// at once, before anyone calls Unlock for the lost one.
func TestSessionsLostLockTakenAgain(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithSessions(1), fastLoss)
		m := l.Mutex(t.Name())
		require.NoError(t, m.Lock(t.Context()))
		lost := m.Done()
		terminate(t, db, backendOf(t, db, m.Key()))
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Fatal("the loss went unnoticed")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		require.NoError(t, m.Lock(ctx), "the lost lock keeps no in-process entry")
		require.NoError(t, m.Err(), "Done and Err describe the lock held now")
		require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost, "Unlock releases the oldest: the lost one")
		require.NoError(t, m.Unlock(t.Context()))
		waitRows(t, db, m.Key(), 0, 0)
	})
}

// In-process shared holders on one shared session do not overtake another
// process's exclusive waiter that the server has queued: a new shared
// holder is refused (TryLockShared) or waits behind it (LockShared), as a
// shared holder in another process would.
func TestSessionsSharedHoldersQueueBehindWaiter(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		for _, kind := range []string{"int64", "pair"} {
			t.Run(kind, func(t *testing.T) {
				l := sqllock.New(db, sqllock.WithSessions(1))
				k := keyspace.SHA256Int64.Key(t.Name())
				lockSQL, args := "SELECT pg_advisory_lock($1)", []any{}
				if kind == "pair" {
					k = keyspace.Default.Key(t.Name())
					a, b, _ := k.Pair()
					lockSQL, args = "SELECT pg_advisory_lock($1, $2)", []any{a, b}
				} else {
					n, _ := k.Int64()
					args = []any{n}
				}
				a, b := l.MutexKey(k), l.MutexKey(k)
				require.NoError(t, a.LockShared(t.Context()))

				other, err := db.Conn(t.Context())
				require.NoError(t, err)
				defer other.Close()
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				waited := make(chan error, 1)
				go func() {
					_, err := other.ExecContext(ctx, lockSQL, args...)
					waited <- err
				}()
				waitRows(t, db, k, 1, 1)

				ok, err := b.TryLockShared(t.Context())
				require.NoError(t, err)
				require.False(t, ok, "a new shared holder does not jump the queued exclusive waiter")

				got := make(chan error, 1)
				go func() { got <- b.LockShared(ctx) }()
				waitRows(t, db, k, 1, 2)
				require.NoError(t, a.UnlockShared(t.Context()))
				require.NoError(t, <-waited, "the exclusive waiter goes first")
				select {
				case err := <-got:
					t.Fatalf("the shared holder got the lock beside the exclusive holder: %v", err)
				default:
				}
				_, err = other.ExecContext(t.Context(), "SELECT pg_advisory_unlock_all()")
				require.NoError(t, err)
				require.NoError(t, <-got)
				require.NoError(t, b.UnlockShared(t.Context()))
				waitRows(t, db, k, 0, 0)
			})
		}
	})
}

// A shared session lost with many locks on it logs one warning, with their
// count and the cause, not one per lock; each lock still reports its own
// loss (Err, observers, which see how many went with the session).
func TestSessionsLossLoggedOnce(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		const n = 40
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		var lost atomic.Int32
		var batch atomic.Int32
		obs := sqllock.ObserverFunc(func(e sqllock.Event) {
			if e.Kind == sqllock.EventLost {
				lost.Add(1)
				batch.Store(int32(e.SessionLocks))
			}
		})
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithLogger(logger), sqllock.WithObserver(obs), fastLoss)
		ms := make([]*sqllock.Mutex, n)
		for i := range ms {
			ms[i] = l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			require.NoError(t, ms[i].Lock(t.Context()))
		}
		terminate(t, db, backendOf(t, db, ms[0].Key()))
		for _, m := range ms {
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the loss went unnoticed")
			}
			require.ErrorIs(t, m.Err(), sqllock.ErrLockLost)
		}
		out := buf.String()
		assert.Equal(t, 1, strings.Count(out, "level=WARN"), "one warning for the session: %s", out)
		assert.Contains(t, out, fmt.Sprintf("locks=%d", n))
		assert.Contains(t, out, "shared session lost")
		assert.Equal(t, int32(n), lost.Load(), "each lock's loss reaches the observers")
		assert.Equal(t, int32(n), batch.Load())
		for _, m := range ms {
			require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost)
		}
	})
}

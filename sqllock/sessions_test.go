package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
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

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
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
		noConnsInUse(t, db)
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

// A session of WithSessions lost with many locks on it logs one warning, with their
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
		assert.Contains(t, out, "session lost, and every lock it carried")
		assert.Equal(t, int32(n), lost.Load(), "each lock's loss reaches the observers")
		assert.Equal(t, int32(n), batch.Load())
		for _, m := range ms {
			require.ErrorIs(t, m.Unlock(t.Context()), sqllock.ErrLockLost)
		}
	})
}

// A lock statement on a shared session (WithSessions) that the driver
// never returns from is bounded: the call fails, every lock the session
// carries is reported lost, and neither waits for the stuck driver call,
// whose goroutine ends the session once the driver returns.
func TestFakeMultiplexedSessionStuckStatement(t *testing.T) {
	unblock := make(chan struct{})
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if strings.Contains(q, "(43)") {
			<-unblock // ignores ctx
		}
		return answerAs(q, 7), nil
	}, sqllock.WithSessions(1), sqllock.WithKeepAlive(0, 50*time.Millisecond))
	held := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, held.Lock(t.Context()))
	start := time.Now()
	err := l.MutexKey(keyspace.Int64(43)).Lock(t.Context())
	require.Error(t, err)
	assert.Less(t, time.Since(start), session.AbandonGrace+settle.Bound+2*time.Second)
	select {
	case <-held.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the lock on the stuck session was not reported lost")
	}
	require.ErrorIs(t, held.Err(), sqllock.ErrLockLost)
	require.ErrorIs(t, held.Unlock(t.Context()), sqllock.ErrLockLost)
	close(unblock)
	require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond,
		"once the driver returns, the connection is discarded")
}

// Where the driver can be interrupted (pgx, lib/pq), a statement on a
// shared session runs in the caller's goroutine, and the session's
// watchdog interrupts it past the keep-alive timeout (here by closing the
// connection, as for lib/pq): the call fails within its bound, every lock
// the session carries is reported lost, and nothing waits for the driver.
// A statement that gets its answer as it is interrupted fails all the
// same: its connection is closed.
func TestFakeMultiplexedSessionWatchdog(t *testing.T) {
	for _, answered := range []bool{false, true} {
		t.Run(fmt.Sprintf("answered=%v", answered), func(t *testing.T) {
			l, _, run := newCloseInterruptedFake(t, func(q string) bool { return strings.Contains(q, "(43)") }, answered,
				sqllock.WithSessions(1), sqllock.WithKeepAlive(0, 50*time.Millisecond))
			held := l.MutexKey(keyspace.Int64(42))
			require.NoError(t, held.Lock(t.Context()))
			start := time.Now()
			err := run("the watchdog", func() error { return l.MutexKey(keyspace.Int64(43)).Lock(t.Context()) })
			require.ErrorIs(t, err, sqllock.ErrNoAnswer)
			require.ErrorContains(t, err, "(50ms, the keep-alive timeout): the statement was interrupted")
			assert.Less(t, time.Since(start), 50*time.Millisecond+settle.Bound+2*time.Second)
			select {
			case <-held.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the lock on the interrupted session was not reported lost")
			}
			require.ErrorIs(t, held.Err(), sqllock.ErrLockLost)
			require.ErrorIs(t, held.Unlock(t.Context()), sqllock.ErrLockLost)
			assert.Zero(t, sqllock.DBOf(l).Stats().InUse, "the connection is not in use")
		})
	}
}

// The watchdog's entries do not add probes: with an interval longer than
// the timeout, statements on a shared session pull its scheduler entry
// forward, and the entry that fires early waits for the probe's time
// instead of probing.
func TestFakeMultiplexedSessionWatchAddsNoProbes(t *testing.T) {
	var probes atomic.Int32
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			probes.Add(1)
		}
		return answerAs(q, 7), nil
	}, sqllock.WithSessions(1), sqllock.WithKeepAlive(time.Minute, 250*time.Millisecond))
	sqllock.SetInterrupt(l, drv.InterruptClose) // as for lib/pq
	held := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, held.Lock(t.Context()))
	mu := l.MutexKey(keyspace.Int64(43))
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
		require.NoError(t, mu.Lock(t.Context()))
		require.NoError(t, mu.Unlock(t.Context()))
	}
	assert.Zero(t, probes.Load(), "no probe is due within the minute's interval")
	require.NoError(t, held.Unlock(t.Context()))
}

// TestFaultSilentNetworkMultiplexedSession cuts the network under a shared
// session (WithSessions) that carries two locks, a and b, then runs a call
// that needs the session: an Unlock of a, or a Lock of a third key, each
// with a context that never ends. The library bounds statements on a
// shared session, so the call returns within the keep-alive timeout plus
// the time to try to end the session (it cannot, through the silent
// network: ErrNotReleased says so), b is reported lost, and the server
// frees both locks when it ends the silent session (idle_session_timeout).
// FirstLock is the Lock on a session that carries nothing yet: the first
// lock after the Locker was idle, on a pooled connection whose backend is
// known. That backend may have granted the lock, so it is ended too, or
// the call says it could not be.
func TestFaultSilentNetworkMultiplexedSession(t *testing.T) {
	const (
		interval, timeout = time.Minute, 500 * time.Millisecond // the keep-alive stays out of the way
		slack             = time.Second                         // scheduling on a busy machine, -race
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		direct := s.open(t, pgtest.DSN(t))
		for _, call := range []string{"Unlock", "Lock", "FirstLock"} {
			t.Run(call, func(t *testing.T) {
				t.Parallel()
				p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
				db := s.open(t, proxied)
				l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
				a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
				require.NoError(t, a.Lock(t.Context()))
				if call == "FirstLock" {
					require.NoError(t, a.Unlock(t.Context()))
					require.Zero(t, inUse(db), "the session went back to the pool")
					p.Blackhole()
					start := time.Now()
					r := faultWithin(t, faultGo(func() error { return b.Lock(context.Background()) }), 2*timeout+slack, "Lock")
					faultFigure(t, "bounded", s.name, "silent-network-shared-firstlock", r.at.Sub(start))
					t.Logf("Lock returned: %v", r.err)
					require.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the backend that may hold the lock could not be ended")
					waitRows(t, direct, b.Key(), 0, 0)
					require.NoError(t, p.Close())
					noConnsInUse(t, db)
					return
				}
				require.NoError(t, b.Lock(t.Context()))
				require.Equal(t, backendOf(t, direct, a.Key()), backendOf(t, direct, b.Key()), "one session carries both")
				lost := faultStamp(t, b.Done())
				f := func() error { return a.Unlock(context.Background()) }
				if call == "Lock" {
					c := l.Mutex(t.Name() + "/c")
					f = func() error { return c.Lock(context.Background()) }
				}

				p.Blackhole()
				start := time.Now()
				ch := faultGo(f)
				var r faultResult
				select {
				case r = <-ch:
				case <-time.After(2*timeout + slack):
					p.Close() // unsticks the driver
					t.Fatalf("%s on a silent shared session did not return within %v", call, 2*timeout+slack)
				}
				faultFigure(t, "bounded", s.name, "silent-network-shared-"+strings.ToLower(call), r.at.Sub(start))
				t.Logf("%s returned: %v", call, r.err)
				require.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
				at := faultWithin(t, lost, 2*timeout+slack, "b's Done")
				faultFigure(t, "detected", s.name, "silent-network-shared", at.Sub(start))
				require.ErrorIs(t, b.Err(), sqllock.ErrLockLost)
				require.ErrorIs(t, b.Unlock(t.Context()), sqllock.ErrLockLost)

				// The server ends the silent session, and both locks with it.
				waitRows(t, direct, a.Key(), 0, 0)
				waitRows(t, direct, b.Key(), 0, 0)
				faultFigure(t, "freed", s.name, "silent-network-shared", time.Since(start))
				require.NoError(t, p.Close())
				noConnsInUse(t, db)
			})
		}
	})
}

// TestFaultDeadPooledMultiplexedSession: with WithSessions, a pooled connection
// whose session the server ended while it sat idle (a restart, or
// idle_session_timeout) is retried on another, as in the default mode,
// instead of failing the Lock that gets it.
func TestFaultDeadPooledMultiplexedSession(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	for _, fault := range []string{"restart", "idle_session_timeout"} {
		t.Run(fault, func(t *testing.T) {
			for _, s := range faultSetups {
				t.Run(s.name, func(t *testing.T) {
					dsn := c.DSN()
					if fault == "idle_session_timeout" {
						dsn, _ = faultDSN(t, dsn, "", "idle_session_timeout=300")
					}
					db := s.open(t, dsn)
					admin := faultOpen(t, "pgx", c.DSN())
					l := sqllock.New(db, sqllock.WithSessions(2), fastLoss)
					for round := range 3 {
						m := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), round))
						require.NoError(t, m.Lock(t.Context()))
						pid := backendOf(t, admin, m.Key())
						require.NoError(t, m.Unlock(t.Context()))
						require.Zero(t, inUse(db), "the session went back to the pool")
						if fault == "restart" {
							c.Restart(t)
						}
						// The pooled session is gone from the server.
						waitGone(t, admin, pid)
						ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
						err := m.Lock(ctx)
						cancel()
						require.NoError(t, err, "round %d: a dead pooled session is retried", round)
						require.NoError(t, m.Unlock(t.Context()))
						waitRows(t, admin, m.Key(), 0, 0)
					}
				})
			}
		})
	}
}

// TestFaultBusyMultiplexedSessionHonoursContext: while a statement on a shared
// session gets no answer (a silent network; equally a stopped backend),
// other callers that queue for the session return when their own context
// ends, not when the stuck statement's bound passes.
func TestFaultBusyMultiplexedSessionHonoursContext(t *testing.T) {
	const (
		interval, timeout = 200 * time.Millisecond, 3 * time.Second
		wait, slack       = 300 * time.Millisecond, 700 * time.Millisecond
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
		direct := s.open(t, pgtest.DSN(t))
		db := s.open(t, proxied)
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
		a := l.Mutex(t.Name() + "/a")
		require.NoError(t, a.Lock(t.Context()))
		p.Blackhole()
		stuck := faultGo(func() error { return l.Mutex(t.Name() + "/stuck").Lock(context.Background()) })
		for !sqllock.StatementRunning(l) {
			time.Sleep(time.Millisecond)
		}
		var chs []<-chan faultResult
		start := time.Now()
		for i := range 4 {
			m := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			chs = append(chs, faultGo(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				defer cancel()
				return m.Lock(ctx)
			}))
		}
		for i, ch := range chs {
			r := faultWithin(t, ch, timeout+slack, "a queued Lock")
			faultFigure(t, "bounded", s.name, "busy-shared-session", r.at.Sub(start))
			require.ErrorIs(t, r.err, context.DeadlineExceeded, "Lock %d", i)
			assert.LessOrEqual(t, r.at.Sub(start), wait+slack, "Lock %d returns when its context ends", i)
		}
		r := faultWithin(t, stuck, 2*timeout+slack, "the stuck Lock")
		t.Logf("the stuck Lock: %v", r.err)
		notBlamingContext(t, r.err)
		require.NoError(t, p.Close())
		faultWithin(t, faultStamp(t, a.Done()), 2*timeout+slack, "a's Done")
		t.Logf("a's loss: %v", a.Err())
		notBlamingContext(t, a.Err())
		require.ErrorIs(t, a.Unlock(t.Context()), sqllock.ErrLockLost)
		waitRows(t, direct, a.Key(), 0, 0)
		noConnsInUse(t, db)
	})
}

// TestFaultSlowServerOpensMultiplexedSession: a server slow to accept a new
// shared session's connection is waited for as long as the caller's
// context allows, not cut off by the keep-alive timeout with an error
// that blames a context the caller never ended.
func TestFaultSlowServerOpensMultiplexedSession(t *testing.T) {
	const interval, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		p, proxied := faultProxy(t, pgtest.DSN(t))
		direct := s.open(t, pgtest.DSN(t))
		db := s.open(t, proxied)
		require.NoError(t, db.PingContext(t.Context()))
		db.SetMaxIdleConns(0) // the session's connection is a new one
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
		m := l.Mutex(t.Name())

		p.Blackhole()
		resume := time.AfterFunc(4*timeout, p.Resume)
		defer resume.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		require.NoError(t, m.Lock(ctx), "a slow server is not a lost one")
		require.NoError(t, m.Unlock(t.Context()))
		waitRows(t, direct, m.Key(), 0, 0)

		// A caller whose own context ends while the server stays silent
		// is told so.
		p.Blackhole()
		ctx, cancel = context.WithTimeout(t.Context(), 2*timeout)
		defer cancel()
		m2 := l.Mutex(t.Name() + "/2")
		err := m2.Lock(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NoError(t, p.Close())
		noConnsInUse(t, db)
		waitRows(t, direct, m2.Key(), 0, 0)
	})
}

// Locker.Keyspace: many keyspaces (a tenant each) share one Locker's
// sessions, so that 50 tenants' locks held at once take WithSessions(4)'s
// four connections, where a Locker per tenant would take four each; within
// a tenant, locks exclude across views as ever.
func TestSessionsSharedByKeyspaces(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(6)
		l := sqllock.New(db, sqllock.WithSessions(4))
		var held []*sqllock.Mutex
		for tenant := range 50 {
			mu := l.Keyspace(keyspace.Scoped(int32(tenant))).Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			held = append(held, mu)
		}
		assert.LessOrEqual(t, db.Stats().InUse, 4, "50 tenants' locks on the Locker's sessions")
		assert.NotEqual(t, held[0].Key(), held[1].Key(), "tenants' keys differ")
		ok, err := l.Keyspace(keyspace.Scoped(3)).Mutex(t.Name()).TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "tenant 3's lock, through another view, is held")
		for _, mu := range held {
			require.NoError(t, mu.Unlock(t.Context()))
		}
		_, err = l.Keyspace(nil).Mutex("x").TryLock(t.Context())
		assert.ErrorContains(t, err, "nil keyspace.Strategy")
	})
}

// A pool that cannot open the sessions WithSessions asks for is said so,
// once, where callers would otherwise wait with nothing to say why.
func TestSessionsFewConnectionsWarn(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(3)
		var buf syncBuffer
		l := sqllock.New(db, sqllock.WithSessions(4), sqllock.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
		for range 2 {
			mu := l.Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			require.NoError(t, mu.Unlock(t.Context()))
		}
		assert.Equal(t, 1, strings.Count(buf.String(), "cannot open the sessions WithSessions asks for"), "%s", buf.String())
		assert.Contains(t, buf.String(), "max_open_conns=3")
	})
}

// A session carrying many tenants' locks (one Locker, a Keyspace each) that
// the server ends is reported lost within the keep-alive interval, 2s with
// the defaults, to every lock it carried.
func TestSessionsKeyspacesLossWithinInterval(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the default keep-alive")
	}
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(6)
		l := sqllock.New(db, sqllock.WithSessions(2))
		var held []*sqllock.Mutex
		for tenant := range 20 {
			mu := l.Keyspace(keyspace.Scoped(int32(tenant))).Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			held = append(held, mu)
		}
		observer := pgtest.DB(t, "pgx")
		pid := backendOf(t, observer, held[0].Key())
		ended := time.Now()
		terminate(t, observer, pid)
		select {
		case <-held[0].Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the loss was not reported within 5s")
		}
		took := time.Since(ended)
		t.Logf("loss of a session carrying tenants' locks reported after %v", took.Round(time.Millisecond))
		assert.Less(t, took, sqllock.DefaultKeepAliveInterval+500*time.Millisecond)
		lost := 0
		for _, mu := range held {
			if errors.Is(mu.Err(), sqllock.ErrLockLost) {
				lost++
				continue
			}
			require.NoError(t, mu.Unlock(t.Context()))
		}
		assert.Positive(t, lost)
	})
}

// A multiplexed session whose last lock's unlock found nothing gave back
// nothing of its lease either (the unlock answers both at once): the
// session is discarded at its end, never returned to the pool.
func TestFakeMultiplexedSessionUnlockLostNotPooled(t *testing.T) {
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if isUnlock(q) {
			return []driver.Value{false}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithSessions(1), sqllock.WithKeepAlive(time.Hour, time.Second))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
	assert.Equal(t, int32(1), c.Closed.Load(), "the session is discarded")
	assert.Equal(t, 0, sqllock.DBOf(l).Stats().Idle, "nothing went back to the pool")
}

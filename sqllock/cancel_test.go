package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMockPoolExhaustedHonoursContext(t *testing.T) {
	l, mock := newMock(t)
	sqllock.DBOf(l).SetMaxOpenConns(2) // one is newMock's
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(true))
	a, b := l.MutexKey(keyspace.Int64(42)), l.MutexKey(keyspace.Int64(42))
	require.NoError(t, a.Lock(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, b.Lock(ctx), context.DeadlineExceeded, "waiting for a pooled connection is bounded by ctx")
	require.NoError(t, a.Unlock(t.Context()))
}

// A grant that arrives after the context ended is undone: the caller
// holds nothing, so the lock is released on its connection, which goes
// back to the pool. If that release is not confirmed, the session is
// ended instead, and looked for on the server.
func TestFakeGrantRacingCancelUndone(t *testing.T) {
	for _, released := range []bool{true, false} {
		ctx, cancel := context.WithCancel(t.Context())
		l, c, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
			if isUnlock(q) {
				return []driver.Value{released}, nil
			}
			if strings.HasPrefix(q, "SELECT pg_advisory_lock(") {
				cancel() // the context ends while the grant travels back
			}
			return answerAs(q, 7), nil
		})
		err := l.MutexKey(keyspace.Int64(42)).Lock(ctx)
		require.ErrorIs(t, err, context.Canceled)
		qs := sent()
		if released {
			assert.Equal(t, unlockSQL, qs[len(qs)-1], "the grant is undone")
			// A cancel request the driver sent may still land on the
			// session's next statement: the connection is not reused.
			assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
			assert.Equal(t, 0, sqllock.DBOf(l).Stats().Idle)
		} else {
			assert.True(t, strings.HasPrefix(qs[len(qs)-1], "SELECT a.state, EXISTS"), "the session is looked for: %q", qs)
			assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
		}
	}
}

// A lock statement that the driver does not return from when its context
// ends (lib/pq on a silent network, bun's pgdriver) is bounded by sqllock:
// Lock returns soon after the deadline, having ended the session on the
// server, or saying that it could not (the server never answers), and the
// connection is discarded once the driver returns.
func TestFakeLockBoundedWithHungDriver(t *testing.T) {
	for _, tc := range []struct {
		name         string
		serverAnswer bool // the look and the termination get answers
	}{{"server answers", true}, {"silent network", false}} {
		t.Run(tc.name, func(t *testing.T) {
			unblock := make(chan struct{})
			l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
				isLock := strings.Contains(q, " WHERE pg_backend_pid() = ")
				if isLock || (!tc.serverAnswer && strings.HasPrefix(q, "SELECT a.state, EXISTS")) {
					<-unblock // ignores ctx
				}
				return answerAs(q, 7), nil
			}, sqllock.WithKeepAlive(0, 0))
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := l.MutexKey(keyspace.Int64(42)).Lock(ctx)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			if tc.serverAnswer {
				require.NotErrorIs(t, err, sqllock.ErrNotReleased)
			} else {
				require.ErrorIs(t, err, sqllock.ErrNotReleased)
			}
			assert.Less(t, time.Since(start), session.AbandonGrace+settle.Bound+time.Second)
			close(unblock)
			require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond)
		})
	}
}

func TestLockHonoursContext(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ctx    func(context.Context) (context.Context, context.CancelFunc)
		cancel bool
		want   error
	}{
		{"cancel", context.WithCancel, true, context.Canceled},
		{"deadline", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 50*time.Millisecond)
		}, false, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachDriver(t, func(t *testing.T, db *sql.DB) {
				l := sqllock.New(db)
				holder := l.Mutex(t.Name())
				require.NoError(t, holder.Lock(t.Context()))
				for _, shared := range []bool{false, true} {
					ctx, cancel := tc.ctx(t.Context())
					waiter := l.Mutex(t.Name())
					got := make(chan error, 1)
					go func() {
						if shared {
							got <- waiter.LockShared(ctx)
						} else {
							got <- waiter.Lock(ctx)
						}
					}()
					if tc.cancel {
						waitRows(t, db, holder.Key(), 1, 1)
						cancel()
					}
					select {
					case err := <-got:
						t.Logf("the waiter's Lock returned: %v", err)
						require.ErrorIs(t, err, tc.want)
						var e *sqllock.Error
						require.ErrorAs(t, err, &e)
						assert.Equal(t, t.Name(), e.Name)
					case <-time.After(10 * time.Second):
						t.Fatal("Lock did not return after its context ended")
					}
					cancel()
					assert.ErrorIs(t, waiter.Unlock(t.Context()), sqllock.ErrNotHeld)
				}
				require.NoError(t, holder.Unlock(t.Context()))
				// Nothing survives: the key ends up free.
				waitRows(t, db, holder.Key(), 0, 0)
				noConnsInUse(t, db)
			})
		})
	}
}

// TestCancelTorture races hundreds of lock attempts with random deadlines
// against a contended key, then checks that no advisory lock is left on any
// connection: not on idle pooled ones, not anywhere.
func TestCancelTorture(t *testing.T) {
	attempts := 300
	if testing.Short() {
		attempts = 60
	}
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(12)
		// Open the connections the attempts start with: a new session can
		// take longer than most deadlines here (25 ms on an idle 2-core
		// machine, several times that under the race detector), and a
		// cancelled attempt discards its connection, so a cold pool could
		// see every attempt time out in the dial.
		db.SetMaxIdleConns(12)
		warm := make([]*sql.Conn, 6)
		for i := range warm {
			c, err := db.Conn(t.Context())
			require.NoError(t, err)
			warm[i] = c
		}
		for _, c := range warm {
			require.NoError(t, c.Close())
		}
		l := sqllock.New(db)
		key := keyspace.SHA256Int64.Key(t.Name())
		var wg sync.WaitGroup
		var mu sync.Mutex
		var granted, cancelled int
		sem := make(chan struct{}, 6)
		for i := range attempts {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				m := l.MutexKey(key)
				wait := time.Duration(1+rand.IntN(100000)) * time.Microsecond
				if i%4 == 1 {
					// Long enough to dial a session and queue: these get
					// the lock, so that cancels race grants and releases.
					wait = time.Second + wait
				}
				ctx, cancel := context.WithTimeout(t.Context(), wait)
				defer cancel()
				var err error
				if i%3 == 0 {
					err = m.LockShared(ctx)
				} else {
					err = m.Lock(ctx)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("attempt %d: got %v, want an error wrapping DeadlineExceeded", i, err)
					}
					cancelled++
					return
				}
				granted++
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond) // hold a while: others must queue
				if i%3 == 0 {
					assert.NoError(t, m.UnlockShared(context.Background()))
				} else {
					assert.NoError(t, m.Unlock(context.Background()))
				}
			})
		}
		wg.Wait()
		t.Logf("%d attempts: %d granted, %d cancelled", attempts, granted, cancelled)
		assert.NotZero(t, granted, "the torture must grant some locks")
		assert.NotZero(t, cancelled, "the torture must cancel some waits")
		// Every call has returned: no session holds or waits for the key,
		// not even a waiter whose connection was closed mid-wait.
		held, waiting := lockRows(t, db, key)
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "pg_locks right after the torture: held, waiting")
		noConnsInUse(t, db)
		last := l.MutexKey(key)
		ok, err := last.TryLock(t.Context())
		require.NoError(t, err)
		require.True(t, ok, "the key must be free after the torture")
		require.NoError(t, last.Unlock(t.Context()))
		waitRows(t, db, key, 0, 0)
	})
}

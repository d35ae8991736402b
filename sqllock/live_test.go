package sqllock_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func TestLockPinsConnection(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		base := inUse(db)
		require.NoError(t, mu.Lock(t.Context()))
		assert.Equal(t, base+1, inUse(db), "a held lock pins one connection")
		require.NoError(t, mu.Err())
		held, _ := lockRows(t, db, mu.Key())
		assert.Equal(t, 1, held)
		require.NoError(t, mu.Unlock(t.Context()))
		assert.Equal(t, base, inUse(db), "unlock returns the connection")
		held, _ = lockRows(t, db, mu.Key())
		assert.Equal(t, 0, held)
		assert.ErrorIs(t, mu.Err(), sqllock.ErrNotHeld)
	})
}

func TestExclusionInOneProcess(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, b := l.Mutex(t.Name()), l.Mutex(t.Name())
		ok, err := a.TryLock(t.Context())
		require.NoError(t, err)
		require.True(t, ok)

		ok, err = b.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a second Mutex for the same name must not get the lock")
		ok, err = a.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "the same Mutex locked twice must not get the lock twice")
		ok, err = b.TryLockShared(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "shared must wait for exclusive")

		require.NoError(t, a.Unlock(t.Context()))
		ok, err = b.TryLock(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, b.Unlock(t.Context()))
	})
}

func TestSharedCoexistsAndExcludes(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		a, b, c := l.Mutex(t.Name()), l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, a.LockShared(t.Context()))
		require.NoError(t, b.LockShared(t.Context()))
		ok, err := a.TryLockShared(t.Context())
		require.NoError(t, err)
		require.True(t, ok, "shared holders coexist, also within one Mutex")

		ok, err = c.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "exclusive must wait for shared")

		// An exclusive waiter is granted once every shared holder is gone.
		got := make(chan error, 1)
		go func() { got <- c.Lock(t.Context()) }()
		waitRows(t, db, a.Key(), 3, 1)
		require.NoError(t, a.UnlockShared(t.Context()))
		require.NoError(t, a.UnlockShared(t.Context()))
		require.NoError(t, b.UnlockShared(t.Context()))
		require.NoError(t, <-got)
		waitRows(t, db, a.Key(), 1, 0)
		require.NoError(t, c.Unlock(t.Context()))
	})
}

func TestWaiterGrantedOnRelease(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		holder, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		got := make(chan error, 1)
		go func() { got <- waiter.Lock(t.Context()) }()
		waitRows(t, db, holder.Key(), 1, 1) // the waiter waits in the server
		select {
		case err := <-got:
			t.Fatalf("waiter returned while the lock was held: %v", err)
		default:
		}
		require.NoError(t, holder.Unlock(t.Context()))
		require.NoError(t, <-got)
		require.NoError(t, waiter.Unlock(t.Context()))
	})
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
				assert.Equal(t, 0, inUse(db))
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
		assert.Equal(t, 0, inUse(db))
		last := l.MutexKey(key)
		ok, err := last.TryLock(t.Context())
		require.NoError(t, err)
		require.True(t, ok, "the key must be free after the torture")
		require.NoError(t, last.Unlock(t.Context()))
		waitRows(t, db, key, 0, 0)
	})
}

func TestWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu := l.Mutex(t.Name())
		other := l.Mutex(t.Name())
		boom := errors.New("boom")

		err := mu.WithLock(t.Context(), func(ctx context.Context) error {
			ok, err := other.TryLock(ctx)
			require.NoError(t, err)
			assert.False(t, ok, "held during fn")
			return nil
		})
		require.NoError(t, err)
		waitRows(t, db, mu.Key(), 0, 0)

		err = mu.WithLock(t.Context(), func(context.Context) error { return boom })
		require.ErrorIs(t, err, boom)
		waitRows(t, db, mu.Key(), 0, 0)

		func() {
			defer func() {
				assert.Equal(t, "user panic", recover(), "the panic goes on")
			}()
			_ = mu.WithLock(t.Context(), func(context.Context) error { panic("user panic") })
		}()
		waitRows(t, db, mu.Key(), 0, 0)

		err = mu.WithLockShared(t.Context(), func(ctx context.Context) error {
			ok, err := other.TryLockShared(ctx)
			require.NoError(t, err)
			assert.True(t, ok, "shared coexists")
			return other.UnlockShared(ctx)
		})
		require.NoError(t, err)
		assert.Equal(t, 0, inUse(db))

		// A context cancelled inside fn does not keep the lock.
		ctx, cancel := context.WithCancel(t.Context())
		err = mu.WithLock(ctx, func(context.Context) error { cancel(); return nil })
		require.NoError(t, err)
		waitRows(t, db, mu.Key(), 0, 0)
	})
}

func TestLossDetected(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, fastLoss)
		t.Run("Lock", func(t *testing.T) {
			mu := l.Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()))
			done := mu.Done()
			terminate(t, db, backendOf(t, db, mu.Key()))
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("loss not noticed")
			}
			require.ErrorIs(t, mu.Err(), sqllock.ErrLockLost)
			require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
			assert.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
			// A waiter now gets it.
			next := l.Mutex(t.Name())
			ok, err := next.TryLock(t.Context())
			require.NoError(t, err)
			assert.True(t, ok)
			require.NoError(t, next.Unlock(t.Context()))
		})
		t.Run("WithLock", func(t *testing.T) {
			mu := l.Mutex(t.Name())
			err := mu.WithLock(t.Context(), func(ctx context.Context) error {
				terminate(t, db, backendOf(t, db, mu.Key()))
				<-ctx.Done()
				require.ErrorIs(t, context.Cause(ctx), sqllock.ErrLockLost)
				return nil
			})
			require.ErrorIs(t, err, sqllock.ErrLockLost)
			waitRows(t, db, mu.Key(), 0, 0)
		})
	})
}

func TestUnlockNotHeld(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
		require.ErrorIs(t, mu.UnlockShared(t.Context()), sqllock.ErrNotHeld)
		require.NoError(t, mu.Lock(t.Context()))
		err := mu.UnlockShared(t.Context())
		require.ErrorIs(t, err, sqllock.ErrNotHeld)
		assert.Contains(t, err.Error(), "use Unlock")
		require.NoError(t, mu.Unlock(t.Context()))
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
	})
}

func TestUnlockWithCancelledContextReleases(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.NoError(t, mu.Lock(t.Context()))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		require.NoError(t, mu.Unlock(ctx))
		held, waiting := lockRows(t, db, mu.Key())
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "pg_locks right after Unlock: held, waiting")
		assert.Equal(t, 0, inUse(db))
	})
}

func TestExplicitKeysAtTheEdges(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		for _, k := range []keyspace.Key{
			keyspace.Int64(-9223372036854775808), keyspace.Int64(9223372036854775807),
			keyspace.Pair(-2147483648, 2147483647), keyspace.Pair(-2147483648, -2147483648),
		} {
			mu := l.MutexKey(k)
			require.NoError(t, mu.Lock(t.Context()), "%v", k)
			held, _ := lockRows(t, db, k)
			assert.Equal(t, 1, held, "pg_locks shows %v where LockTag says", k)
			require.NoError(t, mu.Unlock(t.Context()))
		}
	})
}

// A second shared holder on a shared session asks pg_locks whether anyone
// waits for the key, in SQL that takes the key as parameters or as
// literals: at the edges too. The drivers take turns (the keys are the
// same for all), and the test runs apart from TestExplicitKeysAtTheEdges,
// whose exclusive locks would queue as waiters.
func TestSharedHoldersAtTheEdges(t *testing.T) {
	for _, s := range setups {
		db := s.open(t)
		for _, opts := range [][]sqllock.Option{{sqllock.WithSessions(1)}, {sqllock.WithSessions(1), sqllock.WithLiterals}} {
			l := sqllock.New(db, opts...)
			for _, k := range []keyspace.Key{
				keyspace.Int64(-9223372036854775808), keyspace.Int64(9223372036854775807),
				keyspace.Pair(-2147483648, 5), keyspace.Pair(5, -2147483648),
			} {
				a, b := l.MutexKey(k), l.MutexKey(k)
				require.NoError(t, a.LockShared(t.Context()), "%s %v", s.name, k)
				ok, err := b.TryLockShared(t.Context())
				require.NoError(t, err, "%s %v", s.name, k)
				require.True(t, ok, "%s %v", s.name, k)
				require.NoError(t, b.UnlockShared(t.Context()))
				require.NoError(t, a.UnlockShared(t.Context()))
			}
		}
	}
}

func TestServerErrorsNameTheLock(t *testing.T) {
	// A closed port: the error names the lock and wraps the driver's error.
	for _, driver := range []string{"postgres", "pgx"} {
		db, err := sql.Open(driver, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
		require.NoError(t, err)
		defer db.Close()
		mu := sqllock.New(db).Mutex("unreachable")
		err = mu.Lock(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"unreachable"`)
		assert.Contains(t, err.Error(), mu.Key().String())
	}
}

func TestClosedDB(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.NoError(t, db.Close())
		err := mu.Lock(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "database is closed")
	})
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

func TestTransactionLocks(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		tx, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		require.NoError(t, mu.LockTx(t.Context(), tx))
		ok, err := other.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a transaction lock excludes a session lock")
		tx2, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		ok, err = other.TryLockSharedTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.False(t, ok)
		require.NoError(t, tx2.Rollback())

		require.NoError(t, tx.Commit()) // releases
		waitRows(t, db, mu.Key(), 0, 0)

		// Shared transaction locks coexist.
		tx, err = db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		tx2, err = db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		require.NoError(t, mu.LockSharedTx(t.Context(), tx))
		ok, err = other.TryLockSharedTx(t.Context(), tx2)
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, tx.Rollback())
		require.NoError(t, tx2.Rollback())
		waitRows(t, db, mu.Key(), 0, 0)
	})
}

// TestTransactionDeadlock: one transaction holding several locks lets the
// server see a lock-order cycle; the victim gets ErrDeadlock.
func TestTransactionDeadlock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		m1, m2 := l.Mutex(t.Name()+"/1"), l.Mutex(t.Name()+"/2")
		tx1, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx1.Rollback()
		tx2, err := db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		defer tx2.Rollback()
		require.NoError(t, m1.LockTx(t.Context(), tx1))
		require.NoError(t, m2.LockTx(t.Context(), tx2))
		errs := make(chan error, 2)
		go func() { errs <- m2.LockTx(t.Context(), tx1) }()
		waitRows(t, db, m2.Key(), 1, 1)
		go func() { errs <- m1.LockTx(t.Context(), tx2) }()
		// The server aborts the victim's transaction, releasing its locks at
		// once, so the survivor may be granted before the victim hears.
		a, b := <-errs, <-errs
		victim := a
		if a == nil {
			victim = b
		} else {
			require.NoError(t, b, "exactly one deadlock victim")
		}
		require.ErrorIs(t, victim, sqllock.ErrDeadlock)
		var se interface{ SQLState() string }
		require.ErrorAs(t, victim, &se)
		assert.Equal(t, "40P01", se.SQLState())
		require.NoError(t, tx1.Rollback())
		require.NoError(t, tx2.Rollback())
		waitRows(t, db, m1.Key(), 0, 0)
		waitRows(t, db, m2.Key(), 0, 0)
	})
}

func TestTryWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu, other := l.Mutex(t.Name()), l.Mutex(t.Name())
		ran := false
		ok, err := mu.TryWithLock(t.Context(), func(ctx context.Context) error {
			ran = true
			inner, err := other.TryWithLockShared(ctx, func(context.Context) error {
				t.Error("fn ran while the lock was held exclusively")
				return nil
			})
			assert.False(t, inner)
			return err
		})
		require.NoError(t, err)
		assert.True(t, ok)
		assert.True(t, ran)
		waitRows(t, db, mu.Key(), 0, 0)
		assert.Equal(t, 0, inUse(db))
	})
}

// The bound of a statement whose context never ends (a release's, a
// shared session's) is kept by interrupting the driver: on the socket
// under pgx (sqllock reaches it through pgx's accessors), and by closing
// the connection under lib/pq, whose socket is out of reach. If lib/pq
// renamed its connection type, sqllock would fall back to a slower path:
// this test says so.
func TestReleaseBoundInterrupt(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		conn, err := db.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		nc := sqllock.DriverSocket(conn)
		if strings.HasPrefix(t.Name(), "TestReleaseBoundInterrupt/pgx") {
			assert.Equal(t, "socket", sqllock.InterruptKind(conn))
			require.NotNil(t, nc, "pgx's socket")
			if local, ok := nc.LocalAddr().(*net.TCPAddr); ok {
				var port int
				require.NoError(t, conn.QueryRowContext(t.Context(), "SELECT inet_client_port()").Scan(&port))
				assert.Equal(t, port, local.Port, "the socket is this connection's")
			}
		} else {
			assert.Nil(t, nc, "lib/pq's socket is out of reach")
			assert.Equal(t, "close", sqllock.InterruptKind(conn))
		}
	})
}

// The first lock on a connection verifies its session; every lock runs
// the guarded form, which names that session's backend, and the server
// shows that form as the session's last statement while the lock is held.
// Locks through a verified connection exclude as ever, in both modes.
func TestGuardedFormLive(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(1) // every lock on one connection
		l := sqllock.New(db)
		mu, try := l.Mutex(t.Name()), l.Mutex(t.Name()+"/try")
		observer := pgtest.DB(t, "pgx")
		lastStatement := func(k keyspace.Key) (pid int64, query string) {
			pid = backendOf(t, observer, k)
			require.NoError(t, observer.QueryRowContext(t.Context(),
				"SELECT query FROM pg_stat_activity WHERE pid = $1", pid).Scan(&query))
			return pid, query
		}
		require.NoError(t, mu.Lock(t.Context()))
		pid, first := lastStatement(mu.Key())
		assert.True(t, strings.HasPrefix(first, "SELECT pg_advisory_lock("), "guarded form: %s", first)
		require.NoError(t, mu.Unlock(t.Context()))

		require.NoError(t, mu.Lock(t.Context()))
		again, guarded := lastStatement(mu.Key())
		assert.Equal(t, pid, again, "one connection, one session")
		assert.True(t, strings.HasPrefix(guarded, "SELECT pg_advisory_lock("), "guarded form: %s", guarded)
		assert.True(t, strings.HasSuffix(guarded, fmt.Sprintf("WHERE pg_backend_pid() = %d", pid)), "guarded form: %s", guarded)
		require.NoError(t, mu.Unlock(t.Context()))

		// A guarded try on the verified connection, against a holder on
		// another session, finds the lock taken.
		holder := sqllock.New(observer).Mutex(try.Name())
		require.NoError(t, holder.Lock(t.Context()))
		ok, err := try.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a guarded try on a held key fails")
		require.NoError(t, holder.Unlock(t.Context()))
		ok, err = try.TryLockShared(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		_, shared := lastStatement(try.Key())
		assert.Equal(t, fmt.Sprintf("SELECT pg_try_advisory_lock_shared(%s) WHERE pg_backend_pid() = %d", keyArgs(db, try.Key()), pid), shared)
		require.NoError(t, try.UnlockShared(t.Context()))
		waitRows(t, observer, try.Key(), 0, 0)
	})
}

// keyArgs is how k appears in a lock statement: as parameters, on every
// driver (pgx caches its statements, and sqllock prepares them per
// connection on the others).
func keyArgs(_ *sql.DB, k keyspace.Key) string {
	if _, ok := k.Int64(); ok {
		return "$1"
	}
	return "$1,$2"
}

// outsideTx runs each statement in a transaction of its own, as a
// wrapper over a *sql.DB would when mistaken for a transaction.
type outsideTx struct{ db *sql.DB }

func (o outsideTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return o.db.QueryRowContext(ctx, q, args...)
}

// insideTx wraps a *sql.Tx, as ORMs' transaction types do; hiddenTx
// hides it, so that sqllock checks the lock outlived its statement.
type (
	insideTx struct{ *sql.Tx }
	hiddenTx struct{ tx *sql.Tx }
)

func (h hiddenTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return h.tx.QueryRowContext(ctx, q, args...)
}

// The transaction locks take what ORMs hand out over a *sql.Tx, and refuse
// anything whose statement would run outside the transaction, which would
// release the lock as soon as it was taken.
func TestTransactionLocksTakeWrappersRefuseNonTransactions(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		mu := l.Mutex(t.Name())
		conn, err := db.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		for _, tc := range []struct {
			name string
			tx   sqllock.Tx
		}{{"*sql.DB", db}, {"*sql.Conn", conn}, {"wrapper over a *sql.DB", outsideTx{db}}} {
			err := mu.LockTx(t.Context(), tc.tx)
			require.ErrorIs(t, err, sqllock.ErrNotInTransaction, tc.name)
			assert.Contains(t, err.Error(), t.Name(), "the error names the lock")
			ok, err := mu.TryLockSharedTx(t.Context(), tc.tx)
			require.ErrorIs(t, err, sqllock.ErrNotInTransaction, tc.name)
			assert.False(t, ok)
		}
		var nilTx *sql.Tx
		require.ErrorContains(t, mu.LockTx(t.Context(), nilTx), "nil transaction")
		require.ErrorContains(t, mu.LockTx(t.Context(), nil), "nil transaction")

		for _, wrap := range []func(*sql.Tx) sqllock.Tx{
			func(tx *sql.Tx) sqllock.Tx { return insideTx{tx} },
			func(tx *sql.Tx) sqllock.Tx { return hiddenTx{tx} },
		} {
			tx, err := db.BeginTx(t.Context(), nil)
			require.NoError(t, err)
			require.NoError(t, mu.LockTx(t.Context(), wrap(tx)))
			ok, err := mu.TryLockTx(t.Context(), wrap(tx))
			require.NoError(t, err)
			assert.True(t, ok, "transaction locks are re-entrant within the transaction")
			held, _ := lockRows(t, db, mu.Key())
			assert.Equal(t, 1, held, "the wrapped transaction holds the lock")
			require.NoError(t, tx.Rollback())
			held, waiting := lockRows(t, db, mu.Key())
			assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
		}
	})
}

// Inside WithLock's function, the Mutex describes the lock it holds, as
// after Lock: Done open, Err nil; afterwards, Done closed and ErrNotHeld.
func TestDoneAndErrInsideWithLock(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		inside := func(ctx context.Context) error {
			select {
			case <-mu.Done():
				t.Errorf("Done closed inside fn (Err: %v), want open while the lock is held", mu.Err())
			default:
			}
			assert.NoError(t, mu.Err(), "Err inside fn")
			return nil
		}
		require.NoError(t, mu.WithLock(t.Context(), inside))
		ok, err := mu.TryWithLock(t.Context(), inside)
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, mu.WithLockShared(t.Context(), inside))
		select {
		case <-mu.Done():
		default:
			t.Error("Done open after WithLock returned, want closed")
		}
		require.ErrorIs(t, mu.Err(), sqllock.ErrNotHeld)
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld, "WithLock's hold is gone from the Mutex")
	})
}

// A Lock that picks a pooled connection whose session the server has just
// ended retries on another connection, whatever error the driver gives
// for it: lib/pq's "connection reset by peer" and pgx's "unexpected EOF"
// failed such Locks before (issue 14: 104 of 150 rounds on lib/pq).
func TestLockRetriesDeadPooledSession(t *testing.T) {
	rounds := 100
	if testing.Short() {
		rounds = 30
	}
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxIdleConns(1)
		l := sqllock.New(db)
		admin := pgtest.DB(t, "pgx")
		for round := range rounds {
			mu := l.Mutex(t.Name())
			require.NoError(t, mu.Lock(t.Context()), "round %d: first Lock", round)
			pid := backendOf(t, admin, mu.Key())
			require.NoError(t, mu.Unlock(t.Context()))
			terminate(t, admin, pid) // the pooled connection's session ends
			time.Sleep(time.Duration(rand.IntN(800)) * time.Microsecond)
			require.NoError(t, mu.Lock(t.Context()), "round %d: Lock after the pooled session %d was terminated", round, pid)
			require.NoError(t, mu.Unlock(t.Context()))
		}
	})
}

// A lock that fills the pool says so, once: any other query on the pool
// would wait for a connection until its context ends.
func TestPoolFilledByLocksWarnsOnce(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		db.SetMaxOpenConns(1)
		mu := sqllock.New(db, sqllock.WithLogger(logger)).Mutex(t.Name())
		for range 3 {
			require.NoError(t, mu.Lock(t.Context()))
			require.NoError(t, mu.Unlock(t.Context()))
		}
		out := buf.String()
		assert.Equal(t, 1, strings.Count(out, "held locks fill the connection pool"), "one warning per Locker: %s", out)
		assert.Contains(t, out, "max_open_conns=1")
		assert.Contains(t, out, t.Name(), "the warning names the lock")
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// MaxWait bounds the wait alone: fn runs past it, and a wait that ends is
// an ErrNotAcquired error naming the lock, distinct from fn's errors.
func TestWithLockMaxWait(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db)
		holder, mu := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		ran := false
		start := time.Now()
		err := mu.WithLock(t.Context(), func(context.Context) error { ran = true; return nil }, sqllock.MaxWait(50*time.Millisecond))
		assert.False(t, ran, "fn ran without the lock")
		require.ErrorIs(t, err, sqllock.ErrNotAcquired)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		var se *sqllock.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "withlock", se.Op)
		assert.Contains(t, err.Error(), t.Name())
		assert.Less(t, time.Since(start), 5*time.Second)
		held, waiting := lockRows(t, db, holder.Key())
		assert.Equal(t, [2]int{1, 0}, [2]int{held, waiting}, "the bounded wait left nothing waiting")
		require.NoError(t, holder.Unlock(t.Context()))

		// Granted: fn outlives the wait bound, its context untouched.
		err = mu.WithLock(t.Context(), func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return fmt.Errorf("fn's context ended: %w", context.Cause(ctx))
			case <-time.After(150 * time.Millisecond):
			}
			return nil
		}, sqllock.MaxWait(50*time.Millisecond))
		require.NoError(t, err)

		// fn's own failure is not ErrNotAcquired.
		boom := errors.New("job failed")
		err = mu.WithLock(t.Context(), func(context.Context) error { return boom }, sqllock.MaxWait(time.Second))
		require.ErrorIs(t, err, boom)
		require.NotErrorIs(t, err, sqllock.ErrNotAcquired)

		err = mu.WithLock(t.Context(), func(context.Context) error { return nil }, sqllock.MaxWait(0))
		require.ErrorContains(t, err, "MaxWait(0s)")
		assert.Contains(t, err.Error(), t.Name())
		err = mu.WithLock(t.Context(), func(context.Context) error { return nil }, nil)
		require.ErrorContains(t, err, "nil WithLockOption")
	})
}

// An Unlock releases what Lock took, never WithLock's lock: a Mutex shared
// between WithLockShared and LockShared/UnlockShared keeps fn's lock held
// while fn runs, and leaves nothing behind (found in review: UnlockShared
// released fn's hold, and its own lock stayed held with its connection).
func TestUnlockLeavesWithLockAlone(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		err := mu.WithLockShared(t.Context(), func(ctx context.Context) error {
			if err := mu.LockShared(ctx); err != nil {
				return err
			}
			if err := mu.UnlockShared(ctx); err != nil {
				return err
			}
			held, _ := lockRows(t, db, mu.Key())
			assert.Equal(t, 1, held, "fn's shared lock is still held")
			require.ErrorIs(t, mu.UnlockShared(ctx), sqllock.ErrNotHeld, "fn's lock is not Unlock's to release")
			return ctx.Err()
		})
		require.NoError(t, err)
		held, waiting := lockRows(t, db, mu.Key())
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting})
		assert.Zero(t, db.Stats().InUse, "every connection back in the pool")
	})
}

// With WithSessions too: a shared session that takes the pool's last
// connection says so, once.
func TestPoolFilledBySharedSessionWarns(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		db.SetMaxOpenConns(1)
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithLogger(logger))
		a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
		require.NoError(t, a.Lock(t.Context()))
		require.NoError(t, b.Lock(t.Context()))
		require.NoError(t, b.Unlock(t.Context()))
		require.NoError(t, a.Unlock(t.Context()))
		out := buf.String()
		assert.Equal(t, 1, strings.Count(out, "held locks fill the connection pool"), "one warning per Locker: %s", out)
		assert.Contains(t, out, "max_open_conns=1")
	})
}

// WithLock after a loss: fn's own error comes back wrapped with the loss
// (errors.Is finds both), and fn returning its context's cause, the loss
// itself, is not said twice.
func TestWithLockLossAndFnError(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		errFn := errors.New("fn failed")
		for _, returned := range []string{"cause", "own"} {
			m := sqllock.New(db, fastLoss).Mutex(t.Name() + "/" + returned)
			err := m.WithLock(t.Context(), func(ctx context.Context) error {
				terminate(t, db, backendOf(t, db, m.Key()))
				<-ctx.Done()
				if returned == "cause" {
					return context.Cause(ctx)
				}
				return errFn
			})
			t.Logf("%s: %v", returned, err)
			require.ErrorIs(t, err, sqllock.ErrLockLost)
			require.NotErrorIs(t, err, sqllock.ErrNoAnswer, "a terminated backend answered: no bound of sqllock's ended anything")
			if returned == "own" {
				require.ErrorIs(t, err, errFn)
				continue
			}
			assert.NotContains(t, err.Error(), "and fn returned", "the loss is said once")
		}
	})
}

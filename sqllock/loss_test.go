package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMockKeepAliveSeesOtherBackend(t *testing.T) {
	l, mock := newMock(t, sqllock.WithKeepAlive(time.Millisecond, time.Second), sqllock.WithLease(0))
	expectLock(mock, 7)
	mock.ExpectQuery(sqltext.ProbeSQL).WillReturnRows(sqlmock.NewRows([]string{"pid"}).AddRow(8))
	expectEnded(mock, 7)
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	<-mu.Done()
	err := mu.Err()
	require.ErrorIs(t, err, sqllock.ErrLockLost)
	assert.Contains(t, err.Error(), "transaction pooler")
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
}

// A driver hung on a dead network, ignoring its context, must not hide a
// loss: the probe's own timer declares it.
func TestFakeKeepAliveTimeoutWithHungDriver(t *testing.T) {
	unblock := make(chan struct{})
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			<-unblock // ignores ctx, as lib/pq can on a dead network
			return []driver.Value{int64(7)}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(time.Millisecond, 20*time.Millisecond))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	select {
	case <-mu.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the hung probe was not declared a loss")
	}
	require.ErrorIs(t, mu.Err(), sqllock.ErrLockLost)
	require.ErrorIs(t, mu.Err(), sqllock.ErrNoAnswer)
	require.ErrorContains(t, mu.Err(), "(20ms, the keep-alive timeout)")
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
	assert.Equal(t, int32(0), c.Closed.Load(), "the connection stays with the hung driver call")
	close(unblock)
	require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond,
		"once the driver returns, the connection is discarded")
}

// The keep-alive costs one query per held lock per interval, never more:
// 100 held locks with the default 2s interval add 50 queries/s.
func TestKeepAliveLoad(t *testing.T) {
	const held, interval, window = 100, 20 * time.Millisecond, 400 * time.Millisecond
	var probes atomic.Int64
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		switch {
		case q == sqltext.ProbeSQL:
			probes.Add(1)
			return []driver.Value{int64(7)}, nil
		case isUnlock(q):
			return []driver.Value{true}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(interval, time.Second))
	mus := make([]*sqllock.Mutex, held)
	for i := range mus {
		mus[i] = l.MutexKey(keyspace.Int64(int64(i)))
		require.NoError(t, mus[i].Lock(t.Context()))
	}
	probes.Store(0)
	start := time.Now()
	time.Sleep(window) // the window measured, not a wait for an event
	got := float64(probes.Load()) / time.Since(start).Seconds()
	for _, mu := range mus {
		require.NoError(t, mu.Unlock(t.Context()))
	}
	want := held / interval.Seconds()
	t.Logf("keep-alive load: %.0f queries/s for %d locks at a %v interval (one per lock per interval: %.0f/s)", got, held, interval, want)
	assert.LessOrEqual(t, got, want*1.1, "more than one probe per lock per interval")
	assert.Greater(t, got, want*0.5, "the keep-alive is not probing")
}

// lockWithProbeInFlight returns a Mutex holding a lock whose keep-alive
// probe is in flight, and stays so until unblock is closed.
func lockWithProbeInFlight(t *testing.T, timeout time.Duration) (mu *sqllock.Mutex, c *fakedriver.Connector, unblock chan struct{}) {
	probing := make(chan struct{})
	unblock = make(chan struct{})
	var once sync.Once
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			once.Do(func() { close(probing) })
			<-unblock
			return []driver.Value{int64(7)}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(time.Millisecond, timeout))
	mu = l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	<-probing
	return mu, c, unblock
}

// Unlock waits for a keep-alive probe in flight, whatever its context:
// the probe's own timeout bounds the wait. A probe that gets no answer in
// time loses the lock, and ends the session once the driver returns.
func TestFakeUnlockDuringSlowProbe(t *testing.T) {
	mu, c, unblock := lockWithProbeInFlight(t, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	require.ErrorIs(t, mu.Unlock(ctx), sqllock.ErrLockLost, "the probe got no answer")
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, int32(0), c.Closed.Load())
	close(unblock)
	require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the probe's goroutine ends the session")
}

// Unlock with a context that has time left waits for a probe in flight,
// is woken when the probe gives the connection back, and unlocks as usual:
// the connection returns to the pool.
func TestFakeUnlockWaitsForProbe(t *testing.T) {
	mu, c, unblock := lockWithProbeInFlight(t, time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- mu.Unlock(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Unlock returned (%v) while the probe held the connection", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(unblock)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Unlock was not woken when the probe gave the connection back")
	}
	assert.Equal(t, int32(0), c.Closed.Load(), "the connection went back to the pool")
}

// After a lock is lost and taken again, Done and Err describe the lock
// held now, not the lost one.
func TestFakeDoneDescribesLiveLock(t *testing.T) {
	var probes atomic.Int32
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		switch {
		case q == sqltext.ProbeSQL && probes.Add(1) == 1:
			return nil, errors.New("terminating connection due to administrator command")
		case q == sqltext.ProbeSQL:
			return []driver.Value{int64(7)}, nil
		case isUnlock(q):
			return []driver.Value{true}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(time.Millisecond, time.Second))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	<-mu.Done()
	require.ErrorIs(t, mu.Err(), sqllock.ErrLockLost)
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Err(), "Err describes the lock held now")
	select {
	case <-mu.Done():
		t.Fatal("Done is closed while a lock is held")
	default:
	}
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost, "Unlock reports the oldest, lost, lock first")
	require.NoError(t, mu.Unlock(t.Context()))
}

// An observer may call Unlock when told of a loss.
func TestFakeObserverUnlocksOnLoss(t *testing.T) {
	var mu *sqllock.Mutex
	unlocked := make(chan error, 1)
	obs := sqllock.ObserverFunc(func(e sqllock.Event) {
		if e.Kind == sqllock.EventLost {
			unlocked <- mu.Unlock(context.Background())
		}
	})
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			return nil, errors.New("server closed the connection")
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(time.Millisecond, time.Second), sqllock.WithObserver(obs))
	mu = l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	select {
	case err := <-unlocked:
		require.ErrorIs(t, err, sqllock.ErrLockLost)
	case <-time.After(5 * time.Second):
		t.Fatal("Unlock from an observer deadlocked")
	}
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

// TestFaultTerminatedBackend times TestLossDetected's fault: an
// administrator ends the holder's backend (pg_terminate_backend) while
// another session waits for the lock.
func TestFaultTerminatedBackend(t *testing.T) {
	const interval, timeout = 50 * time.Millisecond, time.Second
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		db := s.open(t, pgtest.DSN(t))
		l := sqllock.New(db, sqllock.WithKeepAlive(interval, timeout))
		holder, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		lost := faultStamp(t, holder.Done())
		waited := faultGo(func() error { return waiter.Lock(t.Context()) })
		waitRows(t, db, holder.Key(), 1, 1)

		start := time.Now()
		terminate(t, db, backendOf(t, db, holder.Key()))
		at := faultWithin(t, lost, 10*time.Second, "holder's Done")
		faultFigure(t, "detected", s.name, "terminate", at.Sub(start))
		assert.LessOrEqual(t, at.Sub(start), interval+timeout, "a dead session shows at the next probe")
		err := holder.Err()
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		t.Logf("holder's Err: %v", err)

		r := faultWithin(t, waited, 10*time.Second, "waiter's Lock")
		require.NoError(t, r.err)
		faultFigure(t, "acquired", s.name, "terminate", r.at.Sub(start))

		require.ErrorIs(t, holder.Unlock(t.Context()), sqllock.ErrLockLost)
		require.NoError(t, waiter.Unlock(t.Context()))
		waitRows(t, db, holder.Key(), 0, 0)
		noConnsInUse(t, db)
	})
}

// TestFaultServerRestart restarts a dedicated server while, on every driver
// at once, a Lock holder, a WithLock holder and a waiter use it: the holders
// are told, the waiter gets an error (or a lock whose loss it is told of),
// and once the server is back a new Lock succeeds.
func TestFaultServerRestart(t *testing.T) {
	t.Parallel()
	const interval, timeout = 50 * time.Millisecond, time.Second
	c := pgtest.NewCluster(t)
	admin := faultOpen(t, "pgx", c.DSN())

	type scene struct {
		s        faultSetup
		db       *sql.DB
		l        *sqllock.Locker
		holder   *sqllock.Mutex
		waiter   *sqllock.Mutex
		lost     <-chan time.Time   // the holder's Done
		waited   <-chan faultResult // the waiter's Lock
		fnEnded  <-chan faultResult // WithLock's fn context: its cause
		withLock <-chan faultResult // WithLock's result
	}
	var scenes []*scene
	for _, s := range faultSetups {
		db := s.open(t, c.DSN())
		l := sqllock.New(db, sqllock.WithKeepAlive(interval, timeout))
		name := t.Name() + "/" + s.name
		sc := &scene{s: s, db: db, l: l, holder: l.Mutex(name), waiter: l.Mutex(name)}
		require.NoError(t, sc.holder.Lock(t.Context()))
		sc.lost = faultStamp(t, sc.holder.Done())
		sc.waited = faultGo(func() error { return sc.waiter.Lock(t.Context()) })

		started := make(chan struct{})
		fnEnded := make(chan faultResult, 1)
		sc.fnEnded = fnEnded
		sc.withLock = faultGo(func() error {
			return l.Mutex(name+"/withlock").WithLock(t.Context(), func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				fnEnded <- faultResult{context.Cause(ctx), time.Now()}
				return nil
			})
		})
		faultWithin(t, (<-chan struct{})(started), 10*time.Second, s.name+": WithLock's fn to start")
		waitRows(t, admin, sc.holder.Key(), 1, 1)
		// An idle pooled connection, as every application has: after the
		// restart it is stale.
		for range 2 { // pgx pings a connection idle for over 1s: use it twice
			_, err := db.ExecContext(t.Context(), "SELECT 1")
			require.NoError(t, err)
		}
		require.NotZero(t, db.Stats().Idle)
		scenes = append(scenes, sc)
	}

	start := time.Now()
	c.Restart(t)
	faultFigure(t, "restarted", "all", "restart", time.Since(start))
	admin = faultOpen(t, "pgx", c.DSN()) // the old pool's idle connection is stale

	for _, sc := range scenes {
		t.Run(sc.s.name, func(t *testing.T) {
			at := faultWithin(t, sc.lost, 10*time.Second, "holder's Done")
			faultFigure(t, "detected", sc.s.name, "restart", at.Sub(start))
			err := sc.holder.Err()
			require.ErrorIs(t, err, sqllock.ErrLockLost)
			t.Logf("holder's Err: %v", err)
			require.ErrorIs(t, sc.holder.Unlock(t.Context()), sqllock.ErrLockLost)

			r := faultWithin(t, sc.fnEnded, 10*time.Second, "WithLock's fn context")
			require.ErrorIs(t, r.err, sqllock.ErrLockLost, "context.Cause of fn's context")
			faultFigure(t, "detected", sc.s.name, "restart-withlock", r.at.Sub(start))
			r = faultWithin(t, sc.withLock, 10*time.Second, "WithLock")
			require.ErrorIs(t, r.err, sqllock.ErrLockLost)

			r = faultWithin(t, sc.waited, 10*time.Second, "waiter's Lock")
			if r.err == nil {
				// The grant beat the waiter's own termination: then the
				// keep-alive must report the loss.
				at := faultWithin(t, faultStamp(t, sc.waiter.Done()), 10*time.Second, "waiter's Done")
				require.ErrorIs(t, sc.waiter.Err(), sqllock.ErrLockLost)
				faultFigure(t, "detected", sc.s.name, "restart-waiter-granted", at.Sub(start))
				require.ErrorIs(t, sc.waiter.Unlock(t.Context()), sqllock.ErrLockLost)
			} else {
				var e *sqllock.Error
				require.ErrorAs(t, r.err, &e)
				assert.Equal(t, "lock", e.Op)
				faultFigure(t, "failed", sc.s.name, "restart-waiter", r.at.Sub(start))
				t.Logf("waiter's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
				require.ErrorIs(t, sc.waiter.Unlock(t.Context()), sqllock.ErrNotHeld)
			}

			// The server is back: a new lock works, even though the pool
			// still has a connection to the old server.
			issues := &faultIssues{t: t, setup: sc.s.name}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			again := sc.l.Mutex(sc.holder.Name())
			err = again.Lock(ctx)
			issues.check(faultIssueStaleConn, err != nil, fmt.Sprintf("first Lock after the restart: %v", err))
			if err != nil { // the stale connection is discarded now
				require.NoError(t, again.Lock(ctx), "second Lock after the restart")
			}
			waitRows(t, admin, again.Key(), 1, 0)
			require.NoError(t, again.Unlock(ctx))
			waitRows(t, admin, again.Key(), 0, 0)
			noConnsInUse(t, sc.db)
			issues.done()
		})
	}
}

// TestFaultSilentNetwork cuts the holder's network path without closing it
// (a tcpproxy blackhole), as a dead router or a frozen VM does. Nothing
// tells the client; the keep-alive's own timer must. The server frees the
// lock only when it ends the silent session itself, here through
// idle_session_timeout, set on the holder's sessions only.
func TestFaultSilentNetwork(t *testing.T) {
	const (
		interval, timeout  = 100 * time.Millisecond, 500 * time.Millisecond
		idleSessionTimeout = time.Second
		slack              = 500 * time.Millisecond // scheduling on a busy machine, -race
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		direct := s.open(t, pgtest.DSN(t))
		p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
		viaProxy := s.open(t, proxied)

		l := sqllock.New(viaProxy, sqllock.WithKeepAlive(interval, timeout))
		holder := l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		lost := faultStamp(t, holder.Done())
		waiter := sqllock.New(direct).Mutex(t.Name())
		waited := faultGo(func() error { return waiter.Lock(t.Context()) })
		waitRows(t, direct, holder.Key(), 1, 1)
		pid := backendOf(t, direct, holder.Key())

		// idle_session_timeout spares healthy holders: the keep-alive keeps
		// the session from ever being idle that long.
		select {
		case <-lost:
			t.Fatalf("a healthy holder lost its lock to idle_session_timeout: %v", holder.Err())
		case <-time.After(idleSessionTimeout + 3*interval):
		}
		require.Equal(t, pid, backendOf(t, direct, holder.Key()), "the holder's session survives")

		start := time.Now()
		p.Blackhole()
		at := faultWithin(t, lost, interval+timeout+10*time.Second, "holder's Done")
		faultFigure(t, "detected", s.name, "silent-network", at.Sub(start))
		assert.LessOrEqual(t, at.Sub(start), interval+timeout+slack, "the loss is declared within interval + timeout")
		err := holder.Err()
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		notBlamingContext(t, err)
		t.Logf("holder's Err: %v", err)
		r := faultWithin(t, faultGo(func() error { return holder.Unlock(t.Context()) }), 5*time.Second, "Unlock of the lost lock")
		require.ErrorIs(t, r.err, sqllock.ErrLockLost)

		// The server still sees the holder's session, idle, holding the
		// lock, until idle_session_timeout ends it.
		r = faultWithin(t, waited, idleSessionTimeout+10*time.Second, "waiter's Lock")
		require.NoError(t, r.err)
		faultFigure(t, "acquired", s.name, "silent-network", r.at.Sub(start))
		assert.LessOrEqual(t, r.at.Sub(start), idleSessionTimeout+slack, "the server frees the lock after idle_session_timeout")

		// The network comes back broken: a driver stuck in a read returns,
		// and the abandoned keep-alive probe then discards the connection.
		require.NoError(t, p.Close())
		noConnsInUse(t, viaProxy)
		require.NoError(t, waiter.Unlock(t.Context()))
		waitRows(t, direct, holder.Key(), 0, 0)
	})
}

// TestFaultSilentNetworkBoundsCalls checks that a context bounds Unlock,
// WithLock's release and Lock's wait even when the network goes silent
// under them, and that the lock does not outlive the silent session.
func TestFaultSilentNetworkBoundsCalls(t *testing.T) {
	const (
		// The keep-alive stays out of the way: these calls meet the silence
		// first.
		interval, timeout = time.Minute, 500 * time.Millisecond
		deadline          = 300 * time.Millisecond
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		// A call whose driver does not return gets abandonGrace (250ms)
		// after its context ends, then up to settleBound (500ms) to end
		// its session on the server, which the silence also swallows.
		slack := 1000 * time.Millisecond
		if s.name == "pgx-cancelrequest" {
			// The cancel request gets DeadlineDelay (1s) before pgx closes
			// the connection.
			slack += time.Second
		}
		direct := s.open(t, pgtest.DSN(t))
		// open returns a Mutex whose sessions go through a new proxy, its
		// pool and the proxy.
		open := func(t *testing.T) (*sqllock.Mutex, *sql.DB, *tcpproxy.Proxy) {
			p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
			db := s.open(t, proxied)
			return sqllock.New(db, sqllock.WithKeepAlive(interval, timeout)).Mutex(t.Name()), db, p
		}
		// returns waits up to bound for a call that the silence may have
		// stuck in the driver. If the call is stuck, it closes the proxy,
		// which unsticks it, and records the issue.
		returns := func(t *testing.T, issues *faultIssues, ch <-chan faultResult, bound time.Duration, p *tcpproxy.Proxy, what string) faultResult {
			t.Helper()
			select {
			case r := <-ch:
				issues.check(faultIssueSilentCall, false, "")
				return r
			case <-time.After(bound):
			}
			p.Close()
			r := faultWithin(t, ch, 10*time.Second, what+" after the proxy closed")
			issues.check(faultIssueSilentCall, true, fmt.Sprintf(
				"%s did not return within %v of a silent network; it returned (%v) only when the proxy closed the connection", what, bound, r.err))
			return r
		}

		t.Run("Unlock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			mu, db, p := open(t)
			require.NoError(t, mu.Lock(t.Context()))
			p.Blackhole()
			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			r := returns(t, issues, faultGo(func() error { return mu.Unlock(ctx) }), deadline+slack, p, "Unlock")
			faultFigure(t, "bounded", s.name, "silent-network-unlock", r.at.Sub(start))
			t.Logf("Unlock returned: %v", r.err)
			assert.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
			// The unlock never reached the server: the lock is freed when
			// the server ends the idle session.
			waitRows(t, direct, mu.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-unlock", time.Since(start))
			p.Close()
			noConnsInUse(t, db)
			issues.done()
		})

		t.Run("WithLock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			mu, db, p := open(t)
			var start time.Time
			r := returns(t, issues, faultGo(func() error {
				return mu.WithLock(t.Context(), func(context.Context) error {
					p.Blackhole()
					start = time.Now()
					return nil
				})
			}), timeout+slack, p, "WithLock's release")
			faultFigure(t, "bounded", s.name, "silent-network-withlock", r.at.Sub(start))
			t.Logf("WithLock returned: %v", r.err)
			assert.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
			waitRows(t, direct, mu.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-withlock", time.Since(start))
			p.Close()
			noConnsInUse(t, db)
			issues.done()
		})

		t.Run("Lock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			holder := sqllock.New(direct).Mutex(t.Name())
			require.NoError(t, holder.Lock(t.Context()))
			mu, db, p := open(t)
			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), 2*deadline)
			defer cancel()
			waited := faultGo(func() error { return mu.Lock(ctx) })
			waitRows(t, direct, holder.Key(), 1, 1)
			p.Blackhole()
			r := returns(t, issues, waited, 2*deadline+slack, p, "Lock")
			faultFigure(t, "bounded", s.name, "silent-network-lock", r.at.Sub(start))
			t.Logf("Lock returned: %v", r.err)
			require.ErrorIs(t, r.err, context.DeadlineExceeded)
			// The waiting backend does not learn that its client gave up:
			// when the holder lets go it is granted the lock, answers into
			// the void, and holds it, idle, until idle_session_timeout.
			released := time.Now()
			require.NoError(t, holder.Unlock(t.Context()))
			waitRows(t, direct, holder.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-lock", time.Since(released))
			p.Close()
			noConnsInUse(t, db)
			issues.done()
		})
	})
}

// TestFaultLockOrderInversion runs the classic lock-order inversion: A
// holds k1 and waits for k2 while B holds k2 and waits for k1.
//
// With sqllock, every lock is a session of its own, so the server's wait-for
// graph has no cycle: A's k1 session and B's k2 session are idle, not
// waiting, and PostgreSQL's deadlock detector never fires, however long
// deadlock_timeout runs. The deadlock lives in the application; only a
// context deadline ends it. For contrast, the server does detect the same
// inversion (SQLSTATE 40P01) when each side holds and waits in one session:
// with transaction-scoped locks (Transactions: the victim gets ErrDeadlock,
// and the server's abort frees its locks), and with hand-written session
// locks in one session (OneSession: the victim keeps what it held).
func TestFaultLockOrderInversion(t *testing.T) {
	// The server looks for deadlocks after 100ms of waiting, ten times
	// sooner than by default: the waits below give it many chances.
	const deadlockTimeout = 100 * time.Millisecond
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		dsn, _ := faultDSN(t, pgtest.DSN(t), "", "deadlock_timeout=100")
		db := s.open(t, dsn)

		t.Run("Mutexes", func(t *testing.T) {
			const deadline = 5 * deadlockTimeout
			l := sqllock.New(db)
			a1, a2 := l.Mutex(t.Name()+"/k1"), l.Mutex(t.Name()+"/k2")
			b2, b1 := l.Mutex(t.Name()+"/k2"), l.Mutex(t.Name()+"/k1")
			require.NoError(t, a1.Lock(t.Context()))
			require.NoError(t, b2.Lock(t.Context()))

			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			aWaited := faultGo(func() error { return a2.Lock(ctx) })
			bWaited := faultGo(func() error { return b1.Lock(t.Context()) }) // no deadline of its own
			waitRows(t, db, a1.Key(), 1, 1)
			waitRows(t, db, b2.Key(), 1, 1)

			r := faultWithin(t, aWaited, deadline+10*time.Second, "A's Lock")
			faultFigure(t, "bounded", s.name, "inversion", r.at.Sub(start))
			t.Logf("A's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
			require.ErrorIs(t, r.err, context.DeadlineExceeded, "the deadline, not the server, ends the wait")
			assert.NotEqual(t, "40P01", faultSQLState(r.err), "no deadlock is reported")
			select {
			case r := <-bWaited:
				t.Fatalf("B's Lock returned while A holds k1: %v", r.err)
			default: // B waited as long, deadlock_timeout 5 times over, unreported
			}

			// A backs off: B gets k1.
			released := time.Now()
			require.NoError(t, a1.Unlock(t.Context()))
			r = faultWithin(t, bWaited, 10*time.Second, "B's Lock")
			require.NoError(t, r.err)
			faultFigure(t, "acquired", s.name, "inversion", r.at.Sub(released))
			require.NoError(t, b1.Unlock(t.Context()))
			require.NoError(t, b2.Unlock(t.Context()))
			require.ErrorIs(t, a2.Unlock(t.Context()), sqllock.ErrNotHeld)
			// A's abandoned wait for k2 may linger in the server (pgx closes
			// the connection without a cancel request) until it is granted
			// and finds its client gone.
			waitRows(t, db, a1.Key(), 0, 0)
			waitRows(t, db, b2.Key(), 0, 0)
			noConnsInUse(t, db)
		})

		t.Run("Transactions", func(t *testing.T) {
			l := sqllock.New(db)
			m1, m2 := l.Mutex(t.Name()+"/k1"), l.Mutex(t.Name()+"/k2")
			begin := func() *sql.Tx {
				tx, err := db.BeginTx(t.Context(), nil)
				require.NoError(t, err)
				t.Cleanup(func() { _ = tx.Rollback() })
				return tx
			}
			txA, txB := begin(), begin()
			require.NoError(t, m1.LockTx(t.Context(), txA))
			require.NoError(t, m2.LockTx(t.Context(), txB))

			start := time.Now()
			aWaited := faultGo(func() error { return m2.LockTx(t.Context(), txA) })
			bWaited := faultGo(func() error { return m1.LockTx(t.Context(), txB) })
			// The server aborts the victim's transaction and frees its locks
			// at once: the survivor gets in before the victim rolls back,
			// and may hear first.
			ra := faultWithin(t, aWaited, 10*time.Second, "A's LockTx")
			rb := faultWithin(t, bWaited, 10*time.Second, "B's LockTx")
			victim, survivor, rv, rs := txA, txB, ra, rb
			if ra.err == nil {
				victim, survivor, rv, rs = txB, txA, rb, ra
			}
			faultFigure(t, "detected", s.name, "deadlock-tx", rv.at.Sub(start))
			t.Logf("victim's error (SQLSTATE %q): %v", faultSQLState(rv.err), rv.err)
			require.ErrorIs(t, rv.err, sqllock.ErrDeadlock)
			require.Equal(t, "40P01", faultSQLState(rv.err))
			require.NoError(t, rs.err, "exactly one victim")
			faultFigure(t, "acquired", s.name, "deadlock-tx", rs.at.Sub(start))
			require.NoError(t, victim.Rollback())
			require.NoError(t, survivor.Commit())
			waitRows(t, db, m1.Key(), 0, 0)
			waitRows(t, db, m2.Key(), 0, 0)
		})

		t.Run("OneSession", func(t *testing.T) {
			k1 := keyspace.SHA256Int64.Key(t.Name() + "/k1")
			k2 := keyspace.SHA256Int64.Key(t.Name() + "/k2")
			n1, _ := k1.Int64()
			n2, _ := k2.Int64()
			lock := func(c *sql.Conn, n int64) error {
				_, err := c.ExecContext(t.Context(), "SELECT pg_advisory_lock($1)", n)
				return err
			}
			unlock := func(c *sql.Conn, n int64) {
				t.Helper()
				var ok bool
				require.NoError(t, c.QueryRowContext(t.Context(), "SELECT pg_advisory_unlock($1)", n).Scan(&ok))
				require.True(t, ok, "pg_advisory_unlock(%d)", n)
			}
			conn := func() *sql.Conn {
				c, err := db.Conn(t.Context())
				require.NoError(t, err)
				t.Cleanup(func() { c.Close() })
				return c
			}
			a, b := conn(), conn()
			require.NoError(t, lock(a, n1))
			require.NoError(t, lock(b, n2))

			start := time.Now()
			aWaited := faultGo(func() error { return lock(a, n2) })
			bWaited := faultGo(func() error { return lock(b, n1) })
			var victim, survivor *sql.Conn
			var victimFirst, survivorFirst, survivorSecond int64
			var r faultResult
			var survivorWaited <-chan faultResult
			select {
			case r = <-aWaited:
				victim, survivor, survivorWaited = a, b, bWaited
				victimFirst, survivorFirst, survivorSecond = n1, n2, n1
			case r = <-bWaited:
				victim, survivor, survivorWaited = b, a, aWaited
				victimFirst, survivorFirst, survivorSecond = n2, n1, n2
			case <-time.After(10 * time.Second):
				t.Fatal("the server reported no deadlock within 10s")
			}
			faultFigure(t, "detected", s.name, "deadlock-one-session", r.at.Sub(start))
			t.Logf("victim's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
			require.Equal(t, "40P01", faultSQLState(r.err), "deadlock detected")

			// The error ends the victim's wait, not its session: it still
			// holds its first lock, and the survivor still waits for it.
			key := keyspace.Int64(victimFirst)
			waitRows(t, db, key, 1, 1)
			unlock(victim, victimFirst)
			r = faultWithin(t, survivorWaited, 10*time.Second, "survivor's lock")
			require.NoError(t, r.err)
			unlock(survivor, survivorFirst)
			unlock(survivor, survivorSecond)
			waitRows(t, db, k1, 0, 0)
			waitRows(t, db, k2, 0, 0)
		})
	})
}

package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

func newFake(t *testing.T, query func(ctx context.Context, q string) ([]driver.Value, error), opts ...Option) (*Locker, *fakedriver.Connector) {
	c := &fakedriver.Connector{Query: query}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return New(db, append([]Option{withPlaceholders(false)}, opts...)...), c
}

// A grant that arrives after the context ended is undone: the caller
// holds nothing, so the lock is released on its connection, which goes
// back to the pool. If that release is not confirmed, the session is
// ended instead, and looked for on the server.
func TestFakeGrantRacingCancelUndone(t *testing.T) {
	for _, released := range []bool{true, false} {
		ctx, cancel := context.WithCancel(t.Context())
		l, c, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
			if strings.HasPrefix(q, "SELECT 1 WHERE pg_advisory_unlock") {
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
			assert.Equal(t, "SELECT 1 WHERE pg_advisory_unlock(42)", qs[len(qs)-1], "the grant is undone")
			// A cancel request the driver sent may still land on the
			// session's next statement: the connection is not reused.
			assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
			assert.Equal(t, 0, l.db.Stats().Idle)
		} else {
			assert.True(t, qs[len(qs)-1] == sqltext.LookSQL, "the session is looked for: %q", qs)
			assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
		}
	}
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
	}, WithKeepAlive(time.Millisecond, 20*time.Millisecond))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	select {
	case <-mu.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the hung probe was not declared a loss")
	}
	require.ErrorIs(t, mu.Err(), ErrLockLost)
	require.ErrorIs(t, mu.Err(), ErrNoAnswer)
	require.ErrorContains(t, mu.Err(), "(20ms, the keep-alive timeout)")
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrLockLost)
	assert.Equal(t, int32(0), c.Closed.Load(), "the connection stays with the hung driver call")
	close(unblock)
	require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond,
		"once the driver returns, the connection is discarded")
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
				if isLock || (!tc.serverAnswer && q == sqltext.LookSQL) {
					<-unblock // ignores ctx
				}
				return answerAs(q, 7), nil
			}, WithKeepAlive(0, 0))
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := l.MutexKey(keyspace.Int64(42)).Lock(ctx)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			if tc.serverAnswer {
				require.NotErrorIs(t, err, ErrNotReleased)
			} else {
				require.ErrorIs(t, err, ErrNotReleased)
			}
			assert.Less(t, time.Since(start), abandonGrace+settle.Bound+time.Second)
			close(unblock)
			require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond)
		})
	}
}

// A pooled connection whose session the server ended fails its statement
// with driver.ErrBadConn; the lock is taken on another connection.
func TestFakeDeadPooledSessionRetried(t *testing.T) {
	var calls atomic.Int32
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if calls.Add(1) == 1 {
			return nil, driver.ErrBadConn
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(0, 0))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	assert.Equal(t, int32(3), calls.Load(), "a failed session check, then a check and a lock")
	assert.Equal(t, int32(1), c.Closed.Load(), "the dead connection is discarded")
}

// A database that is not PostgreSQL: its driver does not understand the
// SQL. The error names the lock and wraps the driver's, and no connection
// stays in use.
func TestFakeNotPostgres(t *testing.T) {
	syntax := errors.New(`near "FROM": syntax error`)
	l, c := newFake(t, func(context.Context, string) ([]driver.Value, error) { return nil, syntax }, WithKeepAlive(0, 0))
	mu := l.Mutex("reports")
	err := mu.Lock(t.Context())
	require.ErrorIs(t, err, syntax)
	assert.Contains(t, err.Error(), `lock "reports" `+mu.Key().String())
	assert.Equal(t, 0, l.db.Stats().InUse)
	assert.Equal(t, int32(1), c.Closed.Load(), "a connection in an unknown state is discarded")
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
		case strings.HasPrefix(q, "SELECT 1 WHERE pg_advisory_unlock("):
			return []driver.Value{true}, nil
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(interval, time.Second))
	mus := make([]*Mutex, held)
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
func lockWithProbeInFlight(t *testing.T, timeout time.Duration) (mu *Mutex, c *fakedriver.Connector, unblock chan struct{}) {
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
	}, WithKeepAlive(time.Millisecond, timeout))
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
	require.ErrorIs(t, mu.Unlock(ctx), ErrLockLost, "the probe got no answer")
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
		case strings.HasPrefix(q, "SELECT 1 WHERE pg_advisory_unlock("):
			return []driver.Value{true}, nil
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(time.Millisecond, time.Second))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	<-mu.Done()
	require.ErrorIs(t, mu.Err(), ErrLockLost)
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Err(), "Err describes the lock held now")
	select {
	case <-mu.Done():
		t.Fatal("Done is closed while a lock is held")
	default:
	}
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrLockLost, "Unlock reports the oldest, lost, lock first")
	require.NoError(t, mu.Unlock(t.Context()))
}

// An observer may call Unlock when told of a loss.
func TestFakeObserverUnlocksOnLoss(t *testing.T) {
	var mu *Mutex
	unlocked := make(chan error, 1)
	obs := ObserverFunc(func(e Event) {
		if e.Kind == EventLost {
			unlocked <- mu.Unlock(context.Background())
		}
	})
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			return nil, errors.New("server closed the connection")
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(time.Millisecond, time.Second), WithObserver(obs))
	mu = l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	select {
	case err := <-unlocked:
		require.ErrorIs(t, err, ErrLockLost)
	case <-time.After(5 * time.Second):
		t.Fatal("Unlock from an observer deadlocked")
	}
}

// An answer that makes no sense fails the call, naming it, and the
// connection is discarded: a session check's (an integer), which took
// nothing, and a guarded lock statement's (a boolean), which leaves the
// lock state unknown, so the session is also looked for on the server.
func TestFakeOddLockAnswerDiscards(t *testing.T) {
	for _, tc := range []struct {
		answer driver.Value
		want   string
	}{
		{nil, "answered <nil> <nil>, not an integer"},
		{true, "answered bool true, not an integer"},
		{[]byte("x"), "not an integer"},
	} {
		l, c := newFake(t, func(context.Context, string) ([]driver.Value, error) {
			return []driver.Value{tc.answer}, nil
		}, WithKeepAlive(0, 0))
		mu := l.MutexKey(keyspace.Int64(42))
		ok, err := mu.TryLock(t.Context())
		assert.False(t, ok)
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorContains(t, err, "the session is discarded")
		assert.Equal(t, int32(1), c.Closed.Load(), "answer %v: the connection is discarded", tc.answer)
	}
	for _, tc := range []struct {
		answer driver.Value
		want   string
	}{
		{nil, "answered <nil> <nil>, not a boolean"},
		{int64(1), "answered int64 1, not a boolean"},
	} {
		l, c, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
			if strings.Contains(q, " WHERE pg_backend_pid() = ") {
				return []driver.Value{tc.answer}, nil
			}
			return answerAs(q, 7), nil
		})
		mu := l.MutexKey(keyspace.Int64(42))
		err := mu.Lock(t.Context())
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorContains(t, err, "so it is discarded")
		assert.Equal(t, int32(1), c.Closed.Load(), "answer %v: the connection is discarded", tc.answer)
		qs := sent()
		assert.True(t, qs[len(qs)-1] == sqltext.LookSQL, "the session is looked for: %q", qs)
	}
}

// answerAs answers statement q as a server whose session has backend pid
// pid would, when it grants every lock: the verify statement with the pid,
// the guarded form true if pid is the one it names, else with no row;
// unlocks as released, the keep-alive with pid, and the look for a
// session to end with no row (it is gone).
func answerAs(q string, pid int64) []driver.Value {
	switch {
	case strings.HasPrefix(q, "SELECT 1 WHERE pg_advisory_unlock"):
		return []driver.Value{true}
	case q == sqltext.ProbeSQL:
		return []driver.Value{pid}
	case q == sqltext.LookSQL, strings.HasPrefix(q, "SELECT pg_terminate_backend"):
		return nil
	case strings.Contains(q, " WHERE pg_backend_pid() = "):
		if strings.HasSuffix(q, " = "+strconv.FormatInt(pid, 10)) {
			return []driver.Value{true}
		}
		return nil
	}
	return []driver.Value{pid << sqltext.AnswerShift}
}

// The first lock on a connection verifies its session, and every lock
// runs the guarded form, which names that session's pid. When the
// connection turns out to lead to another session, the guarded form takes
// nothing, and the new session is verified and the lock taken there, on
// the same connection.
func TestFakeGuardedForm(t *testing.T) {
	var pid atomic.Int64
	pid.Store(7)
	l, c, sentFn := newRecordingFake(t, func(q string) ([]driver.Value, error) {
		return answerAs(q, pid.Load()), nil
	})
	m := l.MutexKey(keyspace.Int64(42))
	cycle := func() {
		t.Helper()
		require.NoError(t, m.Lock(t.Context()))
		require.NoError(t, m.Unlock(t.Context()))
	}
	verify := func(q string) bool { return strings.HasPrefix(q, "SELECT pg_backend_pid()::int8*32 + CASE") }
	cycle()
	cycle()
	pid.Store(8) // a pooler moved the connection to another session
	cycle()
	cycle()
	ok, err := m.TryLock(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, m.Unlock(t.Context()))
	sent := sentFn()
	require.Len(t, sent, 13)
	assert.True(t, verify(sent[0]), "first lock: %s", sent[0])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[1])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[3], "the second lock needs no check")
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[5], "the guarded form finds another session")
	assert.True(t, verify(sent[6]), "then the session check runs: %s", sent[6])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 8", sent[7])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 8", sent[9])
	assert.Equal(t, "SELECT pg_try_advisory_lock(42) WHERE pg_backend_pid() = 8", sent[11], "a try uses the session the lock verified")
	assert.Equal(t, int32(0), c.Closed.Load(), "no connection was discarded")
	// Another Mutex of the Locker uses what the first verified.
	ok, err = l.MutexKey(keyspace.Int64(43)).TryLock(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	sent = sentFn()
	assert.Equal(t, "SELECT pg_try_advisory_lock(43) WHERE pg_backend_pid() = 8", sent[len(sent)-1])
}

// A guarded try that finds the lock taken is not an error, and leaves the
// connection in the pool.
func TestFakeGuardedTryContended(t *testing.T) {
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if strings.HasPrefix(q, "SELECT pg_try_advisory_lock(") {
			return []driver.Value{false}, nil
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(0, 0))
	m := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, m.Lock(t.Context()))
	require.NoError(t, m.Unlock(t.Context()))
	ok, err := m.TryLock(t.Context())
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Equal(t, int32(0), c.Closed.Load())
	assert.Equal(t, 0, l.db.Stats().InUse)
}

func TestLockAnswer(t *testing.T) {
	for _, v := range []any{int64(7<<sqltext.AnswerShift | sqltext.FlagGranted), []byte("225"), "225"} {
		n, err := lockAnswer(v)
		assert.NoError(t, err)
		assert.Equal(t, int64(225), n, "answer %#v", v)
	}
}

// A connection moved to a session that the check refuses leaves no
// guarded form behind: the next lock on it checks at once, in one round
// trip, rather than trying the stale guard first.
func TestFakeRefusedMoveForgetsGuard(t *testing.T) {
	var standby atomic.Bool
	l, _, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
		if standby.Load() {
			if strings.Contains(q, " WHERE pg_backend_pid() = ") {
				return nil, nil // another session
			}
			return []driver.Value{int64(8<<sqltext.AnswerShift | sqltext.FlagStandby)}, nil
		}
		return answerAs(q, 7), nil
	})
	m := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, m.Lock(t.Context()))
	require.NoError(t, m.Unlock(t.Context()))
	standby.Store(true)
	require.ErrorIs(t, m.Lock(t.Context()), ErrStandby)
	n := len(sent())
	require.ErrorIs(t, m.Lock(t.Context()), ErrStandby)
	require.Len(t, sent(), n+1, "one statement for the next lock")
	assert.True(t, strings.HasPrefix(sent()[n], "SELECT pg_backend_pid()::int8*32 + CASE"), "the session check: %s", sent()[n])
}

// newRecordingFake is newFake, with the keep-alive off, over a driver that
// answers each statement with answer and records it; sent returns the
// statements so far, in order.
func newRecordingFake(t *testing.T, answer func(q string) ([]driver.Value, error)) (l *Locker, c *fakedriver.Connector, sent func() []string) {
	var mu sync.Mutex
	var qs []string
	l, c = newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		mu.Lock()
		qs = append(qs, q)
		mu.Unlock()
		return answer(q)
	}, WithKeepAlive(0, 0))
	return l, c, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(qs)
	}
}

// A lock statement on a shared session (WithSessions) that the driver
// never returns from is bounded: the call fails, every lock the session
// carries is reported lost, and neither waits for the stuck driver call,
// whose goroutine ends the session once the driver returns.
func TestFakeSharedSessionStuckStatement(t *testing.T) {
	unblock := make(chan struct{})
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if strings.Contains(q, "(43)") {
			<-unblock // ignores ctx
		}
		return answerAs(q, 7), nil
	}, WithSessions(1), WithKeepAlive(0, 50*time.Millisecond))
	held := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, held.Lock(t.Context()))
	start := time.Now()
	err := l.MutexKey(keyspace.Int64(43)).Lock(t.Context())
	require.Error(t, err)
	assert.Less(t, time.Since(start), abandonGrace+settle.Bound+2*time.Second)
	select {
	case <-held.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the lock on the stuck session was not reported lost")
	}
	require.ErrorIs(t, held.Err(), ErrLockLost)
	require.ErrorIs(t, held.Unlock(t.Context()), ErrLockLost)
	close(unblock)
	require.Eventually(t, func() bool { return c.Closed.Load() == 1 }, 5*time.Second, time.Millisecond,
		"once the driver returns, the connection is discarded")
}

// newCloseInterruptedFake returns a Locker over a fake driver whose
// statements are interrupted by closing their connection, as lib/pq's are.
// A statement stuck says is stuck: it ignores its context and returns once
// its connection is closed, with net.ErrClosed, or with its answer when
// answered. run calls f, which meets the stuck statement, and returns its
// error; if f has not returned within 5s, what (the bound that should
// have interrupted the statement) failed, and run unsticks it and fails
// the test.
func newCloseInterruptedFake(t *testing.T, stuck func(q string) bool, answered bool, opts ...Option) (*Locker, *fakedriver.Connector, func(what string, f func() error) error) {
	t.Helper()
	closed := make(chan struct{})
	var once sync.Once
	unstick := func() { once.Do(func() { close(closed) }) }
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if stuck(q) {
			<-closed
			if !answered {
				return nil, net.ErrClosed
			}
		}
		return answerAs(q, 7), nil
	}, opts...)
	c.OnClose = unstick
	l.interrupt.Store(drv.InterruptClose) // as for lib/pq
	run := func(what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			unstick()
			t.Fatalf("%s did not interrupt the stuck statement", what)
			return nil
		}
	}
	return l, c, run
}

// Where the driver can be interrupted (pgx, lib/pq), a statement on a
// shared session runs in the caller's goroutine, and the session's
// watchdog interrupts it past the keep-alive timeout (here by closing the
// connection, as for lib/pq): the call fails within its bound, every lock
// the session carries is reported lost, and nothing waits for the driver.
// A statement that gets its answer as it is interrupted fails all the
// same: its connection is closed.
func TestFakeSharedSessionWatchdog(t *testing.T) {
	for _, answered := range []bool{false, true} {
		t.Run(fmt.Sprintf("answered=%v", answered), func(t *testing.T) {
			l, _, run := newCloseInterruptedFake(t, func(q string) bool { return strings.Contains(q, "(43)") }, answered,
				WithSessions(1), WithKeepAlive(0, 50*time.Millisecond))
			held := l.MutexKey(keyspace.Int64(42))
			require.NoError(t, held.Lock(t.Context()))
			start := time.Now()
			err := run("the watchdog", func() error { return l.MutexKey(keyspace.Int64(43)).Lock(t.Context()) })
			require.ErrorIs(t, err, ErrNoAnswer)
			require.ErrorContains(t, err, "(50ms, the keep-alive timeout): the statement was interrupted")
			assert.Less(t, time.Since(start), 50*time.Millisecond+settle.Bound+2*time.Second)
			select {
			case <-held.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the lock on the interrupted session was not reported lost")
			}
			require.ErrorIs(t, held.Err(), ErrLockLost)
			require.ErrorIs(t, held.Unlock(t.Context()), ErrLockLost)
			assert.Zero(t, l.db.Stats().InUse, "the connection is not in use")
		})
	}
}

// The watchdog's entries do not add probes: with an interval longer than
// the timeout, statements on a shared session pull its scheduler entry
// forward, and the entry that fires early waits for the probe's time
// instead of probing.
func TestFakeSharedSessionWatchAddsNoProbes(t *testing.T) {
	var probes atomic.Int32
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			probes.Add(1)
		}
		return answerAs(q, 7), nil
	}, WithSessions(1), WithKeepAlive(time.Minute, 250*time.Millisecond))
	l.interrupt.Store(drv.InterruptClose) // as for lib/pq
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

// A release whose context never ends, on a driver whose statements are
// interrupted by closing the connection (lib/pq), runs its unlock in the
// caller's goroutine; at the bound the connection is closed, the stuck
// unlock returns, and the session is ended: Unlock returns about one bound
// after it began, and the connection is discarded.
func TestFakeReleaseBoundByClose(t *testing.T) {
	const bound = 100 * time.Millisecond
	l, c, run := newCloseInterruptedFake(t, func(q string) bool { return strings.Contains(q, "advisory_unlock") }, false,
		WithKeepAlive(0, bound))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))

	start := time.Now()
	err := run("the release bound", func() error { return mu.Unlock(context.Background()) })
	took := time.Since(start)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, took, bound, "Unlock returned before its bound")
	assert.Less(t, took, bound+settle.Bound+2*time.Second, "Unlock outlived its bound")
	assert.NotZero(t, c.Closed.Load(), "the connection is discarded")
	assert.Zero(t, l.db.Stats().InUse)
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrNotHeld)
}

// A server whose advisory-lock functions are stubs (CockroachDB: they
// answer true and lock nothing) is refused at the first lock, in both
// modes, before any lock statement runs: two holders would both "hold" the
// lock. The fake answers the verify statement as CockroachDB does, whose
// version() starts with "CockroachDB".
func TestFakeStubAdvisoryLocksRefused(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithSessions(1)}} {
		var locks atomic.Int32
		l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
			switch {
			case strings.Contains(q, "version() LIKE 'CockroachDB%' THEN 8"):
				return []driver.Value{int64(7)<<sqltext.AnswerShift | sqltext.FlagStub}, nil
			case strings.Contains(q, "pg_advisory_lock"), strings.Contains(q, "pg_try_advisory_lock"):
				locks.Add(1) // a stub: granted, locking nothing
				return []driver.Value{true}, nil
			}
			return answerAs(q, 7), nil
		}, opts...)
		m := l.MutexKey(keyspace.Int64(42))
		err := m.Lock(t.Context())
		require.ErrorIs(t, err, ErrStubLocks)
		require.ErrorContains(t, err, "CockroachDB")
		ok, err := m.TryLock(t.Context())
		require.ErrorIs(t, err, ErrStubLocks)
		require.False(t, ok)
		require.Zero(t, locks.Load(), "no lock statement ran")
		require.ErrorIs(t, m.Unlock(t.Context()), ErrNotHeld)
	}
}

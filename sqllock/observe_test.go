package sqllock_test

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

type recorder struct {
	mu     sync.Mutex
	events []sqllock.Event
}

func (r *recorder) Observe(e sqllock.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) kinds() []sqllock.EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []sqllock.EventKind
	for _, e := range r.events {
		ks = append(ks, e.Kind)
	}
	return ks
}

func TestObserver(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		rec := &recorder{}
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		l := sqllock.New(db, fastLoss, sqllock.WithObserver(rec), sqllock.WithLogger(logger))
		a, b := l.Mutex(t.Name()), l.Mutex(t.Name())

		require.NoError(t, a.Lock(t.Context()))
		ok, err := b.TryLock(t.Context())
		require.NoError(t, err)
		require.False(t, ok)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		require.Error(t, b.Lock(ctx))
		cancel()
		require.NoError(t, a.Unlock(t.Context()))

		require.NoError(t, a.Lock(t.Context()))
		terminate(t, db, backendOf(t, db, a.Key()))
		<-a.Done()
		require.ErrorIs(t, a.Unlock(t.Context()), sqllock.ErrLockLost)

		assert.Equal(t, []sqllock.EventKind{
			sqllock.EventAcquired, sqllock.EventContended, sqllock.EventFailed, sqllock.EventReleased,
			sqllock.EventAcquired, sqllock.EventLost,
		}, rec.kinds(), "a loss is reported once, by whoever sees it first")
		rec.mu.Lock()
		for _, e := range rec.events {
			assert.Equal(t, t.Name(), e.Name)
			assert.Equal(t, a.Key(), e.Key)
		}
		assert.Positive(t, rec.events[3].Held)
		assert.ErrorIs(t, rec.events[5].Err, sqllock.ErrLockLost)
		rec.mu.Unlock()
		assert.Contains(t, logs.String(), "sqllock: lock acquired")
		assert.Contains(t, logs.String(), "level=WARN msg=\"sqllock: lock lost\"")
	})
}

// attemptRecorder is an AttemptObserver that records each attempt with
// the value of ctxKey in its context, and that attempt's events apart.
type attemptRecorder struct {
	recorder // events that came to Observe: none, unless nilFor says so
	nilFor   func(sqllock.Attempt) bool

	mu       sync.Mutex
	attempts []*recordedAttempt
}

type ctxKey struct{}

type recordedAttempt struct {
	recorder
	a   sqllock.Attempt
	val any
}

func (r *attemptRecorder) ObserveAttempt(ctx context.Context, a sqllock.Attempt) sqllock.Observer {
	if r.nilFor != nil && r.nilFor(a) {
		return nil
	}
	ra := &recordedAttempt{a: a, val: ctx.Value(ctxKey{})}
	r.mu.Lock()
	r.attempts = append(r.attempts, ra)
	r.mu.Unlock()
	return ra
}

func (r *attemptRecorder) all() []*recordedAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.attempts)
}

// An AttemptObserver gets each attempt with the caller's context, and the
// attempt's events in order through the observer it returned; a plain
// Observer beside it still gets every event.
func TestAttemptObserver(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		plain, ar := &recorder{}, &attemptRecorder{}
		l := sqllock.New(db, fastLoss, sqllock.WithObserver(plain), sqllock.WithObserver(ar))
		a, b := l.Mutex(t.Name()), l.Mutex(t.Name())
		ctx := func(v string) context.Context { return context.WithValue(t.Context(), ctxKey{}, v) }

		require.NoError(t, a.Lock(ctx("lock")))
		ok, err := b.TryLockShared(ctx("try"))
		require.NoError(t, err)
		require.False(t, ok)
		wctx, cancel := context.WithTimeout(ctx("wait"), 20*time.Millisecond)
		require.Error(t, b.Lock(wctx))
		cancel()
		require.NoError(t, a.Unlock(t.Context()))
		require.NoError(t, a.WithLock(ctx("withlock"), func(context.Context) error { return nil }))
		require.NoError(t, a.Lock(ctx("lost")))
		terminate(t, db, backendOf(t, db, a.Key()))
		<-a.Done()
		require.ErrorIs(t, a.Unlock(t.Context()), sqllock.ErrLockLost)

		E := func(ks ...sqllock.EventKind) []sqllock.EventKind { return ks }
		want := []struct {
			val   string
			try   bool
			sh    bool
			kinds []sqllock.EventKind
		}{
			{"lock", false, false, E(sqllock.EventAcquired, sqllock.EventReleased)},
			{"try", true, true, E(sqllock.EventContended)},
			{"wait", false, false, E(sqllock.EventFailed)},
			{"withlock", false, false, E(sqllock.EventAcquired, sqllock.EventReleased)},
			{"lost", false, false, E(sqllock.EventAcquired, sqllock.EventLost)},
		}
		got := ar.all()
		require.Len(t, got, len(want))
		for i, w := range want {
			assert.Equal(t, w.val, got[i].val, "attempt %d gets the caller's context", i)
			assert.Equal(t, sqllock.Attempt{Name: t.Name(), Key: a.Key(), Shared: w.sh, Try: w.try}, got[i].a)
			assert.Equal(t, w.kinds, got[i].kinds(), "attempt %q", w.val)
		}
		assert.Empty(t, ar.kinds(), "an attempt's events go to its own observer")
		assert.Equal(t, E(sqllock.EventAcquired, sqllock.EventContended, sqllock.EventFailed, sqllock.EventReleased,
			sqllock.EventAcquired, sqllock.EventReleased, sqllock.EventAcquired, sqllock.EventLost),
			plain.kinds(), "a plain Observer beside it gets every event")
	})
}

// An AttemptObserver that returns nil for an attempt gets its events in
// Observe.
func TestFakeAttemptObserverNil(t *testing.T) {
	ar := &attemptRecorder{nilFor: func(a sqllock.Attempt) bool { return !a.Try }}
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) { return answerAs(q, 7), nil },
		sqllock.WithKeepAlive(0, 0), sqllock.WithObserver(ar))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
	ok, err := mu.TryLock(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, mu.Unlock(t.Context()))
	assert.Equal(t, []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventReleased}, ar.kinds())
	require.Len(t, ar.all(), 1)
	assert.Equal(t, []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventReleased}, ar.all()[0].kinds())
}

// A loss the keep-alive sees at once, perhaps before Lock has returned,
// still reaches the attempt after its EventAcquired, once.
func TestFakeAttemptObserverLossOrder(t *testing.T) {
	for range 20 {
		ar := &attemptRecorder{}
		l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
			if q == sqltext.ProbeSQL {
				return nil, errors.New("server closed the connection")
			}
			return answerAs(q, 7), nil
		}, sqllock.WithKeepAlive(time.Nanosecond, time.Second), sqllock.WithObserver(ar))
		mu := l.MutexKey(keyspace.Int64(42))
		require.NoError(t, mu.Lock(t.Context()))
		<-mu.Done()
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
		require.Len(t, ar.all(), 1)
		assert.Equal(t, []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventLost}, ar.all()[0].kinds())
	}
}

// A release that cannot be confirmed (the unlock failed, and the session
// could not be ended) is still the end of the hold for observers:
// EventReleased, with Unlock's error. The session layer does not report
// it; sqllock used to leave the hold open.
func TestMockUnconfirmedReleaseObserved(t *testing.T) {
	rec := &recorder{}
	l, mock := newMock(t, sqllock.WithObserver(rec))
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnError(errors.New("protocol confusion"))
	mock.ExpectClose()
	mock.ExpectQuery(lookSQL(7)).WithoutArgs().
		WillReturnRows(sqlmock.NewRows([]string{"state", "exists", "self"}).AddRow("idle", true, false))
	mock.ExpectQuery(terminateSQL(7)).WithoutArgs().WillReturnError(errors.New("permission denied to terminate process"))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	err := mu.Unlock(t.Context())
	require.ErrorIs(t, err, sqllock.ErrNotReleased)
	require.Equal(t, []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventReleased}, rec.kinds())
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.ErrorIs(t, rec.events[1].Err, sqllock.ErrNotReleased)
}

// holdObserver is an AttemptObserver whose attempts are HoldObservers:
// each adds tag to the tags in the context of WithLock's function, and
// logs what it is told, in order.
type holdObserver struct {
	tag string

	mu  sync.Mutex
	log []string
}

type tagsKey struct{}

type heldAttempt struct{ h *holdObserver }

func (h *holdObserver) Observe(sqllock.Event) {}

func (h *holdObserver) ObserveAttempt(context.Context, sqllock.Attempt) sqllock.Observer {
	return heldAttempt{h}
}

func (h *holdObserver) add(s string) {
	h.mu.Lock()
	h.log = append(h.log, s)
	h.mu.Unlock()
}

// took returns the log so far, and empties it.
func (h *holdObserver) took() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	log := h.log
	h.log = nil
	return log
}

func (a heldAttempt) Observe(e sqllock.Event) { a.h.add(e.Kind.String()) }

func (a heldAttempt) HoldContext(ctx context.Context) context.Context {
	a.h.add("hold context")
	tags, _ := ctx.Value(tagsKey{}).([]string)
	return context.WithValue(ctx, tagsKey{}, append(slices.Clip(tags), a.h.tag))
}

// WithLock and its forms run fn with the context that the attempt's
// HoldObservers derive, in WithObserver's order, once the lock is granted;
// attempt observers that are not HoldObservers, and plain Observers, leave
// it alone. Lock runs no function and asks for no context.
func TestFakeHoldObserver(t *testing.T) {
	first, second := &holdObserver{tag: "first"}, &holdObserver{tag: "second"}
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) { return answerAs(q, 7), nil },
		sqllock.WithKeepAlive(0, 0), sqllock.WithObserver(first), sqllock.WithObserver(&recorder{}),
		sqllock.WithObserver(&attemptRecorder{}), sqllock.WithObserver(second))
	mu := l.MutexKey(keyspace.Int64(42))
	caller := context.WithValue(t.Context(), ctxKey{}, "caller")
	runs := map[string]func(fn func(context.Context) error) error{
		"WithLock":       func(fn func(context.Context) error) error { return mu.WithLock(caller, fn) },
		"WithLockShared": func(fn func(context.Context) error) error { return mu.WithLockShared(caller, fn) },
		"WithLock MaxWait": func(fn func(context.Context) error) error {
			return mu.WithLock(caller, fn, sqllock.MaxWait(time.Second))
		},
		"TryWithLock": func(fn func(context.Context) error) error {
			_, err := mu.TryWithLock(caller, fn)
			return err
		},
		"TryWithLockShared": func(fn func(context.Context) error) error {
			_, err := mu.TryWithLockShared(caller, fn)
			return err
		},
	}
	for name, run := range runs {
		var tags any
		var val any
		require.NoError(t, run(func(ctx context.Context) error {
			tags, val = ctx.Value(tagsKey{}), ctx.Value(ctxKey{})
			return nil
		}), name)
		assert.Equal(t, []string{"first", "second"}, tags, "%s: each HoldObserver's context, in order", name)
		assert.Equal(t, "caller", val, "%s: derived from the caller's context", name)
		for _, h := range []*holdObserver{first, second} {
			assert.Equal(t, []string{"acquired", "hold context", "released"}, h.took(), "%s, %s", name, h.tag)
		}
	}
	require.NoError(t, mu.Lock(caller))
	require.NoError(t, mu.Unlock(caller))
	assert.Equal(t, []string{"acquired", "released"}, first.took(), "Lock: no context asked for")
}

// The context a HoldObserver derives for fn still ends when the lock is
// lost, with the loss as its cause.
func TestFakeHoldObserverLoss(t *testing.T) {
	h := &holdObserver{tag: "hold"}
	l, _ := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			return nil, errors.New("server closed the connection")
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(time.Millisecond, time.Second), sqllock.WithObserver(h))
	mu := l.MutexKey(keyspace.Int64(42))
	err := mu.WithLock(t.Context(), func(ctx context.Context) error {
		assert.Equal(t, []string{"hold"}, ctx.Value(tagsKey{}))
		<-ctx.Done()
		return context.Cause(ctx)
	})
	require.ErrorIs(t, err, sqllock.ErrLockLost)
	log := h.took()
	require.NotEmpty(t, log)
	assert.Equal(t, "acquired", log[0])
	assert.ElementsMatch(t, []string{"acquired", "hold context", "lost"}, log, "the loss may come before fn's context is asked for")
}

package sqllock

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
)

// EventKind says what happened to a lock.
type EventKind uint8

const (
	// EventAcquired: a lock was granted; Event.Wait is how long it took.
	EventAcquired EventKind = iota + 1
	// EventContended: a TryLock found the lock held elsewhere.
	EventContended
	// EventFailed: a lock attempt failed (context ended, server error,
	// refused standby, a session another client uses: ErrSharedSession);
	// Event.Err says why.
	EventFailed
	// EventReleased: a held lock was released; Event.Held is how long it
	// was held. Event.Err is the unlock's error if the release could not
	// be confirmed (it wraps ErrNotReleased, say): the lock is not
	// this process's any more either way.
	EventReleased
	// EventLost: a held lock was lost (keep-alive failure, unlock that
	// found nothing); Event.Err wraps ErrLockLost and the cause.
	EventLost
)

var kindNames = [...]string{EventAcquired: "acquired", EventContended: "contended", EventFailed: "failed", EventReleased: "released", EventLost: "lost"}

// String returns "acquired", "contended", "failed", "released" or "lost".
func (k EventKind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// An Event describes one thing that happened to a lock, for logs and
// metrics.
type Event struct {
	Kind   EventKind
	Name   string        // the lock's name; empty for explicit keys
	Key    keyspace.Key  // the lock's key
	Shared bool          // shared mode
	Wait   time.Duration // EventAcquired, EventContended, EventFailed: time spent in the attempt
	Held   time.Duration // EventReleased, EventLost: time the lock was held
	Err    error         // EventFailed, EventLost

	// SessionLocks is, for EventLost, how many locks the lost session
	// carried, this one included: more than one only with WithSessions,
	// where one session's end loses every lock on it at once.
	SessionLocks int
}

// An Observer receives every Event of a Locker's locks, for example to
// count them in Prometheus or OpenTelemetry. Observe is called
// synchronously on the goroutine of the lock operation (or of the
// keep-alive, for EventLost), so it must be fast, must not block and must be
// safe for concurrent use.
type Observer interface {
	Observe(Event)
}

// An AttemptObserver is an [Observer] that also hears of each attempt to
// take a lock as it starts, with the caller's context: what a tracer
// needs to make the attempt's spans children of the caller's span (the
// module otelsqllock does so). Pass it to [WithObserver] as any Observer.
//
// Lock, TryLock, WithLock, TryWithLock and their shared forms call
// ObserveAttempt on the caller's goroutine before the attempt's first
// statement; ctx is the context that bounds the wait (WithLock's, with
// [MaxWait] if given). ObserveAttempt returns the attempt's observer, to
// which the attempt's events then go instead of to Observe: first
// EventAcquired, EventContended or EventFailed, then, for a lock acquired,
// one EventReleased or EventLost. They arrive one at a time, in that
// order, the last one possibly on another goroutine (the keep-alive's). A
// nil return sends the attempt's events to Observe. ObserveAttempt must be
// fast, must not block and must be safe for concurrent use, as Observe.
//
// The attempt's observer may also be a [HoldObserver], to give
// WithLock's function its context.
//
// A call that fails before it starts (a nil context, a Mutex with a
// sticky error) makes no attempt. Transaction-scoped locks ([Mutex.LockTx]
// and its forms) are not observed.
type AttemptObserver interface {
	Observer
	ObserveAttempt(ctx context.Context, a Attempt) Observer
}

// A HoldObserver is an attempt's observer (what
// [AttemptObserver.ObserveAttempt] returns) that also gives the function
// of [Mutex.WithLock] its context: a tracer's hold span, so that the
// spans of the work done under the lock are its children.
//
// WithLock, WithLockShared, TryWithLock and TryWithLockShared, and a
// Semaphore's WithSlot and TryWithSlot, call HoldContext once the lock is
// granted, after the attempt's
// EventAcquired, on the caller's goroutine, with the context fn would
// otherwise get; fn gets the context it returns, which must be ctx or a
// context derived from it, so that fn's context still ends when the lock
// is lost. The hold's end (EventReleased or EventLost) may be told
// meanwhile, on another goroutine. With several such observers, each
// derives from the context of the one before, in [WithObserver]'s order.
// Lock and TryLock run no function and do not call it.
type HoldObserver interface {
	Observer
	HoldContext(ctx context.Context) context.Context
}

// An Attempt describes a lock attempt as it starts, for
// [AttemptObserver].
type Attempt struct {
	Name   string       // the lock's name; empty for explicit keys
	Key    keyspace.Key // the lock's key
	Shared bool         // shared mode
	Try    bool         // TryLock or TryWithLock: no wait
}

// ObserverFunc adapts a function to an [Observer].
type ObserverFunc func(Event)

// Observe calls f(e).
func (f ObserverFunc) Observe(e Event) { f(e) }

// WithObserver sends every lock event to o. Without it (the default)
// sqllock measures nothing and the lock paths do no extra work. A nil o is
// ignored. WithObserver and [WithLogger] combine.
func WithObserver(o Observer) Option {
	return func(c *config) {
		if o != nil {
			c.observers = append(c.observers, o)
		}
	}
}

// WithLogger logs lock events to l: acquisitions (with the wait) and
// releases (with the hold time) at Debug, contention at Debug, failures at
// Info, and losses at Warn. A session of WithSessions lost with many
// locks on it logs one warning with their count and the cause, and each
// lock's loss at Debug. Off by default. A nil l is ignored.
//
// One warning is logged whatever the options: when a lock leaves no free
// connection in the pool (SetMaxOpenConns(1) with one lock held), at Warn,
// once per Locker, to l if given, else to [slog.Default].
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		return func(*config) {}
	}
	observe := WithObserver(ObserverFunc(func(e Event) {
		level := slog.LevelDebug
		switch e.Kind {
		case EventFailed:
			level = slog.LevelInfo
		case EventLost:
			level = slog.LevelWarn
			if e.SessionLocks > 1 {
				level = slog.LevelDebug // the session's warning said it
			}
		}
		ctx := context.Background()
		if !l.Enabled(ctx, level) {
			return
		}
		attrs := []slog.Attr{slog.String("lock", e.Name), slog.String("key", e.Key.String()), slog.Bool("shared", e.Shared)}
		switch e.Kind {
		case EventAcquired, EventContended, EventFailed:
			attrs = append(attrs, slog.Duration("wait", e.Wait))
		case EventReleased, EventLost:
			attrs = append(attrs, slog.Duration("held", e.Held))
		}
		if e.Err != nil {
			attrs = append(attrs, slog.String("err", e.Err.Error()))
		}
		l.LogAttrs(ctx, level, "sqllock: lock "+e.Kind.String(), attrs...)
	}))
	return func(c *config) {
		observe(c)
		c.logger = l
	}
}

// observing follows a Locker's observed lock attempts to their end. It is
// shared by the Lockers of Locker.Keyspace, as the session layer and its
// Ended hook are; nil without observers, when the lock path does nothing
// of it.
type observing struct {
	observers []Observer

	mu     sync.Mutex
	grants map[*session.Grant]*attempt // acquired, not yet ended
}

// attempt is one lock attempt: the observers its events go to, one per
// Observer of the Locker. A grant whose end came before its attempt
// was registered (a loss seen at once) has only that end, in ended.
type attempt struct {
	obs   []Observer
	own   [2]Observer // obs's array, when it is the attempt's own and this fits it
	start time.Time
	ended *Event
	hold  bool // some of obs are HoldObservers
}

func newObserving(observers []Observer) *observing {
	return &observing{observers: observers, grants: make(map[*session.Grant]*attempt)}
}

// start begins an attempt on t's lock with the caller's ctx.
func (o *observing) start(ctx context.Context, t *session.Target, shared, try bool) *attempt {
	a := &attempt{obs: o.observers}
	copied := false
	for i, ob := range o.observers {
		ao, ok := ob.(AttemptObserver)
		if !ok {
			continue
		}
		per := ao.ObserveAttempt(ctx, Attempt{Name: t.Name, Key: t.Key, Shared: shared, Try: try})
		if per == nil {
			continue
		}
		if !copied { // the Locker's list stays as it is
			a.obs, copied = append(a.own[:0], o.observers...), true
		}
		a.obs[i] = per
		if _, ok := per.(HoldObserver); ok {
			a.hold = true
		}
	}
	a.start = time.Now() // after the observers' own work
	return a
}

// acquired tells a's observers how the attempt ended: g granted, none
// (contended), or err. A granted attempt is followed to its end.
func (o *observing) acquired(a *attempt, t *session.Target, shared bool, g *session.Grant, err error) {
	e := Event{Shared: shared, Err: err}
	switch {
	case err != nil:
		e.Kind, e.Wait = EventFailed, time.Since(a.start)
	case g == nil:
		e.Kind, e.Wait = EventContended, time.Since(a.start)
	default:
		e.Kind = EventAcquired
		e.Wait = g.Acquired().Sub(a.start)
	}
	a.tell(t, e)
	if g == nil {
		return
	}
	o.mu.Lock()
	early := o.grants[g]
	if early == nil {
		o.grants[g] = a
		o.mu.Unlock()
		return
	}
	delete(o.grants, g)
	o.mu.Unlock()
	a.tell(t, *early.ended)
}

// ended tells g's attempt of g's end, from the session layer (the Ended
// hook): a release, or a loss, which may come before the attempt is
// registered (a loss seen at once); then the attempt tells it.
func (o *observing) ended(g *session.Grant, e Event) {
	o.mu.Lock()
	a := o.grants[g]
	if a == nil {
		early := e // only this end escapes
		o.grants[g] = &attempt{ended: &early}
		o.mu.Unlock()
		return
	}
	delete(o.grants, g)
	o.mu.Unlock()
	a.tell(g.Target(), e)
}

// endedUntold tells g's attempt of g's end, if no one has: after a
// release, which comes after the attempt's registration.
func (o *observing) endedUntold(g *session.Grant, e Event) {
	o.mu.Lock()
	a := o.grants[g]
	delete(o.grants, g)
	o.mu.Unlock()
	if a != nil {
		a.tell(g.Target(), e)
	}
}

// forget drops what o keeps of g, a grant no attempt registered (a
// Semaphore's internal ones), once g has ended: the session layer told o
// of its end, which o keeps for an attempt that never comes.
func (o *observing) forget(g *session.Grant) {
	o.mu.Lock()
	delete(o.grants, g)
	o.mu.Unlock()
}

// holdContext returns the context of WithLock's function, ctx as a's
// HoldObservers derive it.
func (a *attempt) holdContext(ctx context.Context) context.Context {
	for _, ob := range a.obs {
		if h, ok := ob.(HoldObserver); ok {
			ctx = h.HoldContext(ctx)
		}
	}
	return ctx
}

// tell sends e, about t's lock, to a's observers.
func (a *attempt) tell(t *session.Target, e Event) {
	e.Name, e.Key = t.Name, t.Key
	for _, ob := range a.obs {
		ob.Observe(e)
	}
}

// observeEnd tells the observers of a grant's end, from the session layer:
// a release (lost nil), or a loss with the number of locks its session
// carried (0 when the release found it).
func (l *Locker) observeEnd(g *session.Grant, lost error, sessionLocks int) {
	e := Event{Kind: EventReleased, Shared: g.Shared(), Held: time.Since(g.Acquired()), Err: lost, SessionLocks: sessionLocks}
	if lost != nil {
		e.Kind = EventLost
	}
	l.obs.ended(g, e)
}

// release releases g. Observed, it makes sure that g's attempt hears of
// its end: the session layer reports a release (every one that returns
// nil) and a loss, but not a release it could not confirm
// (ErrNotReleased, an unlock that failed), which comes as EventReleased,
// or EventLost if the error wraps ErrLockLost, with the error. A grant
// the keep-alive found lost is told by the keep-alive.
func (m *Mutex) release(ctx context.Context, g *session.Grant) error {
	err := g.Release(ctx)
	o := m.l.obs
	if o == nil || err == nil || errors.Is(g.Err(), ErrLockLost) {
		return err
	}
	e := Event{Kind: EventReleased, Shared: g.Shared(), Held: time.Since(g.Acquired()), Err: err}
	if errors.Is(err, ErrLockLost) {
		e.Kind = EventLost
	}
	o.endedUntold(g, e)
	return err
}

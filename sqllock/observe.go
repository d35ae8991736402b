package sqllock

import (
	"context"
	"log/slog"
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
	// was held.
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

// observe sends e to the Locker's observers.
func (m *Mutex) observe(e Event) {
	m.l.observe(&m.t, e)
}

func (l *Locker) observe(t *session.Target, e Event) {
	e.Name, e.Key = t.Name, t.Key
	for _, o := range l.cfg.observers {
		o.Observe(e)
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
	l.observe(g.Target(), e)
}

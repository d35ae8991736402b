package sqllock

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// Default keep-alive settings: a held lock's connection is probed every
// DefaultKeepAliveInterval, and a probe that gets no answer within
// DefaultKeepAliveTimeout counts as a lost lock. A session the server ended
// is noticed within about 2s; any loss within max(interval, timeout) +
// timeout of the last probe the server answered, 10s by default (see
// [WithKeepAlive]).
const (
	DefaultKeepAliveInterval = 2 * time.Second
	DefaultKeepAliveTimeout  = 5 * time.Second
)

// An Option configures a [Locker]. An invalid option does not panic: it
// becomes the Locker's sticky error, returned by every lock operation.
type Option func(*config)

type config struct {
	strategy     keyspace.Strategy
	interval     time.Duration // keep-alive interval; <= 0 disables the keep-alive
	timeout      time.Duration // keep-alive probe timeout, and the release bound of WithLock
	allowStandby bool
	placeholders *bool // nil: decided from the driver
	observers    []Observer
	logger       *slog.Logger   // WithLogger's; warnings go there, else to slog.Default()
	sessions     int            // WithSessions: > 0, locks share at most this many server sessions
	fencing      bool           // WithFencing: exclusive grants carry a fencing token
	lease        *time.Duration // WithLease; nil: derived from the keep-alive (see leaseFor)
	err          error          // first invalid option
}

func defaultConfig() config {
	return config{
		strategy: keyspace.Default,
		interval: DefaultKeepAliveInterval,
		timeout:  DefaultKeepAliveTimeout,
	}
}

func (c *config) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithKeyspace sets the strategy that turns names given to [Locker.Mutex]
// into keys. The default is [keyspace.Default], compatible with the Node
// package advisory-lock. A nil strategy is an invalid option.
func WithKeyspace(s keyspace.Strategy) Option {
	return func(c *config) {
		if s == nil {
			c.fail(fmt.Errorf("sqllock: WithKeyspace: nil keyspace.Strategy"))
			return
		}
		c.strategy = s
	}
}

// WithKeepAlive sets how a held lock's session is watched. Every interval,
// the lock's connection runs one cheap query (SELECT pg_backend_pid()); if it
// fails, returns another backend, or gets no answer within timeout (even when
// the driver itself hangs on a dead network), the lock counts as lost: the
// holder is told (see [Mutex.Done], [Mutex.WithLock]) and the connection is
// discarded.
//
// Probes are sent one interval apart, counted from when the previous one
// was sent, so a loss is reported at most max(interval, timeout) + timeout
// after the session last answered: interval + timeout when the server
// answers promptly.
//
// The defaults are [DefaultKeepAliveInterval] and [DefaultKeepAliveTimeout].
// A timeout of 0 keeps the default; a negative timeout is invalid. An
// interval <= 0 disables the keep-alive: a lost lock is then noticed only
// when it is released. Timeout also bounds the release that WithLock does
// after its function returns.
func WithKeepAlive(interval, timeout time.Duration) Option {
	return func(c *config) {
		if timeout < 0 {
			c.fail(fmt.Errorf("sqllock: WithKeepAlive: negative timeout %v", timeout))
			return
		}
		if timeout == 0 {
			timeout = DefaultKeepAliveTimeout
		}
		c.interval, c.timeout = interval, timeout
	}
}

// WithAllowStandby lets locks be taken on a hot standby. By default a lock
// statement that reaches a server in recovery takes nothing and the call
// fails with [ErrStandby], because such a lock excludes nobody on the
// primary. The check rides on the lock statement itself and costs no extra
// round trip. (A transaction-scoped lock is refused after it is granted: it
// stays until the caller rolls back; see [Mutex.LockTx].)
func WithAllowStandby(allow bool) Option {
	return func(c *config) { c.allowStandby = allow }
}

// WithSessions makes the Locker's locks share at most n server sessions,
// instead of taking a connection each: a process can then hold thousands
// of locks on a few connections.
//
// Semantics stay those of the default mode:
//   - Holders in this process exclude each other exactly as holders in two
//     processes do (PostgreSQL would grant a session a lock it already
//     holds): they queue in the Locker first, in arrival order.
//   - An uncontended lock is one round trip on one of those sessions. A lock
//     that another process holds is waited for in the server, on a
//     connection of its own, and held there, as in the default mode.
//   - Statements on those sessions are bounded by the keep-alive timeout,
//     not by the caller's context, whose end would make a driver drop the
//     connection and every lock on it. A caller whose context ends stops
//     waiting; what its statement did is settled.
//   - One keep-alive probe per session and interval. When such a session
//     dies, every lock it carries is reported lost, and the Locker's logger
//     (WithLogger) gets one warning with their count; an unlock the server
//     answers with false loses that lock alone.
//   - Behind a transaction-mode pooler (PgBouncer, Supavisor, ...) each
//     session holds its locks in a transaction it keeps open while it
//     carries any, and ends only once it carries none: a server connection
//     of the pooler's per session that carries locks (docs/drivers.md).
//
// n must be positive.
func WithSessions(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.fail(fmt.Errorf("sqllock: WithSessions(%d): want at least one session", n))
			return
		}
		c.sessions = n
	}
}

// WithLease sets how long a holder that stops (SIGSTOP, a frozen VM or
// container, a long pause) keeps its lock: the server ends a lock's
// session once it has been idle for d, and the lock with it. A live
// holder's keep-alive probes keep its session busy every interval, so d
// must be longer than the keep-alive interval (see [WithKeepAlive]); a
// holder that resumes after losing its lock learns of it from its next
// probe, at once.
//
// By default the lease is the keep-alive's loss bound, max(interval,
// timeout) + timeout: 10s with the defaults, so a frozen holder's lock is
// free within 10s of its last probe. WithLease(0) turns the lease off:
// then a holder whose process stops keeps its lock until it resumes or its
// connection breaks. With the keep-alive off there is no lease.
//
// The lease is the session's idle_session_timeout (PostgreSQL 14 and
// later), set by the statement that grants the lock and reset by the
// unlock of the session's last lock: a connection back in the pool carries
// no setting of sqllock's. A session with an idle_session_timeout of its
// own (from the connection string, the role or the database) keeps it and
// gets no lease. Older servers have no such setting, and their locks no
// lease. d is rounded to milliseconds; a negative d is invalid.
func WithLease(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail(fmt.Errorf("sqllock: WithLease: negative lease %v", d))
			return
		}
		c.lease = &d
	}
}

// leaseFor returns the lease of c (see WithLease), or an error when it
// would end a live holder's session.
func (c *config) leaseFor() (time.Duration, error) {
	switch {
	case c.interval <= 0 && c.lease != nil && *c.lease > 0:
		return 0, fmt.Errorf("sqllock: WithLease(%v) needs the keep-alive, whose probes keep a live holder's session from idling: WithKeepAlive turned it off", *c.lease)
	case c.interval <= 0:
		return 0, nil
	case c.lease == nil:
		return max(c.interval, c.timeout) + c.timeout, nil
	case *c.lease > 0 && *c.lease <= c.interval:
		return 0, fmt.Errorf("sqllock: WithLease(%v) must be longer than the keep-alive interval %v, or a live holder's session idles out between probes", *c.lease, c.interval)
	}
	return *c.lease, nil
}

// withPlaceholders forces the SQL shape: true sends keys as bind
// parameters ($1) without sqllock preparing anything, false writes them
// into the SQL text. By default keys are parameters on every driver: pgx
// prepares and caches by itself, and sqllock prepares its statements once
// per connection for the others (see drv.StmtCache). Unexported: tests and
// benchmarks use it.
func withPlaceholders(on bool) Option {
	return func(c *config) { c.placeholders = &on }
}

package sqllock

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// An Election keeps one leader among the processes that campaign for the
// same lock: "only one clock process", "one of ten web servers sends the
// report". Create one with [Locker.Election].
//
// An Election is safe for concurrent use, but Run is meant to be called once
// per process: a second concurrent Run campaigns as a second contender.
type Election struct {
	l       *Locker
	m       *Mutex // the election's lock, for Leader, Leadership and the sticky error
	min     time.Duration
	max     time.Duration
	delay   time.Duration // takeover delay
	onState func(leading bool, err error)
	state   atomic.Uint32 // an ElectionState

	// The handover's keys (see election_handover.go), named after the
	// election in the Locker's keyspace; handover is false when they are
	// not usable (a strategy that gives them the election's key, or none).
	evidenceKey, waitingKey keyspace.Key
	handover                bool

	mu       sync.Mutex
	watchers map[chan struct{}]struct{} // Observe's wake-ups, told of each change of state
}

// An ElectionState says where a candidate stands (see [Election.State]),
// or, in a [Leadership], where the election's leader stands.
type ElectionState uint32

const (
	// ElectionIdle: Run is not running; in a Leadership, no one holds the
	// election's lock.
	ElectionIdle ElectionState = iota
	// ElectionFollowing: Run campaigns; another process leads, or none
	// does and the lock is on its way.
	ElectionFollowing
	// ElectionWaiting: this process holds the election's lock and waits
	// out the takeover delay before fn runs; it does not lead yet.
	ElectionWaiting
	// ElectionLeading: this process leads: fn runs.
	ElectionLeading
)

var stateNames = [...]string{ElectionIdle: "idle", ElectionFollowing: "following", ElectionWaiting: "waiting", ElectionLeading: "leading"}

// String returns "idle", "following", "waiting" or "leading".
func (s ElectionState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// ElectionOption configures an [Election].
type ElectionOption func(*Election)

// WithBackoff sets the wait before campaigning again after a failed
// attempt or a lost or abandoned leadership: it starts at min and doubles up
// to max, with full jitter. The defaults are 100ms and 10s. Values <= 0 keep
// the defaults; max below min is raised to min.
func WithBackoff(min, max time.Duration) ElectionOption {
	return func(e *Election) {
		if min > 0 {
			e.min = min
		}
		if max > 0 {
			e.max = max
		}
		if e.max < e.min {
			e.max = e.min
		}
	}
}

// WithTakeoverDelay sets how long a new leader holds the lock before it
// runs fn, unless its predecessor handed over cleanly (see [Election.Run]).
// The delay is what makes "at most one fn at a time" hold when the old
// leader did not step down but lost its session: the server frees the
// lock at once, while the old leader's keep-alive needs up to its interval
// plus its timeout to notice and cancel its fn. The default is exactly that
// bound, max(interval, timeout) + timeout of the Locker's keep-alive (10s
// with the defaults; see [WithKeepAlive]); 0 starts fn at once, for work
// that tolerates a brief overlap, and turns the clean handover off (there
// is nothing to skip). A negative delay keeps the default. Every
// candidate of an election should use the same delay.
//
// A leader whose whole process stalls (a long GC pause, SIGSTOP) keeps
// the lock only for the lease (see [WithLease]: by default the same
// bound), after which the next leader takes over; when the stalled one
// resumes, its overdue probe cancels its fn at once, but it may run for
// that moment beside the new leader, which no delay can prevent. Work that
// must never overlap should also be fenced in the resource it writes. With
// [WithFencing], fn gets a token ([Token]) that the resource can check on
// every write, which protects whatever the timing: the delay then adds
// nothing to fenced writes, and WithTakeoverDelay(0) lets a new leader
// start at once.
func WithTakeoverDelay(d time.Duration) ElectionOption {
	return func(e *Election) {
		if d >= 0 {
			e.delay = d
		}
	}
}

// OnLeadership sets a function called whenever this process becomes
// leader (leading true, err nil) or stops being leader (leading false, err
// why: nil when fn returned nil, fn's error, or an error wrapping
// [ErrLockLost]); it is also called with leading false and the error of a
// failed campaign attempt. Each error is reported once, and said once: fn
// returning its context's cause after a loss gives that error alone. It
// runs on Run's goroutine and must not block.
func OnLeadership(f func(leading bool, err error)) ElectionOption {
	return func(e *Election) { e.onState = f }
}

// Election returns an election for the lock called name. Every process
// whose Election uses the same name (and keyspace strategy) campaigns for
// the same leadership.
//
// Besides the lock called name, an election uses two locks of its own
// for the clean handover (see [Election.Run]), named after it in the same
// keyspace; name alone is what a user of withlock or [Locker.Mutex] sees
// held.
func (l *Locker) Election(name string, opts ...ElectionOption) *Election {
	e := &Election{l: l, m: l.Mutex(name), min: 100 * time.Millisecond, max: 10 * time.Second, delay: -1}
	for _, opt := range opts {
		if opt != nil {
			opt(e)
		}
	}
	if e.delay < 0 {
		e.delay = 0
		if l.cfg.interval > 0 {
			e.delay = max(l.cfg.interval, l.cfg.timeout) + l.cfg.timeout
		}
	}
	e.initHandover(name)
	return e
}

// Run campaigns for leadership until ctx ends, and runs fn each time this
// process becomes leader. The campaign waits in the server (no polling): a
// contender gets the lock the moment the old leader's lock is released or
// its session ends.
//
// A new leader starts fn at once when its predecessor handed over cleanly:
// its fn returned, and while its session still held the lock it left
// evidence on the server that the new leader finds and checks (see
// docs/design.md, "Election handover"). Otherwise (the old leader's
// session died, its process crashed, or nothing can be proven) it waits
// the takeover delay (see [WithTakeoverDelay]) before running fn, so that
// an old leader that lost its session has noticed and stopped. So does the
// very first leader, even when nobody led before: the server keeps no
// history of advisory locks, so a leader whose session died a moment ago
// (and whose fn may still run until its keep-alive notices) looks exactly
// like no leader at all. With the default keep-alive that is 10s; Run logs
// it, at Info, when the wait starts. Shorten it with [WithKeepAlive] on
// every contender's Locker (the delay follows the loss bound), or drop it
// with WithTakeoverDelay(0) where a brief overlap is harmless (a
// development loop).
//
// fn's context is cancelled when leadership is lost (its cause wraps
// [ErrLockLost]) or when ctx ends; fn should return promptly then. When fn
// returns, for any reason, this process steps down and, unless ctx has
// ended, campaigns again after a backoff (see [WithBackoff]); fn returning
// nil is the way to hand leadership to another process. Stepping down
// does not depend on ctx: after a shutdown it still releases the lock and
// hands over, bounded by about three keep-alive timeouts.
//
// The clean handover takes up to two more connections of the pool
// besides the lock's own, for a few round trips: a pool whose
// SetMaxOpenConns is below 3 gets no clean handover (every new leader
// waits the delay).
//
// Run returns only when ctx ends, with context.Cause(ctx), or at once with
// the Mutex's sticky error (a nil db, an invalid option) or [ErrNilFunc].
// Failed campaign attempts (database unreachable, ...) are retried, and
// reported to [OnLeadership] if set.
func (e *Election) Run(ctx context.Context, fn func(ctx context.Context) error) error {
	if fn == nil {
		return e.m.fail("election", ErrNilFunc)
	}
	if ctx == nil {
		return e.m.fail("election", ErrNilContext)
	}
	if e.m.err != nil {
		return e.m.fail("election", e.m.err)
	}
	c := e.newCampaign()
	delay := e.min
	e.setState(ElectionFollowing)
	defer e.setState(ElectionIdle)
	for {
		led := false
		c.warm(ctx)
		err := c.k.WithLock(ctx, func(ctx context.Context) error {
			if run, err := c.prepare(ctx); !run {
				// Lost, or Run's ctx ended, before fn ran: no
				// evidence, since the delay this leader was waiting
				// out may be what an old leader's fn still needs.
				return err
			}
			led = true
			e.setState(ElectionLeading)
			stop := context.AfterFunc(ctx, func() { e.setState(ElectionFollowing) })
			e.notify(true, nil)
			fnErr := fn(ctx) // a panic goes on up; WithLock releases the lock
			stop()
			e.setState(ElectionFollowing)
			c.stepDown(ctx)
			return fnErr
		})
		c.handOver()
		e.setState(ElectionFollowing)
		if ctx.Err() != nil {
			if led {
				e.notify(false, err)
			}
			return context.Cause(ctx)
		}
		e.notify(false, err)
		if led {
			delay = e.min // a term ended: the backoff starts over
		}
		// Full jitter: contenders spread out instead of stampeding.
		wait := time.Duration(rand.Int64N(int64(delay) + 1))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
		if !led || err != nil {
			delay = min(delay*2, e.max)
		}
	}
}

// logDelay says, at Info, that this process won the lock and waits the
// takeover delay before it leads: without it, a first run looks stuck.
// It goes to the Locker's logger (WithLogger), else to slog.Default().
func (e *Election) logDelay() {
	logger := e.l.cfg.logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.LogAttrs(context.Background(), slog.LevelInfo,
		"sqllock: election won; waiting the takeover delay before leading, so that a leader that lost its session has noticed and stopped (WithTakeoverDelay; it follows WithKeepAlive)",
		slog.String("lock", e.m.t.Name), slog.Duration("delay", e.delay))
}

func (e *Election) notify(leading bool, err error) {
	if e.onState != nil {
		e.onState(leading, err)
	}
}

// setState records where this process stands, and wakes Observe.
func (e *Election) setState(s ElectionState) {
	if ElectionState(e.state.Swap(uint32(s))) == s {
		return
	}
	e.mu.Lock()
	for w := range e.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
	e.mu.Unlock()
}

// Leading reports whether this process leads now, through a Run of this
// Election.
func (e *Election) Leading() bool { return e.State() == ElectionLeading }

// State says where this process stands in the election, through a Run of
// this Election: following, waiting out the takeover delay with the lock
// won, leading, or idle (no Run). [Election.Leadership] says where the
// election stands, as the server sees it, whichever process leads.
func (e *Election) State() ElectionState { return ElectionState(e.state.Load()) }

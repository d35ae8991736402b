package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// keepAliveTimeout bounds each keep-alive probe of the lock's session, and
// the release of the lock after the command exits.
const keepAliveTimeout = sqllock.DefaultKeepAliveTimeout

// waitNoticeDelay: with -v, withlock says it is waiting once the lock has
// not been granted within this long.
const waitNoticeDelay = 100 * time.Millisecond

// run carries out the run form: connect, take the lock (or a slot of the
// semaphore), run the command, release it. It returns the exit status.
func run(ctx context.Context, o *runOptions, stdin io.Reader, stdout, stderr io.Writer, log *logger) int {
	// A missing command is reported before anything waits for the lock.
	path, status, err := lookCommand(o.command[0])
	if err != nil {
		log.printf("cannot run the command: %v", err)
		return status
	}

	src := resolveDB(o.db, os.LookupEnv)
	log.r.addDSN(src.dsn)
	cfg, err := parseDB(src, "withlock:"+o.lockName)
	if err != nil {
		return usageError(log, fmt.Errorf("bad connection string from %s: %w", src.from, err))
	}
	log.r.addSecret(cfg.Password)
	socks := &sockets{}
	socks.track(cfg)
	target := describeDB(cfg)
	if src.dsn != "" {
		target = log.r.redact(src.dsn)
	}
	log.verbosef("%s; database %s (from %s)", o.describeKeys(), target, src.from)

	g := newGate(ctx)
	defer g.close()
	sigs := make(chan os.Signal, 16)
	defer watchSignals(g, sigs)()

	db, err := connect(g.ctx, cfg)
	if err != nil {
		if code, ok := gaveUp(g, o, log); ok {
			return code
		}
		log.printf("cannot reach the database %s (from %s): %s", describeDB(cfg), src.from, connectError(err))
		return ExitUnavailable
	}
	defer db.Close()

	opts := []sqllock.Option{
		sqllock.WithKeyspace(o.scheme.strategy),
		sqllock.WithKeepAlive(o.keepAlive, keepAliveTimeout),
	}
	if o.fencing {
		opts = append(opts, sqllock.WithFencing())
	}
	h := newHold(sqllock.New(db, opts...), o)
	c := &child{path: path, args: o.command, grace: o.grace, stdin: stdin, stdout: stdout, stderr: stderr}

	var (
		res              childResult
		lostWhileRunning atomic.Bool
		held             string // what is held, for messages, once it is
	)
	begin := time.Now()
	body := func(ctx context.Context) error {
		if !g.enter() {
			return context.Cause(g.ctx)
		}
		held = h.held()
		log.verbosef("%s after %v", h.acquired(), since(begin))
		if o.fencing {
			token, ok := sqllock.Token(ctx)
			if !ok {
				return fmt.Errorf("the %s came without a fencing token", h.noun())
			}
			log.verbosef("fencing token %d", token)
			c.env = []string{tokenEnv + "=" + strconv.FormatUint(token, 10)}
		}
		// reportLoss reports a loss that ended ctx, once: when ctx ends, or,
		// if the command exits first, when it has.
		reportLoss := func() {
			cause := context.Cause(ctx)
			if !errors.Is(cause, sqllock.ErrLockLost) || lostWhileRunning.Swap(true) {
				return
			}
			log.printf("lost %s while the command ran: %v", held, cause)
			if o.grace > 0 {
				log.printf("stopping the command: SIGTERM now, SIGKILL after %v", o.grace)
			} else {
				log.printf("stopping the command: SIGKILL")
			}
		}
		reported := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(reported)
			reportLoss()
		})
		defer func() {
			if !stop() { // the loss report runs: let it finish before the summary
				<-reported
				return
			}
			// The command may end (stopped because ctx ended) before the
			// goroutine that cancels ctx has started the report: ctx's
			// cause is set before the command is told, so read it here.
			if ctx.Err() != nil {
				reportLoss()
			}
		}()
		// The command inherits the lock's socket (the slot's), so that the
		// server keeps it until the command has exited even if withlock is
		// killed.
		fds, err := socks.inheritable()
		if err != nil {
			return fmt.Errorf("%s: passing its database socket to the command: %w", held, err)
		}
		switch {
		case len(fds) == 1:
			log.verbosef("the command inherits the %s's database socket: descriptor %d", h.noun(), fds[0])
		case len(fds) > 1: // the others are idle sessions of the pool: a semaphore's waiter used two
			log.verbosef("the command inherits the %s's database socket, and idle ones of withlock's pool: descriptors %s", h.noun(), strings.Trim(fmt.Sprint(fds), "[]"))
		}
		c.fds = fds
		res = c.run(ctx, sigs)
		return res.err
	}

	var lockErr error
	acquired := true
	if o.try {
		acquired, lockErr = h.try(g.ctx, body)
	} else {
		if o.timeout > 0 {
			t := time.AfterFunc(o.timeout, func() { g.abort(errWaitTimeout) })
			defer t.Stop()
		}
		if o.verbose {
			t := time.AfterFunc(waitNoticeDelay, func() {
				g.whileWaiting(func() { log.printf("%s", h.waiting()) })
			})
			defer t.Stop()
		}
		lockErr = h.with(g.ctx, body)
	}

	if !g.hasEntered() {
		if o.try && !acquired && lockErr == nil {
			log.verbosef("%s; not waiting (--try); nothing ran", h.taken())
			h.reportHolders(g.ctx, log)
			return o.conflictCode
		}
		if code, ok := gaveUp(g, o, log); ok {
			if errors.Is(context.Cause(g.ctx), errWaitTimeout) {
				h.reportHolders(g.ctx, log)
			}
			return code
		}
		log.printf("could not take %s: %v", o.wanted(), lockErr)
		return ExitUnavailable
	}

	switch {
	case errors.Is(lockErr, sqllock.ErrLockLost):
		switch {
		case lostWhileRunning.Load() && res.started:
			log.printf("the command was stopped (status %d); exiting %d", res.status, ExitLockLost)
		case res.started:
			log.printf("%s was lost before the command finished (found on release): %v", held, lockErr)
			log.printf("the command exited with status %d, but did not hold the lock to the end; exiting %d", res.status, ExitLockLost)
		default:
			log.printf("%s was lost before the command started; nothing ran", held)
		}
		return ExitLockLost
	case !res.started:
		_, code, _ := lookCommand(o.command[0])
		if code == ExitOK {
			code = ExitCannotRun
		}
		log.printf("cannot run the command: %v", res.err)
		return code
	case lockErr != nil:
		// Not a loss: the lock was held until the command exited, and the
		// session holding it was discarded if the release failed.
		log.printf("releasing %s: %v", held, lockErr)
	default:
		log.verbosef("released %s; the command ran %v and exited with status %d", held, res.duration.Round(time.Millisecond), res.status)
	}
	return res.status
}

// watchSignals catches the forwarded signals. While the lock is awaited, a
// signal stops the wait (through g); once it is acquired, signals go to fwd
// for the command. It returns a function that stops watching.
func watchSignals(g *gate, fwd chan<- os.Signal) (stop func()) {
	caught := make(chan os.Signal, 16)
	signal.Notify(caught, forwardedSignals...)
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case sig := <-caught:
				if !g.abort(signalCause{sig}) {
					select {
					case fwd <- sig:
					default: // more than cap(fwd) signals pending: drop
					}
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(caught)
		close(done)
		<-exited
	}
}

// gaveUp reports whether the wait for the lock was abandoned and, if so,
// the exit status: 128+N for signal N, else the conflict code (--timeout, or
// Main's context ended).
func gaveUp(g *gate, o *runOptions, log *logger) (int, bool) {
	if g.ctx.Err() == nil {
		return 0, false
	}
	var sc signalCause
	switch cause := context.Cause(g.ctx); {
	case errors.As(cause, &sc):
		log.verbosef("%s while waiting for %s; nothing ran", signalName(sc.sig), o.wanted())
		return ExitSignalBase + signalNumber(sc.sig), true
	case errors.Is(cause, errWaitTimeout):
		log.verbosef("gave up waiting for %s after %v (--timeout); nothing ran", o.wanted(), o.timeout)
	default:
		log.verbosef("stopped waiting for %s: %v; nothing ran", o.wanted(), cause)
	}
	return o.conflictCode, true
}

// since returns the time elapsed since t, rounded for messages.
func since(t time.Time) time.Duration {
	return time.Since(t).Round(time.Millisecond)
}

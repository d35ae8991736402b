package sqllock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/schedule"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A session is a server session that carries granted locks: the pinned
// connection whose backend owns them, and the keep-alive that watches it.
// The keep-alive is an entry in the Locker's scheduler, not a goroutine:
// each tick probes the connection and schedules the next one. When the
// session dies, every hold it carries learns of it.
//
// In the default mode a session carries one hold, taken on a connection
// of its own, and is given up when that hold is released; with
// WithSessions, a shared session carries many (see sessionPool).
//
// The connection has one user at a time: whoever holds connMu, a tick's
// probe or a release. A release waits for a probe in flight, which its
// own timeout bounds. A tick that finds the connection in use by a
// statement on a shared session watches that statement instead (see
// session.watchdog).
type session struct {
	l        *Locker
	conn     *sql.Conn
	dc       any   // conn's driver connection, for fireBound; on a shared session, nil until its first sound answer
	pid      int64 // the backend that owns the locks
	prepared bool  // the lock and unlock statements run prepared on conn (see drv.StmtCache)
	hold     *hold // the hold a session of its own carries; nil for a shared one

	// A shared session (WithSessions) carries many holds. Its pool counts
	// its users (guarded by the pool's mutex).
	pool    *sessionPool
	users   int         // holds carried and acquisitions in flight
	carried []*hold     // the holds it carries, guarded by mu
	first   [1]*hold    // carried's first backing array: a session carrying one lock allocates none for it
	dead    atomic.Bool // lost or refused: no new holds

	connMu sync.Mutex // held by whoever uses conn

	// Why a shared session's connection could not be opened, and whether
	// its dialer's context ended then; set before connMu is given back.
	dialErr      error
	dialCtxEnded bool

	sched schedule.Entry // the session's entry in the Locker's scheduler
	// releaseCancel ends a release's context when its bound passes; set
	// before the dueRelease entry is scheduled. Nil when the bound is
	// kept by interrupting the driver instead (see fireBound).
	releaseCancel context.CancelFunc

	mu        sync.Mutex // guards the fields below; taken before a hold's mu
	stopped   bool       // a release has begun: no more probes
	unlocking bool       // a release's unlock statement is running on conn
	boundPast bool       // the release's bound has passed (interrupt bound only)

	// A statement running on a shared session in its caller's goroutine
	// (see session.watched).
	stmtRunning     bool
	stmtSince       time.Duration // when it began (see schedule.Scheduler.Now)
	stmtDC          any           // the driver connection it runs on
	stmtInterrupted bool          // the watchdog interrupted it
	// When the next keep-alive probe of a shared session is due: a
	// watchdog's entry that comes earlier does not probe (see tick).
	probeAt time.Duration
}

// What a scheduled session is waiting for.
const (
	dueProbe   = iota + 1 // its next keep-alive probe
	dueRelease            // the end of its release's bound
)

// startSession makes s the session of conn (driver connection dc, backend
// pid) that carries h, and starts watching it.
func (l *Locker) startSession(s *session, conn *sql.Conn, dc any, pid int64, prepared bool, h *hold) {
	*s = session{l: l, conn: conn, dc: dc, pid: pid, prepared: prepared, hold: h}
	h.s = s
	if l.cfg.interval > 0 {
		l.sched.After(s, l.cfg.interval, dueProbe)
	}
}

// Entry returns the session's entry in the Locker's scheduler.
func (s *session) Entry() *schedule.Entry { return &s.sched }

// Run does the work of the session's scheduler entry.
func (s *session) Run(kind int) {
	switch {
	case kind != dueRelease:
		s.tick()
	case s.releaseCancel != nil:
		s.releaseCancel()
	default:
		s.fireBound()
	}
}

// fireBound ends a release whose bound has passed, when the bound is kept
// by interrupting the driver (see drv.InterruptWith): an unlock statement
// still running is interrupted, so that the driver returns at once, with
// an error, and the release ends the session; a release still waiting for
// a keep-alive probe finds the bound passed when the probe ends, and ends
// the session without an unlock.
//
// The interrupt runs outside mu: a driver's Close might take a while. The
// release reads boundPast under mu once its unlock has returned, and then
// discards the connection, whichever of the two closes it first.
func (s *session) fireBound() {
	s.mu.Lock()
	s.boundPast = true
	unlocking := s.unlocking
	s.mu.Unlock()
	if unlocking {
		drv.Interrupt(s.dc, s.l.interruptHow(s.dc))
	}
}

// tick is one keep-alive round: probe the session, then schedule the next
// probe one interval after this one was sent, unless a release has begun
// or the probe failed. Scheduling from the send time bounds detection: a
// session that answered a probe sent at t is found dead by
// t + max(interval, timeout) + timeout at the latest (see LossBound).
func (s *session) tick() {
	if !s.connMu.TryLock() {
		if s.watchdog() {
			return
		}
		s.connMu.Lock()
	}
	s.mu.Lock()
	stopped, probeAt := s.stopped, s.probeAt
	s.mu.Unlock()
	switch {
	case stopped || s.l.cfg.interval <= 0 || s.dc == nil:
		// Released; or a watchdog's entry (see session.watch), with no
		// keep-alive to run, or on a shared session that has yet to give
		// a sound answer.
		s.connMu.Unlock()
		return
	case s.l.sched.Now() < probeAt:
		// A watchdog's entry, due before the next probe: wait for that.
		s.mu.Lock()
		if !s.stopped {
			s.l.sched.Schedule(s, probeAt, dueProbe)
		}
		s.mu.Unlock()
		s.connMu.Unlock()
		return
	}
	sent := s.l.sched.Now()
	cause := s.probe(s.l.cfg.timeout)
	if cause != nil {
		s.lose(cause)
		return
	}
	// Under mu, so that a release that waits for this probe (it sets
	// stopped, then replaces or cancels the entry, then takes connMu)
	// never finds a probe scheduled after it began. A release that took
	// connMu first sets stopped before it gives connMu back, so this tick,
	// which holds connMu, cannot be running then.
	s.mu.Lock()
	if !s.stopped {
		s.scheduleProbe(sent + s.l.cfg.interval)
	}
	s.mu.Unlock()
	s.connMu.Unlock()
}

// scheduleProbe sets the session's next keep-alive probe to run at due
// (see schedule.Scheduler.Now). The caller holds mu.
func (s *session) scheduleProbe(due time.Duration) {
	s.probeAt = due
	s.l.sched.Schedule(s, due, dueProbe)
}

// lose reports the session's death, for cause, to the holds it carries,
// and ends it. The caller holds connMu, which lose gives back.
//
// Each hold records its loss first, so that a release waiting for the
// connection sees it; the session is made sure gone (see settle.Settler.End: one
// query on another connection, unless the probe was abandoned, whose
// goroutine does it) before the connection is given back, so that an
// Unlock waiting for it returns once the server shows the lock gone; then
// observers and holders are told, who may call Unlock; Done closes last,
// so that whoever watches it finds the observers told.
func (s *session) lose(cause error) {
	_ = s.loseWith(cause, s.l.settler.End)
}

// loseBounded is lose for a call that reports the loss to its caller: it
// ends the session within settle.Settler.EndBounded's bound, and returns an error
// wrapping ErrNotReleased if the session could not be seen to end.
func (s *session) loseBounded(cause error) error {
	return s.loseWith(cause, s.l.settler.EndBounded)
}

// loseWith is lose, ending the session with end.
func (s *session) loseWith(cause error, end func(*sql.Conn, int64, keyspace.Key) error) (settleErr error) {
	holds := []*hold{s.hold}
	if s.pool != nil {
		s.pool.retire(s)
		s.mu.Lock()
		holds = append([]*hold(nil), s.carried...)
		s.stopped = true
		s.mu.Unlock()
	}
	errs := make([]error, len(holds))
	firsts := make([]bool, len(holds))
	for i, h := range holds {
		errs[i] = h.lostErr(cause)
		firsts[i] = h.markEnded(errs[i])
	}
	if !errors.Is(cause, errAbandoned) {
		settleErr = end(s.conn, s.pid, s.key())
	}
	s.connMu.Unlock()
	if len(holds) > 1 {
		s.warnLost(len(holds), cause)
	}
	for i, h := range holds {
		if firsts[i] {
			h.leaveTable() // the server holds nothing for it now
			h.notifyLost(errs[i], len(holds))
			h.closeDone()
		}
	}
	return settleErr
}

// warnLost logs, once, that a shared session was lost with n locks on it,
// to the Locker's logger (WithLogger): one line, where each lock's loss
// would be n.
func (s *session) warnLost(n int, cause error) {
	if s.l.cfg.logger == nil {
		return
	}
	s.l.cfg.logger.LogAttrs(context.Background(), slog.LevelWarn, "sqllock: shared session lost, and every lock it carried",
		slog.Int("locks", n), slog.Int64("backend", s.pid), slog.String("err", cause.Error()))
}

// key returns the lock a session of its own carries, or the zero Key for
// a shared session: ending it concerns every advisory lock it holds.
func (s *session) key() keyspace.Key {
	if s.hold == nil {
		return keyspace.Key{}
	}
	return s.hold.m.key
}

// probe runs the keep-alive query. A driver may not return on a dead
// network even when its context ends (lib/pq waits for the server to
// answer a cancel request), so the wait is bounded here, not by the driver.
// A probe abandoned that way owns the connection until the driver returns,
// then ends its session; it reports errAbandoned. Any other failure
// leaves the session for the caller to end.
func (s *session) probe(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	type result struct {
		pid int64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		r.err = s.conn.QueryRowContext(ctx, sqltext.ProbeSQL).Scan(&r.pid)
		ch <- r
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		cancel()
		switch {
		case r.err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
			// The driver gave up at the probe's own deadline: %v, so
			// that the loss does not read as a context the holder ended.
			return fmt.Errorf("keep-alive: %w: %v", errs.KeepAliveTimeout(timeout), r.err)
		case r.err != nil:
			return fmt.Errorf("keep-alive query failed: %w", r.err)
		case r.pid != s.pid:
			return fmt.Errorf("keep-alive reached backend %d, but backend %d took the lock: a transaction pooler between client and server breaks session locks", r.pid, s.pid)
		}
		return nil
	case <-timer.C:
		go func() {
			<-ch
			_ = s.l.settler.End(s.conn, s.pid, s.key())
		}()
		cancel()
		return fmt.Errorf("keep-alive: %w: %w", errs.KeepAliveTimeout(timeout), errAbandoned)
	}
}

// errAbandoned marks a statement (a probe, or a lock or unlock on a shared
// session) that got no answer in time: the goroutine that waits for the
// driver ends the session when it returns. Ending it now would wait for
// that driver call too: conn.Raw has one user at a time.
var errAbandoned = errors.New("the session is ended when the driver returns")

// release unlocks the session's hold and returns the connection to the
// pool. Whatever goes wrong, the lock does not outlive the call: when the
// unlock cannot be confirmed, the session is ended and its end confirmed
// on the server (see settle.Settler.End), or the call says it could not
// be. ctx bounds the unlock query; a ctx that is already done is not a
// reason to leave the lock to a discarded connection, whose Close may not
// end the session: the unlock then runs under ctx's values with the
// keep-alive timeout as its bound, as for a ctx that never ends.
func (s *session) release(ctx context.Context) error {
	h := s.hold
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	// Usually no probe is using the connection: take it at once, and stop
	// the keep-alive in releaseConn's one critical section. Otherwise stop
	// it now, and wait for the probe in releaseConn.
	haveConn := s.connMu.TryLock()
	if !haveConn {
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
	}
	// A context that never ends (context.WithoutCancel in a defer) still
	// gets a bound: past it, the session is ended. The bound is a
	// scheduler entry rather than context.WithTimeout, whose timer would
	// cost a thread wake-up on every Unlock. Each entry replaces the next
	// probe's, if any.
	switch {
	case ctx.Done() != nil:
		s.l.sched.Cancel(s) // the next probe, if any
	case s.l.interruptHow(s.dc) != drv.InterruptNone:
		// The entry interrupts the unlock (see fireBound), which runs
		// with a context the driver need not watch: that spares it a
		// cancellable context and the watch on it (nine allocations with
		// pgx; on lib/pq, the goroutine that waits for the unlock and
		// the one lib/pq starts to watch the context).
		s.l.sched.After(s, s.l.cfg.timeout, dueRelease)
		defer s.l.sched.Cancel(s)
	default:
		// The entry cancels the unlock's context.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		bound := s.l.cfg.timeout
		s.releaseCancel = func() { cancel(errs.KeepAliveTimeout(bound)) }
		s.l.sched.After(s, s.l.cfg.timeout, dueRelease)
		defer func() {
			s.l.sched.Cancel(s)
			cancel(nil)
		}()
	}
	err := s.releaseConn(ctx, haveConn)
	switch {
	case err == nil:
		h.observeEnd(EventReleased, nil)
	case errors.Is(err, ErrLockLost) && err != h.lost: // the keep-alive reported its own finding
		h.observeEnd(EventLost, err)
	}
	return err
}

// releaseConn unlocks on the connection, taking it from the keep-alive
// first unless haveConn says the caller did.
func (s *session) releaseConn(ctx context.Context, haveConn bool) error {
	h := s.hold
	// Take the connection from the keep-alive, waiting for a probe in
	// flight: its own timeout bounds it.
	if !haveConn {
		s.connMu.Lock()
	}
	defer s.connMu.Unlock()
	// Stop the keep-alive, end the hold and, unless the bound has passed
	// or ctx has ended, mark the unlock as running, in one critical
	// section.
	s.mu.Lock()
	s.stopped = true
	lost, ended := h.endForRelease()
	unlock := !ended && !s.boundPast && ctx.Err() == nil
	s.unlocking = unlock
	s.mu.Unlock()
	if ended {
		if lost == nil {
			lost = h.unlockErr(ErrNotHeld)
		}
		return lost
	}
	if !unlock {
		if s.boundPast {
			return s.endSessionBounded()
		}
		return s.endSession()
	}
	q, args := h.m.unlockStatement(h.shared, s.prepared)
	rows, abandoned, settleErr, err := s.l.execRows(ctx, s.conn, q, args, s.prepared, s.pid, h.m.key, func() { _ = s.l.settler.End(s.conn, s.pid, h.m.key) })
	s.mu.Lock()
	s.unlocking = false
	past := s.boundPast
	s.mu.Unlock()
	switch {
	case past && err == nil && rows == 1:
		// The server released the lock as the bound passed: the
		// connection, which may have been interrupted, goes.
		s.l.settler.Discard(s.conn)
		return nil
	case past:
		// The bound passed while the unlock ran: it may have been
		// interrupted, so the session goes, and the lock with it if the
		// unlock did not release it. The release has used its bound:
		// ending the session gets settle.Settler.EndBounded's.
		return s.endSessionBounded()
	case abandoned && settleErr != nil:
		// ctx ended first, the driver has not returned, and the server
		// could not be told to end the session: it is ended when the
		// driver returns.
		return h.unlockErr(fmt.Errorf("%w: the unlock got no answer before it was stopped (%w), and ending its session failed: %w", ErrNotReleased, context.Cause(ctx), settleErr))
	case abandoned:
		// The server ended the session, and the lock with it; the driver
		// has yet to notice, and the connection is discarded when it does.
		return nil
	case err != nil && errs.CtxEnded(ctx):
		// Cancelled mid-query: the session goes, and the lock with it.
		return s.endSession()
	case err != nil:
		if serr := s.l.settler.End(s.conn, s.pid, h.m.key); serr != nil {
			return h.unlockErr(fmt.Errorf("%w: unlock failed (%w)", serr, err))
		}
		return h.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", ErrLockLost, err))
	case rows < 0:
		// The driver does not report row counts: whether the unlock found
		// the lock is unknown, so the session goes, and the lock with it.
		return s.endSession()
	case rows == 0:
		if serr := s.l.settler.End(s.conn, s.pid, h.m.key); serr != nil {
			return h.unlockErr(serr)
		}
		return h.unlockErr(fmt.Errorf("%w: the unlock did not find it in its session (backend %d took it); a transaction pooler between client and server breaks session locks", ErrLockLost, s.pid))
	}
	if err := s.conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return h.unlockErr(err)
	}
	return nil
}

// endSession ends the session (see settle.Settler.End) and reports a
// failure to confirm it as the unlock's error.
func (s *session) endSession() error {
	return s.endWith(s.l.settler.End)
}

// endSessionBounded is endSession within settle.Settler.EndBounded's bound.
func (s *session) endSessionBounded() error {
	return s.endWith(s.l.settler.EndBounded)
}

func (s *session) endWith(end func(*sql.Conn, int64, keyspace.Key) error) error {
	if err := end(s.conn, s.pid, s.hold.m.key); err != nil {
		return s.hold.unlockErr(err)
	}
	return nil
}

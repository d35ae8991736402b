package session

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
// The keep-alive is an entry in the Manager's scheduler, not a goroutine:
// each tick probes the connection and schedules the next one. When the
// session dies, every grant it carries learns of it.
//
// In the default mode a session carries one grant, taken on a connection
// of its own, and is given up when that grant is released; a multiplexed
// session (Config.Multiplex) carries many (see multiplexed).
//
// The connection has one user at a time: whoever holds connMu, a tick's
// probe or a release. A release waits for a probe in flight, which its
// own timeout bounds. A tick that finds the connection in use by a
// statement on a multiplexed session watches that statement instead (see
// session.watchdog).
type session struct {
	m        *Manager
	conn     *sql.Conn
	dc       any   // conn's driver connection, for fireBound; on a multiplexed session, nil until its first sound answer
	pid      int64 // the backend that owns the locks
	prepared bool  // the lock and unlock statements run prepared on conn (see drv.StmtCache)
	held     bool  // the lock is held in a transaction, which the release rolls back (see acquireHeld)
	tx       int64 // with held, the transaction's start: the settling ends only that transaction (see settle.Settler.EndTx)
	// The keep-alive query's arguments: with held, what makes pgx run it in
	// the simple protocol (see Manager.simpleArgs).
	probeArgs []any
	// A held multiplexed session's open transaction, nil between
	// transactions, and the keep-alive query in it (see heldmux.go); set
	// and read by whoever holds connMu.
	heldTx *sqltext.HeldTx
	probeQ string
	grant  *Grant // the grant a session of its own carries; nil for a multiplexed one

	// A multiplexed session carries many grants. mux counts its users
	// (guarded by mux.mu).
	mux     *multiplexed
	users   int         // grants carried and acquisitions in flight
	carried []*Grant    // the grants it carries, guarded by mu
	first   [1]*Grant   // carried's first backing array: a session carrying one lock allocates none for it
	dead    atomic.Bool // lost or refused: no new grants

	connMu sync.Mutex // held by whoever uses conn

	// Why a multiplexed session's connection could not be opened, and whether
	// its dialer's context ended then; set before connMu is given back.
	dialErr      error
	dialCtxEnded bool

	sched schedule.Entry // the session's entry in the Manager's scheduler
	// releaseCancel ends a release's context when its bound passes; set
	// before the dueRelease entry is scheduled. Nil when the bound is
	// kept by interrupting the driver instead (see fireBound).
	releaseCancel context.CancelFunc

	mu        sync.Mutex // guards the fields below; taken before a grant's mu
	stopped   bool       // a release has begun: no more probes
	unclean   bool       // may carry a setting of sqllock's (a lease): discarded, not pooled, at its end
	unlocking bool       // a release's unlock statement is running on conn
	boundPast bool       // the release's bound has passed (interrupt bound only)

	// A statement running on a multiplexed session in its caller's goroutine
	// (see session.watched).
	stmtRunning     bool
	stmtSince       time.Duration // when it began (see schedule.Scheduler.Now)
	stmtDC          any           // the driver connection it runs on
	stmtInterrupted bool          // the watchdog interrupted it
	// When the next keep-alive probe of a multiplexed session is due: a
	// watchdog's entry that comes earlier does not probe (see tick).
	probeAt time.Duration
}

// What a scheduled session is waiting for.
const (
	dueProbe   = iota + 1 // its next keep-alive probe
	dueRelease            // the end of its release's bound
)

// startSession makes s the session of conn (driver connection, backend
// pid, and how the lock was taken, as r reports them) that carries g, and
// starts watching it.
func (m *Manager) startSession(s *session, conn *sql.Conn, r outcome, g *Grant) {
	*s = session{m: m, conn: conn, dc: r.dc, pid: r.pid, prepared: r.prepared, held: r.held, tx: r.tx, grant: g}
	if r.held {
		if args := m.simpleArgs(r.dc); args != nil {
			s.probeArgs = []any{args[0].Value}
		}
	}
	g.s = s
	if m.cfg.Interval > 0 {
		m.sched.After(s, m.cfg.Interval, dueProbe)
	}
}

// Entry returns the session's entry in the Manager's scheduler.
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
		drv.Interrupt(s.dc, s.m.interruptHow(s.dc))
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
	case stopped || s.m.cfg.Interval <= 0 || s.dc == nil || s.held && s.mux != nil && s.heldTx == nil:
		// Released; or a watchdog's entry (see session.watch), with no
		// keep-alive to run, or on a multiplexed session that has yet to give
		// a sound answer, or that holds no transaction, and so no lock, now
		// (see openHeldTx).
		s.connMu.Unlock()
		return
	case s.m.sched.Now() < probeAt:
		// A watchdog's entry, due before the next probe: wait for that.
		s.mu.Lock()
		if !s.stopped {
			s.m.sched.Schedule(s, probeAt, dueProbe)
		}
		s.mu.Unlock()
		s.connMu.Unlock()
		return
	}
	sent := s.m.sched.Now()
	cause := s.probe(s.m.cfg.Timeout)
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
		s.scheduleProbe(sent + s.m.cfg.Interval)
	}
	s.mu.Unlock()
	s.connMu.Unlock()
}

// scheduleProbe sets the session's next keep-alive probe to run at due
// (see schedule.Scheduler.Now). The caller holds mu.
func (s *session) scheduleProbe(due time.Duration) {
	s.probeAt = due
	s.m.sched.Schedule(s, due, dueProbe)
}

// lose reports the session's death, for cause, to the grants it carries,
// and ends it. The caller holds connMu, which lose gives back.
//
// Each grant records its loss first, so that a release waiting for the
// connection sees it; the session is made sure gone (see settle.Settler.End: one
// query on another connection, unless the probe was abandoned, whose
// goroutine does it) before the connection is given back, so that an
// Unlock waiting for it returns once the server shows the lock gone; then
// observers and holders are told, who may call Unlock; Done closes last,
// so that whoever watches it finds the observers told.
func (s *session) lose(cause error) {
	_ = s.loseWith(cause, s.end)
}

// loseBounded is lose for a call that reports the loss to its caller: it
// ends the session within settle.Settler.EndBounded's bound, and returns an error
// wrapping errs.ErrNotReleased if the session could not be seen to end.
func (s *session) loseBounded(cause error) error {
	return s.loseWith(cause, s.endBounded)
}

// loseWith is lose, ending the session with end.
func (s *session) loseWith(cause error, end func(*sql.Conn, int64, keyspace.Key) error) (settleErr error) {
	grants := []*Grant{s.grant}
	if s.mux != nil {
		s.mux.retire(s)
		s.mu.Lock()
		grants = append([]*Grant(nil), s.carried...)
		s.stopped = true
		s.mu.Unlock()
	}
	losses := make([]error, len(grants))
	firsts := make([]bool, len(grants))
	for i, g := range grants {
		losses[i] = g.lostErr(cause)
		firsts[i] = g.markEnded(losses[i])
	}
	if !errors.Is(cause, errAbandoned) {
		settleErr = end(s.conn, s.pid, s.key())
	}
	s.connMu.Unlock()
	if len(grants) > 1 {
		s.warnLost(len(grants), cause)
	}
	for i, g := range grants {
		if firsts[i] {
			g.leaveTable() // the server holds nothing for it now
			g.notifyLost(losses[i], len(grants))
			g.closeDone()
		}
	}
	return settleErr
}

// warnLost logs, once, that a multiplexed session was lost with n locks on
// it, to Config.Logger: one line, where each lock's loss would be n.
func (s *session) warnLost(n int, cause error) {
	if s.m.cfg.Logger == nil {
		return
	}
	s.m.cfg.Logger.LogAttrs(context.Background(), slog.LevelWarn, "sqllock: session lost, and every lock it carried (WithSessions)",
		slog.Int("locks", n), slog.Int64("backend", s.pid), slog.String("err", cause.Error()))
}

// key returns the lock a session of its own carries, or the zero Key for
// a multiplexed session: ending it concerns every advisory lock it holds.
func (s *session) key() keyspace.Key {
	if s.grant == nil {
		return keyspace.Key{}
	}
	return s.grant.t.Key
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
	q := sqltext.ProbeSQL
	if s.probeQ != "" {
		q = s.probeQ
	}
	go func() {
		var r result
		r.err = s.conn.QueryRowContext(ctx, q, s.probeArgs...).Scan(&r.pid)
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
			_ = s.end(s.conn, s.pid, s.key())
		}()
		cancel()
		return fmt.Errorf("keep-alive: %w: %w", errs.KeepAliveTimeout(timeout), errAbandoned)
	}
}

// errAbandoned marks a statement (a probe, or a lock or unlock on a
// multiplexed session) that got no answer in time: the goroutine that waits for the
// driver ends the session when it returns. Ending it now would wait for
// that driver call too: conn.Raw has one user at a time.
var errAbandoned = errors.New("the session is ended when the driver returns")

// release unlocks the session's grant and returns the connection to the
// pool. Whatever goes wrong, the lock does not outlive the call: when the
// unlock cannot be confirmed, the session is ended and its end confirmed
// on the server (see settle.Settler.End), or the call says it could not
// be. ctx bounds the unlock query; a ctx that is already done is not a
// reason to leave the lock to a discarded connection, whose Close may not
// end the session: the unlock then runs under ctx's values with the
// keep-alive timeout as its bound, as for a ctx that never ends.
func (s *session) release(ctx context.Context) error {
	g := s.grant
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
		s.m.sched.Cancel(s) // the next probe, if any
	case s.m.interruptHow(s.dc) != drv.InterruptNone:
		// The entry interrupts the unlock (see fireBound), which runs
		// with a context the driver need not watch: that spares it a
		// cancellable context and the watch on it (nine allocations with
		// pgx; on lib/pq, the goroutine that waits for the unlock and
		// the one lib/pq starts to watch the context).
		s.m.sched.After(s, s.m.cfg.Timeout, dueRelease)
		defer s.m.sched.Cancel(s)
	default:
		// The entry cancels the unlock's context.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		bound := s.m.cfg.Timeout
		s.releaseCancel = func() { cancel(errs.KeepAliveTimeout(bound)) }
		s.m.sched.After(s, s.m.cfg.Timeout, dueRelease)
		defer func() {
			s.m.sched.Cancel(s)
			cancel(nil)
		}()
	}
	err := s.releaseConn(ctx, haveConn)
	switch {
	case err == nil:
		g.observeEnd(nil)
	case errors.Is(err, errs.ErrLockLost) && err != g.lost: // the keep-alive reported its own finding
		g.observeEnd(err)
	}
	return err
}

// releaseConn unlocks on the connection, taking it from the keep-alive
// first unless haveConn says the caller did.
func (s *session) releaseConn(ctx context.Context, haveConn bool) error {
	g := s.grant
	// Take the connection from the keep-alive, waiting for a probe in
	// flight: its own timeout bounds it.
	if !haveConn {
		s.connMu.Lock()
	}
	defer s.connMu.Unlock()
	// Stop the keep-alive, end the grant and, unless the bound has passed
	// or ctx has ended, mark the unlock as running, in one critical
	// section.
	s.mu.Lock()
	s.stopped = true
	lost, ended := g.endForRelease()
	unlock := !ended && !s.boundPast && ctx.Err() == nil
	s.unlocking = unlock
	s.mu.Unlock()
	if ended {
		if lost == nil {
			lost = g.unlockErr(errs.ErrNotHeld)
		}
		return lost
	}
	if !unlock {
		if s.boundPast {
			return s.endSessionBounded()
		}
		return s.endSession()
	}
	var q string
	var args []driver.NamedValue
	if s.held {
		q = sqltext.RollbackSQL
	} else {
		q, args = g.t.unlockStatement(g.shared, s.prepared, true, s.dc, s.pid)
	}
	var rows int64
	var abandoned bool
	var settleErr, err error
	if s.held {
		// Through a pooler, a driver that sees ctx end sends a cancel
		// request, on which PgBouncer before 1.21 can exit (see
		// Manager.execHeld): the rollback runs under a context that never
		// ends, and if ctx ends first its transaction is ended on the
		// server.
		rows, abandoned, settleErr, err = s.m.execHeld(ctx, s.conn, q, s.pid, s.tx, g.t.Key)
		if err == nil {
			rows = 1 // the transaction's end released its lock
		}
	} else {
		rows, abandoned, settleErr, err = s.m.execRowsWithin(ctx, ctx, s.conn, q, args, s.prepared, s.pid, s.tx, g.t.Key, func() { _ = s.end(s.conn, s.pid, g.t.Key) })
	}
	s.mu.Lock()
	s.unlocking = false
	past := s.boundPast
	s.mu.Unlock()
	switch {
	case past && err == nil && rows == 1:
		// The server released the lock as the bound passed: the
		// connection, which may have been interrupted, goes.
		s.m.settler.Discard(s.conn)
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
		return g.unlockErr(fmt.Errorf("%w: the unlock got no answer before it was stopped (%w), and ending its session failed: %w", errs.ErrNotReleased, context.Cause(ctx), settleErr))
	case abandoned:
		// The server ended the session, and the lock with it; the driver
		// has yet to notice, and the connection is discarded when it does.
		return nil
	case err != nil && errs.CtxEnded(ctx):
		// Cancelled mid-query: the session goes, and the lock with it.
		return s.endSession()
	case err != nil:
		if serr := s.end(s.conn, s.pid, g.t.Key); serr != nil {
			return g.unlockErr(fmt.Errorf("%w: unlock failed (%w)", serr, err))
		}
		return g.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", errs.ErrLockLost, err))
	case rows < 0:
		// The driver does not report row counts: whether the unlock found
		// the lock is unknown, so the session goes, and the lock with it.
		return s.endSession()
	case rows == 0:
		if serr := s.end(s.conn, s.pid, g.t.Key); serr != nil {
			return g.unlockErr(serr)
		}
		return g.unlockErr(fmt.Errorf("%w: the unlock did not find it in its session (backend %d took it); a transaction pooler between client and server breaks session locks", errs.ErrLockLost, s.pid))
	}
	if err := s.conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return g.unlockErr(err)
	}
	return nil
}

// endSession ends the session (see settle.Settler.End) and reports a
// failure to confirm it as the unlock's error.
func (s *session) endSession() error {
	return s.endWith(s.end)
}

// endSessionBounded is endSession within settle.Settler.EndBounded's bound.
func (s *session) endSessionBounded() error {
	return s.endWith(s.endBounded)
}

// end ends the session (see settle.Settler.End); a session held in a
// transaction, only while it runs that transaction (see
// settle.Settler.EndTx): a pooler gives the server session to other
// clients once it ends.
func (s *session) end(conn *sql.Conn, pid int64, k keyspace.Key) error {
	return s.m.settler.EndTx(conn, pid, s.tx, k)
}

// endBounded is end within settle.Settler.EndBounded's bound.
func (s *session) endBounded(conn *sql.Conn, pid int64, k keyspace.Key) error {
	return s.m.settler.EndTxBounded(conn, pid, s.tx, k)
}

func (s *session) endWith(end func(*sql.Conn, int64, keyspace.Key) error) error {
	if err := end(s.conn, s.pid, s.grant.t.Key); err != nil {
		return s.grant.unlockErr(err)
	}
	return nil
}

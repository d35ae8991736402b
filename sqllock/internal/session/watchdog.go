package session

import (
	"fmt"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
)

// Statements on a multiplexed session must not run under their caller's
// context, whose end would make a driver drop the connection and every
// lock on it, so something else must bound them. Where the driver can be
// interrupted (see drv.InterruptWith), the statement runs in the caller's
// goroutine, and a keep-alive tick that finds it running past the
// keep-alive timeout interrupts it: it returns at once with an error, and
// its caller ends the session, reporting every lock on it lost. Elsewhere
// the statement runs in a goroutine of its own that the caller stops
// waiting for (see Manager.awaitBounded): a hand-off per statement.

// interruptible reports whether statements on multiplexed session s run in
// the caller's goroutine, watched (see session.watched).
func (m *Manager) interruptible(s *session) bool {
	how := int(m.interrupt.Load())
	if how == drv.InterruptUnknown {
		how = drv.InterruptNone
		_ = s.conn.Raw(func(dc any) error {
			how = m.interruptHow(dc)
			return nil
		})
	}
	return how != drv.InterruptNone
}

// watched runs a statement on the multiplexed session's connection in the
// caller's goroutine, bounded by the keep-alive timeout: past it, a tick
// of the session interrupts it (see session.watchdog). An interrupted
// statement reports an error saying so, even if it got its answer as the
// interruption came: its connection may be closed. The caller holds
// connMu.
func (s *session) watched(run func(dc any) outcome) (r outcome) {
	err := s.conn.Raw(func(dc any) error {
		s.watch(dc)
		r = run(dc)
		if s.unwatch() {
			// %v, not %w: a server error among them must not read as a
			// refusal on a sound session.
			cause := "no error"
			if r.err != nil {
				cause = r.err.Error()
			}
			r.err = fmt.Errorf("%w: the statement was interrupted (%v)", errs.KeepAliveTimeout(s.m.cfg.Timeout), cause)
		}
		return nil
	})
	if err != nil {
		r.err = err
	}
	return r
}

// watch records that a statement is about to run on dc, and makes sure
// the session's scheduler entry runs by the time its bound passes.
func (s *session) watch(dc any) {
	now := s.m.sched.Now()
	s.mu.Lock()
	s.stmtDC, s.stmtSince, s.stmtRunning = dc, now, true
	s.mu.Unlock()
	s.m.sched.AtLatest(s, now+s.m.cfg.Timeout, dueProbe)
}

// unwatch records that the statement has returned, and reports whether it
// was interrupted.
func (s *session) unwatch() (interrupted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	interrupted = s.stmtInterrupted
	s.stmtDC, s.stmtRunning, s.stmtInterrupted = nil, false, false
	return interrupted
}

// watchdog is a tick's work when it finds the connection in use: if a
// watched statement runs on it, the tick interrupts it once it has run
// for the keep-alive timeout, and otherwise comes back then. It reports
// false when no watched statement runs: the tick then waits for the
// connection.
//
// A statement is interrupted once: both ways make a read return at once.
// lib/pq's Close writes five bytes before it closes the socket; that write
// could wait only if the socket's send buffer were full, which statements
// of a few hundred bytes, each answered before the next is sent, cannot
// fill.
func (s *session) watchdog() bool {
	s.mu.Lock()
	if !s.stmtRunning {
		s.mu.Unlock()
		return false
	}
	if due := s.stmtSince + s.m.cfg.Timeout; s.m.sched.Now() < due {
		s.m.sched.Schedule(s, due, dueProbe)
		s.mu.Unlock()
		return true
	}
	dc, first := s.stmtDC, !s.stmtInterrupted
	s.stmtInterrupted = true
	s.mu.Unlock()
	if first {
		drv.Interrupt(dc, int(s.m.interrupt.Load()))
	}
	return true
}

// interruptHow returns how statements on driver connection dc, one of
// the Manager's, can be interrupted. The answer is the same for every
// connection of a Manager's pool, so it is worked out once.
func (m *Manager) interruptHow(dc any) int {
	how := int(m.interrupt.Load())
	if how == drv.InterruptUnknown {
		how = drv.InterruptWith(dc)
		m.interrupt.Store(int32(how))
	}
	return how
}

package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// Behind a transaction pooler, a multiplexed session (Config.Multiplex) is
// a client connection of the pooler's, which keeps one server session only
// from BEGIN to the transaction's end. It carries its locks in a
// transaction it holds open for as long as it carries any (see
// sqltext.HeldTx):
//
//   - The locks are session-level ones, so that each unlock releases its
//     own. The transaction's first lock begins it: BEGIN, then a try
//     marked as acquireHeld's is, which answers the backend pid and the
//     transaction's start, then a savepoint. Later locks and unlocks run
//     guarded by that pid and start: outside the transaction they take
//     and release nothing. The unlock of the last lock the session
//     carries ends the transaction, after pg_advisory_unlock_all.
//   - No transaction ends while it carries a lock, which the pooler would
//     hand to another client with its server session. sqllock sends
//     nothing else that ends it. An error aborts it without ending it: a
//     statement the server refused is rolled back to the savepoint, which
//     releases no session lock, and any other failure, or a failed
//     recovery, terminates the server session from another connection
//     (by pid and transaction start: see settle.Settler.EndTx) and loses
//     every lock it carried. A client that goes away makes the pooler end
//     the server session, and the locks with it.
//   - A wait runs on a connection of its own, held as without Multiplex
//     (see acquireHeld).

// lockHeldMux takes t's lock as req asks on held multiplexed session s,
// whose connMu the caller holds and of which it is a user. It gives connMu
// back, and ends the caller's use of s unless it returns a grant. It
// returns (nil, false, nil) when another session holds the lock; retry
// reports that the session was found dead with nothing taken for this
// call, which may then try another. fresh says that this call found the
// session to be a pooler's, with a statement that succeeded just before.
func (m *Manager) lockHeldMux(ctx context.Context, s *session, t *Target, req Request, others, fresh bool) (g *Grant, retry bool, err error) {
	h := t.held()
	x := s.heldTx
	if x == nil {
		return m.lockHeldFirst(ctx, s, t, req, h, fresh)
	}
	sel := h.In
	switch {
	case req.Shared && others && s.carriesShared(t.Key):
		sel = h.InBehind
	case req.Shared:
		sel = h.InShared
	}
	lost := func(cause error) error {
		err := m.heldMuxLost(s, cause)
		m.mux.done(s)
		return err
	}
	v, abandoned, settleErr, err := m.heldMuxRun(s, []string{x.Try(sel)})
	switch {
	case abandoned:
		return nil, false, lost(abandonedCause("lock statement", m.cfg.Timeout, settleErr))
	case errors.Is(err, sql.ErrNoRows):
		// Not in the transaction: it ended, or the pooler moved the
		// connection. Nothing was taken; what it carried is lost.
		return nil, false, lost(fmt.Errorf("the lock statement found its connection outside the transaction of backend %d that holds its locks", x.PID))
	case err != nil && errs.ServerRefused(context.Background(), err):
		// The server refused the statement (a full lock table): the
		// transaction is aborted, with every lock it carries; back to the
		// savepoint, undoing what the statement may have taken before its
		// error, unless the session already carries that lock shared, which
		// the undo could release instead.
		cause := m.fencingErr(errs.Classify(err))
		if req.Shared && s.carriesShared(t.Key) {
			return nil, false, fmt.Errorf("%w (%w)", cause, lost(fmt.Errorf("%w: %w", errAmbiguousGrant, err)))
		}
		undo := h.Unlock
		if req.Shared {
			undo = h.UnlockShared
		}
		if _, abandoned, settleErr, rerr := m.heldMuxRun(s, x.Recover(undo)); abandoned || rerr != nil && !errors.Is(rerr, sql.ErrNoRows) {
			if abandoned {
				rerr = abandonedCause("rollback to the savepoint", m.cfg.Timeout, settleErr)
			}
			return nil, false, fmt.Errorf("%w (%w)", cause, lost(fmt.Errorf("%w; its transaction could not be rolled back to its savepoint: %w", err, rerr)))
		}
		s.connMu.Unlock()
		m.mux.done(s)
		return nil, false, cause
	case err != nil:
		// Whether the statement took the lock is unknown: the session goes,
		// and every lock it carries. A session the server had ended (its
		// socket broke, a restart) took nothing: the lock is tried on
		// another.
		return nil, errs.DeadSession(err) && !errs.CtxEnded(ctx), lost(errs.Classify(err))
	}
	granted, err := guardedAnswer(v)
	if err != nil {
		return nil, false, lost(err)
	}
	if !granted {
		s.connMu.Unlock()
		m.mux.done(s)
		return nil, false, nil
	}
	g, err = m.heldMuxGranted(ctx, s, t, req)
	return g, false, err
}

// lockHeldFirst takes t's lock as the first lock of a new transaction on
// held multiplexed session s (see lockHeldMux): BEGIN, then the marked
// try and the savepoint. Until the try answers, the transaction's backend
// is unknown: a try that fails is settled by its mark (see
// settle.Settler.EndMarked), and the session goes, carrying nothing else.
func (m *Manager) lockHeldFirst(ctx context.Context, s *session, t *Target, req Request, h *sqltext.Held, fresh bool) (g *Grant, retry bool, err error) {
	// BEGIN and the try carry one mark: a transaction that BEGIN opened is
	// found by it, should no answer come.
	mark := sqltext.NewMark()
	_, abandoned, settleErr, err := m.heldMuxRunWith(s, []string{mark + sqltext.BeginRCSQL},
		func(ctx context.Context) error { return m.settler.TerminateMarked(ctx, mark) },
		func() { _ = m.settler.EndMarked(s.conn, mark) })
	if abandoned || err != nil && !errors.Is(err, sql.ErrNoRows) {
		// Nothing was taken: the connection goes, and the transaction, if
		// BEGIN opened one.
		if abandoned {
			err = abandonedCause("BEGIN", m.cfg.Timeout, settleErr)
		} else if serr := m.settler.EndMarked(s.conn, mark); serr != nil {
			err = fmt.Errorf("%w (%w)", err, serr)
		}
		m.heldMuxDrop(s)
		// A pooler that closes the connection as a transaction begins, on
		// a session whose check just succeeded, refuses transactions (see
		// heldRefusal); one that had carried locks before may just have
		// lost its connection since.
		if cause := heldRefusal(ctx, err); cause != nil && (fresh || !errs.DeadSession(err)) {
			return nil, false, cause
		}
		return nil, !abandoned && errs.DeadSession(err) && !errs.CtxEnded(ctx), fmt.Errorf("begin the transaction that holds the locks: %w", errs.Classify(err))
	}
	try := h.First
	if req.Shared {
		try = h.FirstShared
	}
	split := m.heldSplit.Load()
	v, abandoned, settleErr, err := m.heldMuxRunWith(s, sqltext.First(mark, try, split),
		func(ctx context.Context) error { return m.settler.TerminateMarked(ctx, mark) },
		func() { _ = m.settler.EndMarked(s.conn, mark) })
	var pid, tx int64
	granted := false
	if v != nil || err == nil {
		var aerr error
		if pid, granted, tx, aerr = sqltext.HeldAnswer(v); err == nil {
			err = aerr
		}
	}
	switch {
	case abandoned:
		m.heldMuxDrop(s)
		return nil, false, abandonedCause("lock statement", m.cfg.Timeout, settleErr)
	case err != nil:
		// The transaction is aborted, or its state unknown, and may hold
		// what the try took: its backend is ended, found by its answer
		// or, without one, by the mark.
		cause := m.fencingErr(errs.Classify(err))
		var serr error
		if pid != 0 {
			serr = m.settler.EndTx(s.conn, pid, tx, keyspace.Key{})
		} else {
			serr = m.settler.EndMarked(s.conn, mark)
		}
		m.heldMuxDrop(s)
		if serr != nil {
			return nil, false, fmt.Errorf("%w (%w)", cause, serr)
		}
		if !split && errs.MultipleCommands(err) {
			// A driver that runs every query in the extended protocol
			// takes one statement at a time: apart from now on.
			m.heldSplit.Store(true)
			return nil, true, cause
		}
		return nil, errs.DeadSession(err) && !errs.CtxEnded(ctx), cause
	}
	m.openHeldTx(s, sqltext.InHeldTx(pid, tx))
	if !granted {
		if err := m.endHeldTx(s); err != nil {
			m.mux.done(s)
			return nil, false, err
		}
		s.connMu.Unlock()
		m.mux.done(s)
		return nil, false, nil
	}
	g, err = m.heldMuxGranted(ctx, s, t, req)
	return g, false, err
}

// heldMuxGranted makes the grant of t's lock, just granted on held
// multiplexed session s, whose connMu the caller holds: unless the
// caller's context ended meanwhile, or its fencing token cannot be drawn,
// when the lock is released again.
func (m *Manager) heldMuxGranted(ctx context.Context, s *session, t *Target, req Request) (*Grant, error) {
	x := s.heldTx
	var token uint64
	var cause error
	if ctx.Err() == nil && m.cfg.Fencing && !req.Shared {
		// Drawn on another session: the transaction that holds the lock
		// never gets a transaction id (see sqltext.HeldToken).
		token, cause = m.heldToken(ctx, x.PID, t)
	}
	if ctx.Err() != nil {
		cause = errs.WithCtxErr(ctx, context.Cause(ctx))
	}
	if cause != nil {
		// Granted as the caller gave up, or unfenced: give it back.
		released, err := m.heldUnlock(s, t, req.Shared)
		switch {
		case err != nil:
			m.mux.done(s)
			return nil, fmt.Errorf("%w (%w)", cause, err)
		case !released:
			cause = fmt.Errorf("%w (the lock granted meanwhile was not found to release)", cause)
		}
		s.connMu.Unlock()
		m.mux.done(s)
		return nil, cause
	}
	g := &Grant{t: t, shared: req.Shared, s: s, acquired: m.grantedNow(), token: token, onLost: req.OnLost, pid: x.PID}
	s.mu.Lock()
	s.carried = append(s.carried, g)
	s.mu.Unlock()
	s.connMu.Unlock()
	m.warnPoolFull(t)
	return g, nil
}

// releaseHeld releases grant g, which held multiplexed session s carried
// until the caller, who holds connMu, took it off: one guarded unlock,
// which ends the transaction with the session's last lock. An unlock that
// finds nothing loses g alone; one that fails ends the session, and every
// lock it carries is lost.
func (s *session) releaseHeld(g *Grant) error {
	released, err := s.m.heldUnlock(s, g.t, g.shared)
	switch {
	case errors.Is(err, errs.ErrNotReleased):
		// heldUnlock lost the session, which could not be seen to end.
		return g.unlockErr(fmt.Errorf("unlock failed: %w", err))
	case err != nil:
		// heldUnlock lost the session: every lock on it, g's with it.
		return g.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", errs.ErrLockLost, err))
	case !released:
		s.connMu.Unlock()
		err = g.unlockErr(fmt.Errorf("%w: the unlock did not find it in its session (backend %d)", errs.ErrLockLost, g.pid))
		g.observeEnd(err)
		return err
	}
	s.connMu.Unlock()
	g.observeEnd(nil)
	return nil
}

// heldUnlock releases t's lock on held multiplexed session s, whose
// connMu the caller holds, and ends its transaction if the session
// carries no other lock; it reports whether the server found the lock. An
// error says that the session is lost (see heldMuxLost), connMu given
// back.
func (m *Manager) heldUnlock(s *session, t *Target, shared bool) (released bool, err error) {
	h, x := t.held(), s.heldTx
	cond := h.Unlock
	if shared {
		cond = h.UnlockShared
	}
	s.mu.Lock()
	last := len(s.carried) == 0
	s.mu.Unlock()
	v, abandoned, settleErr, err := m.heldMuxRun(s, x.Unlock(cond, last, m.heldSplit.Load()))
	if abandoned {
		return false, m.heldMuxLost(s, abandonedCause("unlock", m.cfg.Timeout, settleErr))
	}
	n, ok := intAnswer(v)
	if err == nil && !ok {
		err = fmt.Errorf("the unlock answered %T %v, not 0 or 1: whether the session holds the lock is unknown, so it is ended", v, v)
	}
	if err != nil {
		return false, m.heldMuxLost(s, err)
	}
	if last {
		m.closeHeldTx(s)
	}
	return n == 1, nil
}

// openHeldTx records x as held multiplexed session s's transaction, whose
// keep-alive starts now. The caller holds connMu.
func (m *Manager) openHeldTx(s *session, x *sqltext.HeldTx) {
	s.heldTx, s.pid, s.tx, s.probeQ = x, x.PID, x.Start, x.Probe()
	if m.cfg.Interval > 0 {
		s.mu.Lock()
		if !s.stopped {
			s.scheduleProbe(m.sched.Now() + m.cfg.Interval)
		}
		s.mu.Unlock()
	}
}

// closeHeldTx records that held multiplexed session s's transaction has
// ended: nothing of the server session is left to watch or to settle. The
// caller holds connMu.
func (m *Manager) closeHeldTx(s *session) {
	s.heldTx, s.pid, s.tx, s.probeQ = nil, 0, 0, ""
}

// endHeldTx ends the transaction of held multiplexed session s, which
// carries no lock, whose connMu the caller holds. An error says that the
// session is lost (see heldMuxLost), connMu given back.
func (m *Manager) endHeldTx(s *session) error {
	_, abandoned, settleErr, err := m.heldMuxRun(s, s.heldTx.End(m.heldSplit.Load()))
	if abandoned {
		err = abandonedCause("the end of the transaction", m.cfg.Timeout, settleErr)
	}
	if err != nil {
		return m.heldMuxLost(s, err)
	}
	m.closeHeldTx(s)
	return nil
}

// heldMuxLost loses held multiplexed session s for cause, every lock it
// carries with it, and ends its transaction on the server; connMu, which
// the caller holds, is given back. It returns cause, with why the session
// could not be seen to end.
func (m *Manager) heldMuxLost(s *session, cause error) error {
	if serr := s.loseBounded(cause); serr != nil {
		cause = fmt.Errorf("%w (%w)", cause, serr)
	}
	return cause
}

// heldMuxDrop gives up held multiplexed session s, which holds no
// transaction, and whose connection the caller has discarded or abandoned
// to a statement that ends it; connMu is given back, and the caller's use
// of s ended.
func (m *Manager) heldMuxDrop(s *session) {
	m.mux.retire(s)
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.connMu.Unlock()
	m.mux.done(s)
}

// heldMuxRun is heldMuxRunWith, settling the session's transaction.
func (m *Manager) heldMuxRun(s *session, stmts []string) (v any, abandoned bool, settleErr error, err error) {
	x := s.heldTx
	return m.heldMuxRunWith(s, stmts,
		func(ctx context.Context) error { return m.settler.TerminateTx(ctx, x.PID, x.Start, keyspace.Key{}) },
		func() { _ = m.settler.EndTx(s.conn, x.PID, x.Start, keyspace.Key{}) })
}

// heldMuxRunWith runs stmts on held multiplexed session s, whose connMu
// the caller holds, one query each, in the simple protocol, stopping at
// the first that fails; v is the first one's answer (see drv.QueryValue),
// and sql.ErrNoRows, when it answers none, does not stop the others.
// Statements are bounded by the keep-alive timeout as a lock statement on
// a multiplexed session is (see lockStatementMultiplexed): watched in the
// caller's goroutine where the driver can be interrupted, else in a
// goroutine of its own, abandoned past the bound; then end settles the
// session on the server, and onAbandon runs once the driver returns.
func (m *Manager) heldMuxRunWith(s *session, stmts []string, end func(context.Context) error, onAbandon func()) (v any, abandoned bool, settleErr error, err error) {
	run := func(ctx context.Context, dc any) (r outcome) {
		args := m.simpleArgs(dc)
		r.v, r.err = drv.QueryValue(ctx, dc, stmts[0], args)
		for _, q := range stmts[1:] {
			if r.err != nil && !errors.Is(r.err, sql.ErrNoRows) {
				break
			}
			if _, err := drv.QueryValue(ctx, dc, q, args); err != nil && !errors.Is(err, sql.ErrNoRows) {
				r.err = err
			}
		}
		return r
	}
	if m.interruptible(s) {
		r := s.watched(func(dc any) outcome { return run(context.Background(), dc) })
		return r.v, false, nil, r.err
	}
	sctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
	defer cancel()
	raw := func(ctx context.Context) (r outcome) {
		if err := s.conn.Raw(func(dc any) error {
			r = run(ctx, dc)
			return nil
		}); err != nil {
			r.err = err
		}
		return r
	}
	if m.boundsContext {
		r := raw(sctx) // pgx bounds its own calls by their context
		return r.v, false, nil, errs.OwnBound(sctx, m.cfg.Timeout, r.err)
	}
	done := make(chan outcome, 1)
	go func() { done <- raw(context.Background()) }() // see runLockWithin
	r, abandoned, settleErr := m.awaitBounded(sctx, 0, done, end, func(outcome) { onAbandon() })
	return r.v, abandoned, settleErr, errs.OwnBound(sctx, m.cfg.Timeout, r.err)
}

// abandonedCause is the loss of a session whose statement what got no
// answer within bound and was abandoned to its driver (see awaitBounded);
// settleErr says why its session could not be seen to end.
func abandonedCause(what string, bound time.Duration, settleErr error) error {
	cause := fmt.Errorf("%s: %w: %w", what, errs.KeepAliveTimeout(bound), errAbandoned)
	if settleErr != nil {
		cause = fmt.Errorf("%w (%w: %w)", cause, errs.ErrNotReleased, settleErr)
	}
	return cause
}

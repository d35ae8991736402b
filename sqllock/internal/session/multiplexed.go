package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/keylock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A multiplexed is the sessions that a Manager's locks share (see
// Config.Multiplex), and the in-process table its holders queue in:
// holders in one process exclude each other exactly as holders in two
// processes do (PostgreSQL would grant a session a lock it already holds).
type multiplexed struct {
	m    *Manager
	n    int
	keys keylock.Table[keyspace.Key]

	mu   sync.Mutex
	open []*session // live multiplexed sessions
}

// take returns a multiplexed session for an acquisition: a new one while fewer
// than n are open, else the one with the fewest users. The session counts
// the caller as a user until done.
func (p *multiplexed) take(ctx context.Context) (*session, error) {
	p.mu.Lock()
	if len(p.open) >= p.n {
		best := p.open[0]
		for _, s := range p.open[1:] {
			if s.users < best.users {
				best = s
			}
		}
		best.users++
		p.mu.Unlock()
		return best, nil
	}
	// Reserve the slot before dialling, so that concurrent callers do not
	// open more than n. Others may queue for this session meanwhile, each
	// until its own context ends (see session.lockConn).
	s := &session{m: p.m, mux: p, users: 1}
	s.carried = s.first[:0]
	p.open = append(p.open, s)
	s.connMu.Lock() // until the connection is there
	p.mu.Unlock()
	// The connection carries no lock yet: opening it follows the caller's
	// context and the pool's own settings, not the keep-alive timeout (a
	// slow server is not a lost one).
	conn, err := p.dial(ctx)
	if err != nil {
		s.dialErr, s.dialCtxEnded = err, errs.CtxEnded(ctx)
		s.connMu.Unlock()
		p.retire(s)
		p.done(s)
		return nil, err
	}
	s.conn = conn
	s.connMu.Unlock()
	return s, nil
}

// dial opens the connection of a new multiplexed session under ctx, even where
// the driver does not bound its connect by ctx (lib/pq's startup waits on
// a silent network): a dial the caller gave up on goes on in the
// background and gives its connection back to the pool.
func (p *multiplexed) dial(ctx context.Context) (*sql.Conn, error) {
	if ctx.Done() == nil || p.m.boundsContext {
		return p.m.db.Conn(ctx)
	}
	type dialed struct {
		conn *sql.Conn
		err  error
	}
	ch := make(chan dialed, 1)
	go func() {
		conn, err := p.m.db.Conn(ctx)
		ch <- dialed{conn, err}
	}()
	select {
	case d := <-ch:
		return d.conn, d.err
	case <-ctx.Done():
	}
	go func() {
		if d := <-ch; d.conn != nil {
			_ = d.conn.Close()
		}
	}()
	return nil, ctx.Err()
}

// done ends a user's use of s; the last user of a live session gives its
// connection back to the pool.
func (p *multiplexed) done(s *session) {
	p.mu.Lock()
	s.users--
	last := s.users == 0 && !s.dead.Load()
	if last {
		s.dead.Store(true)
		p.removeLocked(s)
	}
	p.mu.Unlock()
	if !last {
		return
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	p.m.sched.Cancel(s)
	s.connMu.Lock() // a probe in flight finishes first
	defer s.connMu.Unlock()
	if s.held && s.heldTx != nil {
		// A transaction that carries nothing, which every path that lets go
		// of a lock ends: should one be left, it ends here, or its server
		// session does.
		x := s.heldTx
		if _, abandoned, _, err := p.m.heldMuxRun(s, x.End(p.m.heldSplit.Load())); abandoned || err != nil {
			if !abandoned {
				_ = p.m.settler.EndTx(s.conn, x.PID, x.Start, keyspace.Key{})
			}
			return
		}
		p.m.closeHeldTx(s)
	}
	if s.conn != nil {
		s.mu.Lock()
		unclean := s.unclean
		s.mu.Unlock()
		if unclean {
			p.m.settler.Discard(s.conn)
		} else if err := s.conn.Close(); err != nil {
			p.m.settler.Discard(s.conn)
		}
	}
}

// retire takes s out of the multiplexed sessions: it is lost or unusable, and gets no new
// users.
func (p *multiplexed) retire(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.dead.Store(true)
	p.removeLocked(s)
}

func (p *multiplexed) removeLocked(s *session) {
	if i := slices.Index(p.open, s); i >= 0 {
		p.open = slices.Delete(p.open, i, i+1)
	}
}

// acquireMultiplexed takes the lock for a Manager with Multiplex: first in
// the process's table, then on a multiplexed session, or, when another
// process holds it and the caller waits, on a connection of its own.
func (m *Manager) acquireMultiplexed(ctx context.Context, t *Target, req Request) (*Grant, error) {
	m.warnFewConns(t)
	keys := &m.mux.keys
	if req.Try {
		if !keys.TryLock(t.Key, req.Shared) {
			return nil, nil
		}
	} else if err := keys.Lock(ctx, t.Key, req.Shared); err != nil {
		return nil, fmt.Errorf("waiting for a holder in this process: %w", err)
	}
	g, err := m.lockMultiplexed(ctx, t, req)
	if err == nil && g == nil && !req.Try {
		// Another process holds it: wait in the server, on a connection
		// of its own.
		g, err = m.acquireConn(ctx, t, req)
	}
	if err != nil || g == nil {
		keys.Unlock(t.Key, req.Shared)
		return nil, err
	}
	g.inproc.Store(true)
	if g.Err() != nil {
		g.leaveTable() // lost already: its loss found no table entry to leave
	}
	return g, nil
}

// lockMultiplexed tries the lock on a multiplexed session, in one round
// trip bounded by the keep-alive timeout. It returns (nil, nil) when
// another process holds the lock.
func (m *Manager) lockMultiplexed(ctx context.Context, t *Target, req Request) (*Grant, error) {
	p, shared := m.mux, req.Shared
	// Other shared holders of this process: the session may carry the key
	// already (see sqltext.waiterQueued), which the session tells below.
	others := false
	if shared {
		n, _ := p.keys.Held(t.Key)
		others = n > 1
	}
	dead := 0 // sessions found dead, and retried
	for attempt := 0; ; attempt++ {
		s, err := p.take(ctx)
		if err != nil {
			return nil, errs.WithCtxErr(ctx, err)
		}
		if err := s.lockConn(ctx); err != nil {
			// Queued behind a statement on the session, or its dial: the
			// caller's context ended first.
			p.done(s)
			return nil, errs.WithCtxErr(ctx, context.Cause(ctx))
		}
		if s.held && !s.dead.Load() {
			// A pooler's session (see heldmux.go).
			g, retry, err := m.lockHeldMux(ctx, s, t, req, others, false)
			if retry && dead < p.n+p.m.db.Stats().Idle+1 {
				dead++
				attempt--
				continue
			}
			return g, err
		}
		if s.dead.Load() || s.conn == nil {
			// Lost, or never connected, since it was taken: try another.
			s.connMu.Unlock()
			p.done(s)
			switch {
			case errs.CtxEnded(ctx):
				return nil, errs.WithCtxErr(ctx, context.Cause(ctx))
			case s.conn == nil && !s.dialCtxEnded:
				return nil, s.dialErr
			case s.conn == nil:
				// Its dial ended with another caller's context: not a
				// reason to give up.
				attempt--
			case attempt >= p.n:
				return nil, errors.New("no multiplexed session stayed alive long enough to take the lock")
			}
			continue
		}
		q := t.Q.Try
		switch {
		case others && s.carriesShared(t.Key):
			q = t.Q.TrySharedBehind
		case shared:
			q = t.Q.TryShared
		}
		r, abandoned, settleErr, refused := m.lockStatementMultiplexed(ctx, s, t, q)
		if !abandoned && r.err == nil && r.n&sqltext.FlagProxied != 0 {
			// The session is a pooler's, which a verify statement that took
			// nothing found: from now on its locks are held in a transaction
			// (see heldmux.go).
			s.held, s.dc = true, r.dc
			if args := m.simpleArgs(r.dc); args != nil {
				s.probeArgs = []any{args[0].Value}
			}
			g, retry, err := m.lockHeldMux(ctx, s, t, req, others, true)
			if retry && dead < p.n+p.m.db.Stats().Idle+1 {
				dead++
				attempt--
				continue
			}
			return g, err
		}
		if s.pid == 0 {
			// The session's backend, known once verified, whatever the
			// statement did: the one to end if the session is lost.
			s.pid = r.pid
		}
		if r.err == nil && r.n&sqltext.FlagRefused == 0 && s.dc == nil {
			// The session's first sound answer: it can carry locks now.
			s.dc, s.prepared = r.dc, r.prepared
			if m.cfg.Interval > 0 {
				s.mu.Lock()
				s.scheduleProbe(m.sched.Now() + m.cfg.Interval)
				s.mu.Unlock()
			}
		}
		switch {
		case abandoned:
			// The driver did not return: its session is ended, and every
			// lock on it with it.
			cause := fmt.Errorf("lock statement: %w: %w", errs.KeepAliveTimeout(m.cfg.Timeout), errAbandoned)
			if settleErr != nil {
				cause = fmt.Errorf("%w (%w: %w)", cause, errs.ErrNotReleased, settleErr)
			}
			s.lose(cause) // runLock's goroutine ends the session when the driver returns
			p.done(s)
			return nil, cause
		case refused:
			err := m.fencingErr(errs.Classify(r.err))
			if q.AfterGrant {
				// The grant may have come before the token or the lease
				// failed, and outlives the error (see Manager.undo). The
				// in-process table keeps every other holder of this
				// process off the key, so the session holds it at most
				// once and one unlock undoes it; except a shared lock
				// the session already carries, which the unlock could
				// release instead: the session goes then.
				uerr := errAmbiguousGrant
				if !shared || !s.carriesShared(t.Key) {
					uerr = m.unlockOn(s, t, shared)
				}
				if uerr != nil && !errors.Is(uerr, errs.ErrLockLost) {
					if serr := s.loseBounded(uerr); serr != nil { // gives connMu back
						err = fmt.Errorf("%w (%w)", err, serr)
					}
					p.done(s)
					return nil, err
				}
			}
			s.connMu.Unlock()
			p.done(s)
			return nil, err
		case errs.DeadSession(r.err) && !errs.CtxEnded(ctx) && dead < p.n+p.m.db.Stats().Idle+1:
			// The server ended the session while it sat in the pool or
			// carried locks (a restart, idle_session_timeout), or its
			// socket broke: what the statement took ended with it, as did
			// every lock it carried. The lock is tried on another, as in
			// the default mode (see Manager.lockStatement).
			if serr := s.loseBounded(r.err); serr != nil {
				p.done(s)
				return nil, fmt.Errorf("%w (%w)", errs.Classify(r.err), serr)
			}
			p.done(s)
			dead++
			attempt--
			continue
		case r.err != nil:
			// Whether the statement took the lock is unknown: the session
			// goes, and every lock on it.
			err := errs.Classify(errs.WithCtxErr(ctx, r.err))
			if serr := s.loseBounded(r.err); serr != nil {
				err = fmt.Errorf("%w (%w)", err, serr)
			}
			p.done(s)
			return nil, err
		case r.n&sqltext.FlagRefused != 0:
			// Refused before taking anything: the session is not usable.
			p.retire(s)
			m.settler.Discard(s.conn)
			s.connMu.Unlock()
			p.done(s)
			switch {
			case r.n&sqltext.FlagStandby != 0:
				return nil, errs.ErrStandby
			case r.n&sqltext.FlagStub != 0:
				return nil, errs.ErrStubLocks
			}
			return nil, fmt.Errorf("%w: server session %d belongs to another client connection", errs.ErrForeignSession, r.pid)
		case r.n&sqltext.FlagGranted == 0:
			s.connMu.Unlock()
			p.done(s)
			return nil, nil
		}
		if errs.CtxEnded(ctx) {
			// Granted as the caller gave up: give it back.
			err := m.unlockOn(s, t, shared)
			if err != nil && !errors.Is(err, errs.ErrLockLost) {
				if serr := s.loseBounded(err); serr != nil { // gives connMu back
					err = fmt.Errorf("%w (%w)", err, serr)
				}
			} else {
				s.connMu.Unlock()
			}
			p.done(s)
			cerr := errs.WithCtxErr(ctx, context.Cause(ctx))
			if err != nil {
				cerr = fmt.Errorf("%w (%w)", cerr, err)
			}
			return nil, cerr
		}
		g := &Grant{t: t, shared: shared, s: s, acquired: m.grantedNow(), token: r.token, onLost: req.OnLost}
		s.mu.Lock()
		s.carried = append(s.carried, g)
		s.mu.Unlock()
		s.connMu.Unlock()
		m.warnPoolFull(t)
		return g, nil
	}
}

// lockStatementMultiplexed runs lock statement q on multiplexed session s, whose connMu
// the caller holds, bounded by the keep-alive timeout rather than by ctx:
// in the caller's goroutine where the driver can be interrupted (see
// session.watched), else in a goroutine of its own (see runLockWithin).
// refused reports a server error raised on a sound session: the statement
// took nothing.
func (m *Manager) lockStatementMultiplexed(ctx context.Context, s *session, t *Target, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error, refused bool) {
	if m.interruptible(s) {
		ctx := neverEnding(ctx)
		r = s.watched(func(dc any) outcome { return m.lockOn(ctx, dc, t, q, nil) })
		return r, false, nil, r.err != nil && errs.ServerRefused(context.Background(), r.err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Timeout)
	defer cancel()
	stmtCtx := sctx // pgx bounds its own calls by their context
	if !m.boundsContext {
		stmtCtx = context.WithoutCancel(ctx) // see runLockWithin
	}
	r, abandoned, settleErr = m.runLockWithin(stmtCtx, sctx, s.conn, t, q)
	refused = r.err != nil && errs.ServerRefused(sctx, r.err)
	r.err = errs.OwnBound(sctx, m.cfg.Timeout, r.err)
	return r, abandoned, settleErr, refused
}

// unlockOn runs t's unlock statement on multiplexed session s, whose connMu
// the caller holds, bounded by the keep-alive timeout. It reports an error
// wrapping errs.ErrLockLost when the server did not find the lock, and any
// other error when the statement's outcome is unknown: the caller then
// loses the session (see session.lose). An abandoned statement's session
// is ended when its driver returns.
func (m *Manager) unlockOn(s *session, t *Target, shared bool) error {
	// The last lock on the session gives its setting back (see
	// sqltext.LeaseOff). Whoever adds one holds connMu, as the caller does.
	s.mu.Lock()
	last := len(s.carried) == 0
	s.mu.Unlock()
	q, args := t.unlockStatement(shared, s.prepared, last, s.dc, s.pid)
	var rows int64
	var abandoned bool
	var settleErr, err error
	if m.interruptible(s) {
		r := s.watched(func(dc any) outcome { return m.execOn(context.Background(), dc, q, args, s.prepared, s.pid) })
		rows, err = r.n, r.err
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
		defer cancel()
		end := func() { _ = m.settler.End(s.conn, s.pid, keyspace.Key{}) }
		stmtCtx := ctx // pgx bounds its own calls by their context
		if !m.boundsContext {
			stmtCtx = context.Background() // see runLockWithin
		}
		rows, abandoned, settleErr, err = m.execRowsWithin(stmtCtx, ctx, s.conn, q, args, s.prepared, s.pid, 0, keyspace.Key{}, end)
		err = errs.OwnBound(ctx, m.cfg.Timeout, err)
	}
	switch {
	case abandoned:
		cause := fmt.Errorf("unlock: %w: %w", errs.KeepAliveTimeout(m.cfg.Timeout), errAbandoned)
		if settleErr != nil {
			cause = fmt.Errorf("%w (%w: %w)", cause, errs.ErrNotReleased, settleErr)
		}
		return cause
	case err != nil:
		return err
	case rows != 1:
		// The unlock found nothing, so its statement gave nothing back
		// either (see sqltext.LeaseOff): the session may keep a lease, and
		// must not go back to the pool.
		s.mu.Lock()
		s.unclean = true
		s.mu.Unlock()
		return fmt.Errorf("%w: the unlock did not find it in its session (backend %d)", errs.ErrLockLost, s.pid)
	}
	return nil
}

// releaseCarried releases grant g, which multiplexed session s carries: one
// unlock statement, bounded by the keep-alive timeout rather than ctx, whose
// end would end the session and every lock on it. An unlock the server
// answers false loses g alone; one that fails ends the session, and every
// lock it carries is lost.
func (s *session) releaseCarried(ctx context.Context, g *Grant) error {
	defer s.mux.done(s)
	s.connMu.Lock()
	lost, ended := g.endForRelease()
	s.mu.Lock()
	if i := slices.Index(s.carried, g); i >= 0 {
		s.carried = slices.Delete(s.carried, i, i+1)
	}
	s.mu.Unlock()
	if ended {
		s.connMu.Unlock()
		if lost == nil {
			lost = g.unlockErr(errs.ErrNotHeld)
		}
		return lost
	}
	if s.held {
		return s.releaseHeld(g)
	}
	err := s.m.unlockOn(s, g.t, g.shared)
	switch {
	case err == nil:
		s.connMu.Unlock()
		g.observeEnd(nil)
		return nil
	case errors.Is(err, errs.ErrLockLost):
		s.connMu.Unlock()
		err = g.unlockErr(err)
		g.observeEnd(err)
		return err
	}
	// The unlock's outcome is unknown: the session goes, and every lock
	// on it; g's own lock with it.
	if serr := s.loseBounded(err); serr != nil {
		return g.unlockErr(fmt.Errorf("%w: unlock failed (%w)", serr, err))
	}
	return g.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", errs.ErrLockLost, err))
}

// lockConn takes s.connMu for a lock statement, or gives up when ctx ends:
// callers queued behind a statement that gets no answer (a stopped
// backend, a silent network), whose bound is the keep-alive timeout, stop
// waiting when their own context ends. Only a wait costs a goroutine.
func (s *session) lockConn(ctx context.Context) error {
	if s.connMu.TryLock() {
		return nil
	}
	if ctx.Done() == nil {
		s.connMu.Lock()
		return nil
	}
	var mu sync.Mutex
	taken, gaveUp := false, false
	got := make(chan struct{})
	go func() {
		s.connMu.Lock()
		mu.Lock()
		defer mu.Unlock()
		if gaveUp {
			s.connMu.Unlock()
			return
		}
		taken = true
		close(got)
	}()
	select {
	case <-got:
		return nil
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	if taken {
		return nil
	}
	gaveUp = true
	return ctx.Err()
}

// carriesShared reports whether s carries a shared grant of key k, on which
// the server would grant another shared lock without looking at its queue.
func (s *session) carriesShared(k keyspace.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.carried {
		if g.shared && g.t.Key == k {
			return true
		}
	}
	return false
}

// errAmbiguousGrant is why a multiplexed session is ended after a failed
// statement that may have granted a shared lock it already carried.
var errAmbiguousGrant = errors.New("a shared lock statement failed after its grant, on a session that carries the lock already: ending the session is the only sure release")

package sqllock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/keylock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// WithSessions makes the Locker's locks share at most n server sessions,
// instead of taking a connection each: a process can then hold thousands
// of locks on a few connections.
//
// Semantics stay those of the default mode:
//   - Holders in this process exclude each other exactly as holders in two
//     processes do (PostgreSQL would grant a session a lock it already
//     holds): they queue in the Locker first, in arrival order.
//   - An uncontended lock is one round trip on a shared session. A lock
//     that another process holds is waited for in the server, on a
//     connection of its own, and held there, as in the default mode.
//   - Statements on a shared session are bounded by the keep-alive timeout,
//     not by the caller's context, whose end would make a driver drop the
//     connection and every lock on it. A caller whose context ends stops
//     waiting; what its statement did is settled.
//   - One keep-alive probe per session and interval. When a shared session
//     dies, every lock it carries is reported lost; an unlock the server
//     answers with false loses that lock alone.
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

// A sessionPool is the shared sessions of a Locker with WithSessions, and
// the in-process table its holders queue in.
type sessionPool struct {
	l    *Locker
	n    int
	keys keylock.Table[keyspace.Key]

	mu   sync.Mutex
	open []*session // live shared sessions
}

// take returns a shared session for an acquisition: a new one while fewer
// than n are open, else the one with the fewest users. The session counts
// the caller as a user until done.
func (p *sessionPool) take(ctx context.Context) (*session, error) {
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
	s := &session{l: p.l, pool: p, users: 1}
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

// dial opens the connection of a new shared session under ctx, even where
// the driver does not bound its connect by ctx (lib/pq's startup waits on
// a silent network): a dial the caller gave up on goes on in the
// background and gives its connection back to the pool.
func (p *sessionPool) dial(ctx context.Context) (*sql.Conn, error) {
	if ctx.Done() == nil || p.l.boundsContext {
		return p.l.db.Conn(ctx)
	}
	type dialed struct {
		conn *sql.Conn
		err  error
	}
	ch := make(chan dialed, 1)
	go func() {
		conn, err := p.l.db.Conn(ctx)
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
func (p *sessionPool) done(s *session) {
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
	p.l.sched.Cancel(s)
	s.connMu.Lock() // a probe in flight finishes first
	defer s.connMu.Unlock()
	if s.conn != nil {
		if err := s.conn.Close(); err != nil {
			p.l.settler.Discard(s.conn)
		}
	}
}

// retire takes s out of the pool: it is lost or unusable, and gets no new
// users.
func (p *sessionPool) retire(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.dead.Store(true)
	p.removeLocked(s)
}

func (p *sessionPool) removeLocked(s *session) {
	if i := slices.Index(p.open, s); i >= 0 {
		p.open = slices.Delete(p.open, i, i+1)
	}
}

// acquireShared takes the lock for a Locker with WithSessions: first in the
// process's table, then on a shared session, or, when another process
// holds it and the caller waits, on a connection of its own.
func (m *Mutex) acquireShared(ctx context.Context, shared, try bool, onLost func(error), timed bool) (*hold, error) {
	op, err := m.lockOp(ctx, shared, try)
	if err != nil {
		return nil, err
	}
	keys := &m.l.pool.keys
	if try {
		if !keys.TryLock(m.key, shared) {
			return nil, nil
		}
	} else if err := keys.Lock(ctx, m.key, shared); err != nil {
		return nil, m.fail(op, fmt.Errorf("waiting for a holder in this process: %w", err))
	}
	h, err := m.lockOnShared(ctx, op, shared, onLost, timed)
	if err == nil && h == nil && !try {
		// Another process holds it: wait in the server, on a connection
		// of its own.
		h, err = m.acquireConn(ctx, shared, false, onLost, timed)
	}
	if err != nil || h == nil {
		keys.Unlock(m.key, shared)
		return nil, err
	}
	h.inproc.Store(true)
	if h.err() != nil {
		h.leaveTable() // lost already: its loss found no table entry to leave
	}
	return h, nil
}

// lockOnShared tries the lock on a shared session, in one round trip
// bounded by the keep-alive timeout. It returns (nil, nil) when another
// process holds the lock.
func (m *Mutex) lockOnShared(ctx context.Context, op string, shared bool, onLost func(error), timed bool) (*hold, error) {
	p := m.l.pool
	// Other shared holders of this process: the session may carry the key
	// already (see sqltext.waiterQueued), which the session tells below.
	others := false
	if shared {
		n, _ := p.keys.Held(m.key)
		others = n > 1
	}
	dead := 0 // sessions found dead, and retried
	for attempt := 0; ; attempt++ {
		s, err := p.take(ctx)
		if err != nil {
			return nil, m.fail(op, errs.WithCtxErr(ctx, err))
		}
		if err := s.lockConn(ctx); err != nil {
			// Queued behind a statement on the session, or its dial: the
			// caller's context ended first.
			p.done(s)
			return nil, m.fail(op, errs.WithCtxErr(ctx, context.Cause(ctx)))
		}
		if s.dead.Load() || s.conn == nil {
			// Lost, or never connected, since it was taken: try another.
			s.connMu.Unlock()
			p.done(s)
			switch {
			case errs.CtxEnded(ctx):
				return nil, m.fail(op, errs.WithCtxErr(ctx, context.Cause(ctx)))
			case s.conn == nil && !s.dialCtxEnded:
				return nil, m.fail(op, s.dialErr)
			case s.conn == nil:
				// Its dial ended with another caller's context: not a
				// reason to give up.
				attempt--
			case attempt >= p.n:
				return nil, m.fail(op, errors.New("no shared session stayed alive long enough to take the lock"))
			}
			continue
		}
		q := m.q.Try
		switch {
		case others && s.carriesShared(m.key):
			q = m.q.TrySharedBehind
		case shared:
			q = m.q.TryShared
		}
		r, abandoned, settleErr, refused := m.lockStatementOnShared(ctx, s, q)
		if s.pid == 0 {
			// The session's backend, known once verified, whatever the
			// statement did: the one to end if the session is lost.
			s.pid = r.pid
		}
		if r.err == nil && r.n&(sqltext.FlagStandby|sqltext.FlagForeign|sqltext.FlagStub) == 0 && s.dc == nil {
			// The session's first sound answer: it can carry locks now.
			s.dc, s.prepared = r.dc, r.prepared
			if m.l.cfg.interval > 0 {
				s.mu.Lock()
				s.scheduleProbe(m.l.sched.Now() + m.l.cfg.interval)
				s.mu.Unlock()
			}
		}
		switch {
		case abandoned:
			// The driver did not return: its session is ended, and every
			// lock on it with it.
			cause := fmt.Errorf("lock statement: %w: %w", errs.KeepAliveTimeout(m.l.cfg.timeout), errAbandoned)
			if settleErr != nil {
				cause = fmt.Errorf("%w (%w: %w)", cause, ErrNotReleased, settleErr)
			}
			s.lose(cause) // runLock's goroutine ends the session when the driver returns
			p.done(s)
			return nil, m.fail(op, cause)
		case refused:
			err := m.l.fencingErr(errs.Classify(r.err))
			if q.Fenced {
				// The grant may have come before the token failed, and
				// outlives the error (see Mutex.undo). The
				// in-process table keeps every other holder of this
				// process off the key, so the session holds it at most
				// once: one unlock undoes it.
				if uerr := m.unlockOn(s, false); uerr != nil && !errors.Is(uerr, ErrLockLost) {
					if serr := s.loseBounded(uerr); serr != nil { // gives connMu back
						err = fmt.Errorf("%w (%w)", err, serr)
					}
					p.done(s)
					return nil, m.fail(op, err)
				}
			}
			s.connMu.Unlock()
			p.done(s)
			return nil, m.fail(op, err)
		case errs.DeadSession(r.err) && !errs.CtxEnded(ctx) && dead < p.n+p.l.db.Stats().Idle+1:
			// The server ended the session while it sat in the pool or
			// carried locks (a restart, idle_session_timeout), or its
			// socket broke: what the statement took ended with it, as did
			// every lock it carried. The lock is tried on another, as in
			// the default mode (see Mutex.lockStatement).
			if serr := s.loseBounded(r.err); serr != nil {
				p.done(s)
				return nil, m.fail(op, fmt.Errorf("%w (%w)", errs.Classify(r.err), serr))
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
			return nil, m.fail(op, err)
		case r.n&(sqltext.FlagForeign|sqltext.FlagStandby|sqltext.FlagStub) != 0:
			// Refused before taking anything: the session is not usable.
			p.retire(s)
			m.l.settler.Discard(s.conn)
			s.connMu.Unlock()
			p.done(s)
			switch {
			case r.n&sqltext.FlagStandby != 0:
				return nil, m.fail(op, ErrStandby)
			case r.n&sqltext.FlagStub != 0:
				return nil, m.fail(op, ErrStubLocks)
			}
			return nil, m.fail(op, fmt.Errorf("%w: server session %d belongs to another client connection", ErrSharedSession, r.pid))
		case r.n&sqltext.FlagGranted == 0:
			s.connMu.Unlock()
			p.done(s)
			return nil, nil
		}
		if errs.CtxEnded(ctx) {
			// Granted as the caller gave up: give it back.
			err := m.unlockOn(s, shared)
			if err != nil && !errors.Is(err, ErrLockLost) {
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
			return nil, m.fail(op, cerr)
		}
		var acquired time.Time
		if timed {
			acquired = time.Now()
		}
		h := &hold{m: m, shared: shared, s: s, acquired: acquired, token: r.token, onLost: onLost}
		s.mu.Lock()
		s.carried = append(s.carried, h)
		s.mu.Unlock()
		s.connMu.Unlock()
		m.warnPoolFull()
		return h, nil
	}
}

// lockStatementOnShared runs lock statement q on shared session s, whose connMu
// the caller holds, bounded by the keep-alive timeout rather than by ctx:
// in the caller's goroutine where the driver can be interrupted (see
// session.watched), else in a goroutine of its own (see runLockWithin).
// refused reports a server error raised on a sound session: the statement
// took nothing.
func (m *Mutex) lockStatementOnShared(ctx context.Context, s *session, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error, refused bool) {
	if m.l.interruptible(s) {
		ctx := neverEnding(ctx)
		r = s.watched(func(dc any) outcome { return m.lockOn(ctx, dc, q, nil) })
		return r, false, nil, r.err != nil && errs.ServerRefused(context.Background(), r.err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.l.cfg.timeout)
	defer cancel()
	stmtCtx := sctx // pgx bounds its own calls by their context
	if !m.l.boundsContext {
		stmtCtx = context.WithoutCancel(ctx) // see runLockWithin
	}
	r, abandoned, settleErr = m.runLockWithin(stmtCtx, sctx, s.conn, q)
	refused = r.err != nil && errs.ServerRefused(sctx, r.err)
	r.err = errs.OwnBound(sctx, m.l.cfg.timeout, r.err)
	return r, abandoned, settleErr, refused
}

// unlockOn runs h's unlock statement on shared session s, whose connMu
// the caller holds, bounded by the keep-alive timeout. It reports an error
// wrapping ErrLockLost when the server did not find the lock, and any
// other error when the statement's outcome is unknown: the caller then
// loses the session (see session.lose). An abandoned statement's session
// is ended when its driver returns.
func (m *Mutex) unlockOn(s *session, shared bool) error {
	q, args := m.unlockStatement(shared, s.prepared)
	var rows int64
	var abandoned bool
	var settleErr, err error
	if m.l.interruptible(s) {
		r := s.watched(func(dc any) outcome { return m.l.execOn(context.Background(), dc, q, args, s.prepared, s.pid) })
		rows, err = r.n, r.err
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), m.l.cfg.timeout)
		defer cancel()
		end := func() { _ = m.l.settler.End(s.conn, s.pid, keyspace.Key{}) }
		stmtCtx := ctx // pgx bounds its own calls by their context
		if !m.l.boundsContext {
			stmtCtx = context.Background() // see runLockWithin
		}
		rows, abandoned, settleErr, err = m.l.execRowsWithin(stmtCtx, ctx, s.conn, q, args, s.prepared, s.pid, keyspace.Key{}, end)
		err = errs.OwnBound(ctx, m.l.cfg.timeout, err)
	}
	switch {
	case abandoned:
		cause := fmt.Errorf("unlock: %w: %w", errs.KeepAliveTimeout(m.l.cfg.timeout), errAbandoned)
		if settleErr != nil {
			cause = fmt.Errorf("%w (%w: %w)", cause, ErrNotReleased, settleErr)
		}
		return cause
	case err != nil:
		return err
	case rows != 1:
		return fmt.Errorf("%w: the unlock did not find it in its session (backend %d)", ErrLockLost, s.pid)
	}
	return nil
}

// releaseCarried releases hold h, which shared session s carries: one
// unlock statement, bounded by the keep-alive timeout rather than ctx, whose
// end would end the session and every lock on it. An unlock the server
// answers false loses h alone; one that fails ends the session, and every
// lock it carries is lost.
func (s *session) releaseCarried(ctx context.Context, h *hold) error {
	defer s.pool.done(s)
	s.connMu.Lock()
	lost, ended := h.endForRelease()
	s.mu.Lock()
	if i := slices.Index(s.carried, h); i >= 0 {
		s.carried = slices.Delete(s.carried, i, i+1)
	}
	s.mu.Unlock()
	if ended {
		s.connMu.Unlock()
		if lost == nil {
			lost = h.unlockErr(ErrNotHeld)
		}
		return lost
	}
	err := h.m.unlockOn(s, h.shared)
	switch {
	case err == nil:
		s.connMu.Unlock()
		h.observeEnd(EventReleased, nil)
		return nil
	case errors.Is(err, ErrLockLost):
		s.connMu.Unlock()
		err = h.unlockErr(err)
		h.observeEnd(EventLost, err)
		return err
	}
	// The unlock's outcome is unknown: the session goes, and every lock
	// on it; h's own lock with it.
	if serr := s.loseBounded(err); serr != nil {
		return h.unlockErr(fmt.Errorf("%w: unlock failed (%w)", serr, err))
	}
	return h.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", ErrLockLost, err))
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

// carriesShared reports whether s carries a shared hold of key k, on which
// the server would grant another shared hold without looking at its queue.
func (s *session) carriesShared(k keyspace.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.carried {
		if h.shared && h.m.key == k {
			return true
		}
	}
	return false
}

package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// acquireConn takes the lock on a connection of its own. With req.Try, it
// returns (nil, nil) if another session holds the key.
func (m *Manager) acquireConn(ctx context.Context, t *Target, req Request) (*Grant, error) {
	shared, try := req.Shared, req.Try
	var q *sqltext.LockStmt
	switch {
	case try && shared:
		q = t.Q.TryShared
	case try:
		q = t.Q.Try
	case shared:
		q = t.Q.LockShared
	default:
		q = t.Q.Lock
	}
	r, conn, err := m.lockStatement(ctx, t, q)
	if err != nil {
		cause := m.fencingErr(errs.Classify(errs.WithCtxErr(ctx, err)))
		if errs.IsDriverTimeout(ctx, err) {
			cause = fmt.Errorf("%w: %w", errs.ErrDriverTimeout, err)
		}
		switch {
		case conn == nil:
		case errs.ServerRefused(ctx, err) && q.AfterGrant:
			// The statement takes the lock before its token, whose
			// transaction id can fail (a full lock table), or its lease:
			// the grant survives the error, so it is undone on the same
			// session, which holds nothing else.
			if uerr := m.undo(conn, r.dc, t, r.pid, shared, r.prepared, false); uerr != nil {
				cause = fmt.Errorf("%w (%w)", cause, uerr)
			}
		case errs.ServerRefused(ctx, err):
			// The server answered the statement with an error of its own
			// (a full lock table, a deadlock): it took nothing, and the
			// session is sound.
			if cerr := conn.Close(); cerr != nil {
				m.settler.Discard(conn)
			}
		case !r.ran:
			// No lock statement was sent: nothing was taken. Behind a
			// pooler, the backend the session check reached may serve
			// another client by now, which ending it would hurt.
			m.settler.Discard(conn)
		default:
			// The lock may or may not have been granted before the error (a
			// cancel racing the grant, an answer that makes no sense): only
			// ending the session is safe.
			if serr := m.settler.End(conn, r.pid, t.Key); serr != nil {
				cause = fmt.Errorf("%w (%w)", cause, serr)
			}
		}
		return nil, cause
	}
	switch {
	case r.n&sqltext.FlagProxied != 0:
		// Nothing was taken: the pooler's session holds the lock in a
		// transaction.
		g, err := m.acquireHeld(ctx, conn, t, req)
		if errors.Is(err, errHeldRetry) {
			req.retried = true
			return m.acquireConn(ctx, t, req)
		}
		return g, err
	case r.n&sqltext.FlagForeign != 0:
		// Nothing was taken. The session belongs to another client too.
		m.settler.Discard(conn)
		return nil, fmt.Errorf("%w: server session %d belongs to another client connection (it carries another connection's sqllock owner token)", errs.ErrForeignSession, r.pid)
	case r.n&sqltext.FlagStandby != 0:
		// Nothing was taken: the connection is clean.
		if err := conn.Close(); err != nil {
			m.settler.Discard(conn)
		}
		return nil, errs.ErrStandby
	case r.n&sqltext.FlagStub != 0:
		if err := conn.Close(); err != nil {
			m.settler.Discard(conn)
		}
		return nil, errs.ErrStubLocks
	case ctx.Err() != nil:
		// The answer came, but the context ended meanwhile: the caller
		// holds nothing, so a grant is undone. The driver may have sent
		// the server a cancel request for the statement, which can land on
		// whatever statement the session runs next (pgx's
		// CancelRequestContextWatcherHandler calls it inherently racy): the
		// connection does not go back to the pool.
		cerr := ctx.Err()
		if r.n&sqltext.FlagGranted != 0 {
			if err := m.undo(conn, r.dc, t, r.pid, shared, r.prepared, true); err != nil {
				return nil, fmt.Errorf("%w (%w)", cerr, err)
			}
		} else {
			m.settler.Discard(conn)
		}
		return nil, cerr
	case r.n&sqltext.FlagGranted == 0:
		if err := conn.Close(); err != nil {
			m.settler.Discard(conn)
		}
		return nil, nil
	}
	g := m.newGrant(conn, r, t, req)
	m.warnPoolFull(t)
	return g, nil
}

// undo releases a lock that a call which is failing may have been
// granted on conn, bounded by the keep-alive timeout rather than the
// caller's context; if the release is not confirmed, the session is ended.
// After a cancelled wait (cancelled: the grant is known) conn is discarded,
// since the driver may have sent the server a cancel request that could
// land on the next statement (see acquireConn); after the error of a
// statement that works after its grant (sqltext.LockStmt.AfterGrant), which
// may or may not have granted the lock, the session is sound and conn goes
// back to the pool.
func (m *Manager) undo(conn *sql.Conn, dc any, t *Target, pid int64, shared, prepared, cancelled bool) error {
	q, args := t.unlockStatement(shared, prepared, true, dc, pid)
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
	defer cancel()
	rows, abandoned, settleErr, err := m.execRows(ctx, conn, q, args, prepared, pid, 0, t.Key, func() { _ = m.settler.End(conn, pid, t.Key) })
	switch {
	case abandoned && settleErr != nil:
		return fmt.Errorf("%w: the release of a lock granted as the call failed got no answer within %v, and its session could not be ended: %w", errs.ErrNotReleased, m.cfg.Timeout, settleErr)
	case abandoned:
		return nil // the session ended on the server; the driver has yet to notice
	case err != nil || rows < 0 || cancelled && rows != 1:
		return m.settler.End(conn, pid, t.Key)
	case cancelled:
		m.settler.Discard(conn)
	default:
		if cerr := conn.Close(); cerr != nil {
			m.settler.Discard(conn)
		}
	}
	return nil
}

// lockStatement takes a connection and runs the lock statement q on it.
// A pooled connection whose session the server already ended (a restart,
// idle_session_timeout, a broken socket) held nothing: it is discarded
// and the statement tried on another. Every idle connection may be such a
// one, after which the pool dials a new one; so the retries are bounded
// by the idle count.
//
// It returns the outcome (see lockOn) and the connection. With an error,
// conn is the connection the caller must end (see settle.Settler.End), or
// nil when nothing is left to end (no connection, or one abandoned to a
// statement still running, which ends it when the statement returns).
func (m *Manager) lockStatement(ctx context.Context, t *Target, q *sqltext.LockStmt) (r outcome, conn *sql.Conn, err error) {
	retries := -1
	for {
		conn, err = m.db.Conn(ctx)
		if err != nil {
			return outcome{}, nil, err
		}
		var abandoned bool
		var settleErr error
		if m.pooled.Load() {
			// Behind a pooler, a new connection's check must not see ctx
			// end: a driver would send the pooler a cancel request, on
			// which PgBouncer before 1.21 can exit (see acquireHeld). ctx
			// bounds only the wait for it; one that outlives ctx is
			// abandoned, and its connection discarded when it returns.
			r, abandoned, settleErr = m.runLockWithin(neverEnding(ctx), ctx, conn, t, q)
		} else {
			r, abandoned, settleErr = m.runLock(ctx, conn, t, q)
		}
		switch {
		case abandoned && settleErr != nil:
			return r, nil, fmt.Errorf("%w (%w: backend %d: %w)", r.err, errs.ErrNotReleased, r.pid, settleErr)
		case abandoned:
			return r, nil, r.err
		case r.err == nil || errs.CtxEnded(ctx) || !errs.DeadSession(r.err):
			return r, conn, r.err
		}
		// A lock statement sent on a session that turns out dead took
		// nothing that outlives the session; ending it proves it.
		if !r.ran {
			m.settler.Discard(conn)
		} else if err := m.settler.End(conn, r.pid, t.Key); err != nil {
			return r, nil, fmt.Errorf("%w (%w)", r.err, err)
		}
		if retries < 0 {
			retries = m.db.Stats().Idle + 1
		}
		if retries == 0 {
			return r, nil, r.err
		}
		retries--
	}
}

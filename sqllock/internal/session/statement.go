package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// runLock runs lock statement q on conn (see lockOn). It is bounded by ctx
// even where the driver is not: lib/pq answers a cancelled context by
// sending the server a cancel request and waiting for the server's reply,
// which on a silent network never comes, and bun's pgdriver does not
// interrupt the statement at all. pgx bounds its own calls with network
// deadlines, so with pgx (and with a context that never ends) the
// statement runs inline.
//
// Otherwise, when ctx ends and the driver has not returned abandonGrace
// later, the session the lock statement went to is ended on the server
// (see Manager.awaitBounded), and a statement not yet sent is never sent.
// If the driver still does not return, runLock returns ctx.Err() and
// abandoned is true: the statement goes on in the background, and its
// session is ended once the driver returns. The caller must not touch
// conn again.
func (m *Manager) runLock(ctx context.Context, conn *sql.Conn, t *Target, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error) {
	return m.runLockWithin(ctx, ctx, conn, t, q)
}

// runLockWithin is runLock with the statement run under ctx and the wait
// for it bounded by stop: a statement on a multiplexed session must not see
// its caller's context end (both drivers then destroy the connection), and
// one whose context never ends spares lib/pq a goroutine that watches it.
// pgx runs inline when ctx bounds it; under a ctx that never ends, it runs
// in a goroutine, bounded by stop, as lib/pq does.
func (m *Manager) runLockWithin(ctx, stop context.Context, conn *sql.Conn, t *Target, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error) {
	if stop.Done() == nil || m.boundsContext && ctx.Done() != nil {
		return m.lockRaw(ctx, conn, t, q, nil), false, nil
	}
	var f inFlight
	done := make(chan outcome, 1)
	go func() { done <- m.lockRaw(ctx, conn, t, q, &f) }()
	end := func(sctx context.Context) error {
		if pid := f.close(); pid != 0 {
			return m.settler.Terminate(sctx, pid, t.Key)
		}
		return nil
	}
	r, abandoned, settleErr = m.awaitBounded(stop, graceFor(ctx), done, end, func(r outcome) {
		if !r.ran {
			m.settler.Discard(conn) // nothing taken (see acquireConn)
			return
		}
		_ = m.settler.End(conn, r.pid, t.Key)
	})
	if abandoned {
		r.pid = f.close()
	}
	return r, abandoned, settleErr
}

// inFlight tells runLock which session a lock statement running in the
// background went to, and stops one not yet sent. A nil *inFlight (the
// statement runs inline) lets every statement go.
type inFlight struct {
	mu     sync.Mutex
	pid    int64
	closed bool
}

// send records that a lock statement is about to go to backend pid, and
// reports false if runLock has given up on it: it must not be sent.
func (f *inFlight) send(pid int64) bool {
	if f == nil {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.pid = pid
	return true
}

// close stops later sends and returns the backend of the last one, or 0.
func (f *inFlight) close() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return f.pid
}

// lockRaw runs lockOn on conn's driver connection: one conn.Raw finds it
// and runs the statement.
func (m *Manager) lockRaw(ctx context.Context, conn *sql.Conn, t *Target, q *sqltext.LockStmt, f *inFlight) (r outcome) {
	if err := conn.Raw(func(dc any) error {
		r = m.lockOn(ctx, dc, t, q, f)
		return nil
	}); err != nil {
		r.err = err
	}
	return r
}

// lockOn runs lock statement q on driver connection dc, in its guarded
// form for dc's session, which the Manager verifies first if it has not
// (see Manager.guarded). A guarded form that finds another session on the
// connection (a transaction pooler moved it) took nothing: the new
// session is verified and the lock tried there, once.
//
// r.n holds sqltext.FlagGranted, or the verify statement's refusal flags; r.pid is
// the session's backend pid once known, also with an error; r.ran reports
// whether a lock statement was sent.
func (m *Manager) lockOn(ctx context.Context, dc any, t *Target, q *sqltext.LockStmt, f *inFlight) (r outcome) {
	r.dc = dc
	for moved := false; ; moved = true {
		g, pid, flags, err := m.guarded(ctx, dc, q, &t.cache[0][q.Kind])
		r.pid, r.n = pid, flags
		if err != nil || flags != 0 {
			r.err = err
			return r
		}
		args, sent := t.named, q
		r.prepared = m.prepared && m.stmts.Direct(dc, pid)
		if m.prepared && !r.prepared {
			lq := t.literal()
			sent, args = lq.Stmt(q.Kind), nil
			g = sent.GuardedFor(&t.cache[1][q.Kind], drv.ConnPointer(dc), g.Conn, pid)
		}
		if !f.send(pid) {
			r.err = errs.WithCtxErr(ctx, context.Cause(ctx))
			return r
		}
		r.ran = true
		var v any
		if r.prepared {
			v, err = m.stmts.QueryValue(ctx, dc, pid, g.Text, args)
		} else {
			v, err = drv.QueryValue(ctx, dc, g.Text, args)
		}
		switch {
		case err == nil && q.Fenced:
			r.token, r.err = sqltext.FencedAnswer(v)
			if r.token != 0 {
				r.n = sqltext.FlagGranted
			}
			return r
		case err == nil:
			granted, err := guardedAnswer(v)
			r.err = err
			if granted {
				r.n = sqltext.FlagGranted
			}
			return r
		case !errors.Is(err, sql.ErrNoRows) && !m.statementGone(err) || errs.CtxEnded(ctx):
			r.err = err
			return r
		case moved:
			r.err = fmt.Errorf("%w: the connection reached another server session with each statement", errs.ErrForeignSession)
			return r
		}
		// Another session, and nothing taken: forget the one verified,
		// here and in this statement's cache.
		m.verified.forget(g.Conn, g.PID)
		m.stmts.Drop(dc) // prepared in the session that is gone
		t.cache[0][q.Kind].Forget()
		t.cache[1][q.Kind].Forget()
	}
}

// statementGone reports whether err says that a statement sqllock prepared
// on the connection does not exist in its session (SQLSTATE 26000): a
// pooler moved the connection to another session, where the statement
// never ran, as the guarded form's empty answer says on drivers whose
// statements are not prepared by sqllock.
func (m *Manager) statementGone(err error) bool {
	return m.prepared && errs.StatementGone(err)
}

// lockAnswer reads the verify statement's answer (see sqltext.BuildVerify) from
// what the driver gave.
func lockAnswer(v any) (int64, error) {
	if n, ok := intAnswer(v); ok {
		return n, nil
	}
	return 0, fmt.Errorf("the session check answered %T %v, not an integer: the session is discarded", v, v)
}

// intAnswer reads an integer answer as drivers give it: int64 (binary
// results), or its text ([]byte, string).
func intAnswer(v any) (int64, bool) {
	var err error
	var n int64
	switch a := v.(type) {
	case int64:
		return a, true
	case []byte:
		n, err = strconv.ParseInt(string(a), 10, 64)
	case string:
		n, err = strconv.ParseInt(a, 10, 64)
	default:
		return 0, false
	}
	return n, err == nil
}

// guardedAnswer reads a guarded lock statement's answer: whether the lock
// was granted.
func guardedAnswer(v any) (bool, error) {
	switch a := v.(type) {
	case bool:
		return a, nil
	case []byte:
		if b, err := strconv.ParseBool(string(a)); err == nil {
			return b, nil
		}
	case string:
		if b, err := strconv.ParseBool(a); err == nil {
			return b, nil
		}
	}
	return false, fmt.Errorf("the lock statement answered %T %v, not a boolean: whether the session holds the lock is unknown, so it is discarded", v, v)
}

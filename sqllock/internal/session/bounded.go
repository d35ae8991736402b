package session

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
)

// execRows runs statement q on conn's driver connection (as a statement
// prepared there when prepared: see drv.StmtCache) and returns the number of
// rows it produced, bounded by ctx as runLock is. It costs less than
// a query: no rows to read. q runs in the session of backend pid
// and concerns lock k: if ctx ends and the driver does not return, that
// backend is ended on the server (see Manager.awaitBounded). If the
// statement is abandoned all the same, onAbandon runs once the driver
// returns; settleErr says why the session could not be ended.
func (m *Manager) execRows(ctx context.Context, conn *sql.Conn, q string, args []driver.NamedValue, prepared bool, pid, tx int64, k keyspace.Key, onAbandon func()) (n int64, abandoned bool, settleErr error, err error) {
	return m.execRowsWithin(ctx, ctx, conn, q, args, prepared, pid, tx, k, onAbandon)
}

// execRowsWithin is execRows with the statement run under ctx and the
// wait for it bounded by stop (see runLockWithin).
func (m *Manager) execRowsWithin(ctx, stop context.Context, conn *sql.Conn, q string, args []driver.NamedValue, prepared bool, pid, tx int64, k keyspace.Key, onAbandon func()) (n int64, abandoned bool, settleErr error, err error) {
	if m.boundsContext || stop.Done() == nil {
		r := m.execRaw(ctx, conn, q, args, prepared, pid)
		return r.n, false, nil, r.err
	}
	done := make(chan outcome, 1)
	go func() { done <- m.execRaw(ctx, conn, q, args, prepared, pid) }()
	end := func(ctx context.Context) error { return m.settler.TerminateTx(ctx, pid, tx, k) }
	r, abandoned, settleErr := m.awaitBounded(stop, graceFor(ctx), done, end, func(outcome) { onAbandon() })
	return r.n, abandoned, settleErr, r.err
}

// neverEnding returns ctx's values in a context that never ends: ctx
// itself when it never ends, which spares an allocation.
func neverEnding(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

// graceFor is how long awaitBounded gives a driver running a statement
// under ctx to return by itself once the wait's bound has passed: none
// when ctx never ends, since nothing then tells the driver to stop.
func graceFor(ctx context.Context) time.Duration {
	if ctx.Done() == nil {
		return 0
	}
	return AbandonGrace
}

func (m *Manager) execRaw(ctx context.Context, conn *sql.Conn, q string, args []driver.NamedValue, prepared bool, pid int64) (r outcome) {
	if err := conn.Raw(func(dc any) error {
		r = m.execOn(ctx, dc, q, args, prepared, pid)
		return nil
	}); err != nil {
		r.err = err
	}
	return r
}

// execOn runs statement q on driver connection dc, as execRows does.
func (m *Manager) execOn(ctx context.Context, dc any, q string, args []driver.NamedValue, prepared bool, pid int64) (r outcome) {
	if prepared {
		r.n, r.err = m.stmts.ExecRows(ctx, dc, pid, q, args)
	} else {
		r.n, r.err = drv.ExecRows(ctx, dc, q, args)
	}
	return r
}

// outcome is what a statement reports, from the background or not.
type outcome struct {
	n        int64  // execRows's row count, or lockOn's flags
	token    uint64 // lockOn: the fencing token of a fenced grant
	pid      int64  // lockOn: the session's backend pid, once known
	ran      bool   // lockOn: a lock statement was sent
	prepared bool   // lockOn: it was a statement prepared on the connection (see drv.StmtCache)
	dc       any    // lockOn's driver connection
	held     bool   // the grant is held in a transaction (see acquireHeld)
	tx       int64  // that transaction's start (see sqltext.XactStart)
	v        any    // heldMuxRun: the first statement's answer
	err      error
}

// awaitBounded waits for a statement running in the background to report
// on done. If ctx ends first, it gives the driver grace to return
// (a live server answers a driver's cancel request within a round trip or
// two); then it ends the statement's session on the server with settle
// (pg_terminate_backend from another connection, which also makes the
// driver's call fail at once), bounded by the keep-alive timeout, and
// waits as long again for the driver. A driver that still has not
// returned (a silent network) is abandoned: abandoned is true, settleErr
// says whether the session was seen to end, and onAbandon runs with the
// statement's outcome once the driver returns: it must end the
// connection's session.
func (m *Manager) awaitBounded(ctx context.Context, grace time.Duration, done chan outcome, end func(context.Context) error, onAbandon func(outcome)) (r outcome, abandoned bool, settleErr error) {
	select {
	case r := <-done:
		return r, false, nil
	case <-ctx.Done():
	}
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case r := <-done:
			return r, false, nil
		case <-t.C:
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), min(m.cfg.Timeout, settle.Bound))
	defer cancel()
	// Settle in the background, so that a settle whose own queries hang
	// is bounded too; wait for it even once the driver returns, so that
	// nothing the call started outlives it, except a settle still stuck
	// when its bound passes (its queries on a silent network), which
	// ends when its driver returns, as the abandoned statement does.
	settled := make(chan error, 1)
	go func() { settled <- end(sctx) }()
	select {
	case settleErr = <-settled:
	case <-sctx.Done():
		settleErr = fmt.Errorf("%w (%v)", errs.ErrNoAnswer, min(m.cfg.Timeout, settle.Bound))
	}
	if settleErr == nil {
		select {
		case r := <-done:
			return r, false, nil
		case <-sctx.Done():
		}
	}
	go func() { onAbandon(<-done) }()
	return outcome{err: ctx.Err()}, true, settleErr
}

// AbandonGrace is how long runLock and execRows wait, after their
// context ends, for a driver that does not bound its own calls to return.
const AbandonGrace = 250 * time.Millisecond

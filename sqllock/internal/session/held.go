package session

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// Behind a transaction-mode pooler (PgBouncer, Supavisor, Neon's and RDS
// Proxy's), a client connection keeps one server session only from BEGIN
// to the transaction's end. A connection whose session is not its own
// (the pid the server sent at startup is not pg_backend_pid(): see
// drv.StartupPID) holds its lock in a transaction it opens and keeps open
// for as long as it holds the lock: a transaction-level lock, which
// whatever ends the transaction releases (the unlock's ROLLBACK, an
// error, the client going away, the server ending the session), so that
// no server session goes back to the pooler carrying it. The keep-alive
// probes inside the transaction, which keeps it from idling into
// idle_in_transaction_session_timeout, and a lease is that setting, for
// the transaction alone (see sqltext.BuildHeld).

// proxiedPID is what the verified cache remembers of a driver connection
// whose sessions are a pooler's: its locks are held in a transaction.
const proxiedPID = -1

// checkHeld makes sure that a lock held in a transaction on driver
// connection dc survives the server's idle_in_transaction_session_timeout:
// the keep-alive must touch the transaction more often. A session whose
// default isolation keeps a snapshot (REPEATABLE READ, SERIALIZABLE) gets
// its held transactions begun apart, READ COMMITTED (see beginHeld).
func (m *Manager) checkHeld(ctx context.Context, dc any) error {
	v, err := drv.QueryValue(ctx, dc, sqltext.HeldSettingsSQL, nil)
	if err != nil {
		return err
	}
	n, ok := intAnswer(v)
	if !ok {
		return fmt.Errorf("idle_in_transaction_session_timeout read as %T %v, not an integer", v, v)
	}
	ms := n >> 1
	if n&1 == 1 {
		m.heldBeginFirst.Store(true)
	}
	if ms != 0 {
		m.serverIdleInTx.Store(true)
	}
	need := m.cfg.Interval + m.cfg.Timeout
	if ms == 0 || m.cfg.Interval > 0 && time.Duration(ms)*time.Millisecond > need {
		return nil
	}
	if m.cfg.Interval <= 0 {
		return fmt.Errorf("%w: the server's idle_in_transaction_session_timeout is %v, and the keep-alive is off: behind a pooler a lock is held in an open transaction, which that setting ends while it idles; turn the keep-alive on (WithKeepAlive) or set the timeout to 0 for this role",
			errs.ErrIdleInTransaction, time.Duration(ms)*time.Millisecond)
	}
	return fmt.Errorf("%w: the server's idle_in_transaction_session_timeout is %v: behind a pooler a lock is held in an open transaction, which that setting would end between keep-alive probes (every %v, each up to %v); raise it above %v for this role, or probe more often (WithKeepAlive)",
		errs.ErrIdleInTransaction, time.Duration(ms)*time.Millisecond, m.cfg.Interval, m.cfg.Timeout, need)
}

// acquireHeld takes t's lock as req asks, on conn, whose sessions are a
// pooler's, in a transaction held open for as long as the lock is: a try
// that begins that transaction and answers the session's backend pid and
// the transaction's start (see sqltext.Marked), then, if the lock is taken
// and req waits, the wait, which knows the session to end should the
// driver not return. A call that fails rolls the transaction back, or
// ends its session.
func (m *Manager) acquireHeld(ctx context.Context, conn *sql.Conn, t *Target, req Request) (*Grant, error) {
	h := t.held()
	try := h.Try
	if req.Shared {
		try = h.TryShared
	}
	mark := sqltext.NewMark()
	split := m.heldSplit.Load() || m.heldBeginFirst.Load()
	if split {
		if err := m.beginHeld(ctx, conn, mark, req.retried); err != nil {
			return nil, err
		}
	}
	// ctx bounds the wait for the try as it bounds the wait for the lock:
	// a pooler whose server connections are all busy queues the try until
	// one is free. The try itself runs under a context that never ends: a
	// driver that stopped it (pgx ends the connection; lib/pq sends the
	// pooler a cancel request, which PgBouncer before 1.21 can crash on,
	// pgbouncer/pgbouncer#822) could leave its lock taken with no answer,
	// where a try that answers within abandonGrace of ctx's end is rolled
	// back like any other. One that does not is abandoned: its mark finds
	// its session on the server, now and once the driver returns (a try
	// still queued in the pooler runs only then).
	r, abandoned, settleErr := m.heldQuery(neverEnding(ctx), ctx, conn, sqltext.Marked(mark, try, !split), mark, true)
	if abandoned {
		return nil, abandonedErr(errs.WithCtxErr(ctx, r.err), settleErr)
	}
	if r.err != nil {
		if !split && errs.MultipleCommands(r.err) {
			// A driver that runs every query in the extended protocol
			// takes one statement at a time: BEGIN goes alone from now on.
			m.heldSplit.Store(true)
			return m.acquireHeld(ctx, conn, t, req)
		}
		if heldSessionDied(ctx, r.err, req.retried) {
			// Whatever the try took ended with its server session: once
			// the server shows it gone, the lock is tried again on another.
			if serr := m.settler.EndMarked(conn, mark); serr == nil {
				return nil, errHeldRetry
			}
		}
		cause := heldRefusal(ctx, r.err)
		if cause == nil {
			cause = m.fencingErr(errs.Classify(errs.WithCtxErr(ctx, r.err)))
			if errs.IsDriverTimeout(ctx, r.err) {
				cause = fmt.Errorf("%w: %w", errs.ErrDriverTimeout, r.err)
			}
		}
		var serr error
		switch {
		case errs.ServerRefused(ctx, r.err) && !split:
			// The server answered with an error: the statement's
			// transaction ended with it, before its BEGIN.
			closeOrDiscard(m, conn)
		case errs.ServerRefused(ctx, r.err):
			// BEGIN went first: the error left that transaction open,
			// aborted, with whatever the try took until it ends.
			if serr = m.rollbackHeld(conn, 0, 0, t.Key); serr != nil {
				serr = m.settler.EndMarked(conn, mark)
			}
		default:
			serr = m.settler.EndMarked(conn, mark)
		}
		if serr != nil {
			cause = fmt.Errorf("%w (%w)", cause, serr)
		}
		return nil, cause
	}
	pid, granted, tx := r.pid, r.n == 1, r.tx
	if !granted && req.Try {
		return nil, m.rollbackHeld(conn, pid, tx, t.Key)
	}
	if !granted {
		wait := h.Wait
		if req.Shared {
			wait = h.WaitShared
		}
		rows, abandoned, settleErr, err := m.heldWait(ctx, conn, wait, pid, tx, t.Key)
		switch {
		case abandoned:
			return nil, abandonedErr(errs.WithCtxErr(ctx, err), settleErr)
		case err != nil:
			cause := errs.Classify(errs.WithCtxErr(ctx, err))
			if errs.IsDriverTimeout(ctx, err) {
				cause = fmt.Errorf("%w: %w", errs.ErrDriverTimeout, err)
			}
			if rerr := m.rollbackHeld(conn, pid, tx, t.Key); rerr != nil {
				cause = fmt.Errorf("%w (%w)", cause, rerr)
			}
			return nil, cause
		case rows != 1:
			// The wait answers one row once granted; anything else leaves
			// the lock's state unknown.
			cause := fmt.Errorf("the lock statement answered %d rows, not one: whether the session holds the lock is unknown, so it is ended", rows)
			if serr := m.settler.EndTx(conn, pid, tx, t.Key); serr != nil {
				cause = fmt.Errorf("%w (%w)", cause, serr)
			}
			return nil, cause
		}
	}
	if ctx.Err() != nil {
		// Granted as the caller gave up: give it back.
		cerr := errs.WithCtxErr(ctx, context.Cause(ctx))
		if err := m.rollbackHeld(conn, pid, tx, t.Key); err != nil {
			return nil, fmt.Errorf("%w (%w)", cerr, err)
		}
		return nil, cerr
	}
	var token uint64
	if m.cfg.Fencing && !req.Shared {
		var err error
		if token, err = m.heldToken(ctx, pid, t); err != nil {
			if rerr := m.rollbackHeld(conn, pid, tx, t.Key); rerr != nil {
				err = fmt.Errorf("%w (%w)", err, rerr)
			}
			return nil, err
		}
	}
	g := m.newGrant(conn, outcome{dc: r.dc, pid: pid, token: token, held: true, tx: tx}, t, req)
	m.warnPoolFull(t)
	return g, nil
}

// heldToken draws the fencing token of t's exclusive lock, held in a
// transaction by backend pid, on another connection of the pool (see
// sqltext.HeldToken), within the keep-alive timeout.
func (m *Manager) heldToken(ctx context.Context, pid int64, t *Target) (uint64, error) {
	// One round trip, bounded by the keep-alive timeout alone: a caller's
	// context that ended would make the driver send a cancel request
	// through the pooler (see execHeld).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Timeout)
	defer cancel()
	var answer string
	if err := m.db.QueryRowContext(ctx, sqltext.HeldToken(pid, t.Key)).Scan(&answer); err != nil {
		return 0, m.fencingErr(fmt.Errorf("fencing token: %w", errs.Classify(errs.WithCtxErr(ctx, err))))
	}
	token, err := sqltext.FencedAnswer(answer)
	if err == nil && token == 0 {
		err = fmt.Errorf("%w: backend %d no longer held it when its fencing token was drawn", errs.ErrLockLost, pid)
	}
	return token, err
}

// abandonedErr is the error of a statement abandoned to its driver (see
// Manager.awaitBounded).
func abandonedErr(err, settleErr error) error {
	if settleErr != nil {
		return fmt.Errorf("%w (%w: %w)", err, errs.ErrNotReleased, settleErr)
	}
	return err
}

// beginHeld begins the transaction that will hold a lock on conn, READ
// COMMITTED, for a driver that takes one statement at a time or a session
// whose default isolation keeps a snapshot (see acquireHeld), marked with
// the try's mark. Like the try, BEGIN is never cut short, and ctx bounds
// only the wait for it: a BEGIN that fails or gets no answer is settled by
// its mark, since a transaction it began would otherwise keep its server
// session until the pooler noticed the client gone.
func (m *Manager) beginHeld(ctx context.Context, conn *sql.Conn, mark string, retried bool) error {
	r, abandoned, settleErr := m.heldQuery(neverEnding(ctx), ctx, conn, mark+sqltext.BeginRCSQL, mark, false)
	err := r.err
	switch {
	case err == nil:
		return nil
	case abandoned:
		return abandonedErr(fmt.Errorf("begin the transaction that holds the lock: %w", errs.WithCtxErr(ctx, err)), settleErr)
	}
	serr := m.settler.EndMarked(conn, mark)
	if serr == nil && heldSessionDied(ctx, err, retried) {
		return errHeldRetry
	}
	if cause := heldRefusal(ctx, err); cause != nil {
		return cause
	}
	cause := fmt.Errorf("begin the transaction that holds the lock: %w", errs.Classify(errs.WithCtxErr(ctx, err)))
	if serr != nil {
		cause = fmt.Errorf("%w (%w)", cause, serr)
	}
	return cause
}

// errHeldRetry says that a held lock's first statements found their
// server session ended, by the server or by a settling whose target the
// pooler had just handed over (see settle.Settler.TerminateTx), with
// nothing left held: the lock is tried again, once, on another connection
// (see acquireConn).
var errHeldRetry = errors.New("the server session ended before the lock was taken")

// heldSessionDied reports whether err, from the statements that begin a
// held lock, says that its server session ended before ctx did, and that
// the lock may be tried again: once, and not when the pooler refuses
// transactions (see heldRefusal), which a second try tells from an ended
// session.
func heldSessionDied(ctx context.Context, err error, retried bool) bool {
	return !retried && errs.DeadSession(err) && !errs.CtxEnded(ctx) && !strings.Contains(err.Error(), "statement pooling")
}

// heldRefusal explains err, from the statement that begins a held
// transaction, when it says that the pooler refuses transactions, else
// returns nil.
func heldRefusal(ctx context.Context, err error) error {
	switch {
	case strings.Contains(err.Error(), "statement pooling"):
		// PgBouncer's pool_mode=statement: no transaction, so no server
		// session stays this client's long enough to hold a lock.
		return fmt.Errorf("%w: the pooler refused a transaction (%w): a statement-mode pooler cannot hold a lock; use a session- or transaction-mode pool", errs.ErrForeignSession, err)
	case errors.Is(err, driver.ErrBadConn) && !errs.CtxEnded(ctx):
		// lib/pq reports PgBouncer's refusal, which closes the
		// connection, as a bad connection; the statement before had just
		// succeeded on it.
		return fmt.Errorf("%w: the pooler closed the connection as a transaction began, right after a statement succeeded on it (%w), as a statement-mode pooler does: a statement-mode pooler cannot hold a lock; use a session- or transaction-mode pool", errs.ErrForeignSession, err)
	}
	return nil
}

// heldWait runs wait, the lock statement that waits, in the transaction
// held on backend pid. The server keeps ctx's deadline, if any: the
// transaction's lock_timeout, set in the wait's own query, ends the wait
// then, with an error after which the transaction rolls back and the
// connection goes back to the pool. No driver sees ctx end (see
// execHeld): a ctx cancelled before its deadline, or a server that has not
// ended the wait heldWaitGrace after it, stops the wait by ending the
// transaction on the server.
func (m *Manager) heldWait(ctx context.Context, conn *sql.Conn, wait string, pid, tx int64, k keyspace.Key) (rows int64, abandoned bool, settleErr error, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return m.execHeld(ctx, conn, wait, pid, tx, k)
	}
	left := time.Until(deadline)
	if left <= 0 || ctx.Err() != nil {
		return 0, false, nil, errs.WithCtxErr(ctx, ctx.Err())
	}
	stmt, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline.Add(heldWaitGrace))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.Canceled) {
			cancel()
		}
	})
	defer stop()
	// The deadline goes with the wait, in one query: no statement before
	// the wait can see ctx end. Apart, for a driver that takes one
	// statement at a time, and where BEGIN went first for the isolation
	// (see checkHeld): no combined try has then shown that this driver
	// takes several.
	if m.heldSplit.Load() || m.heldBeginFirst.Load() {
		if _, abandoned, settleErr, err = m.execHeld(stmt, conn, sqltext.LockTimeout(left), pid, tx, k); err != nil {
			return 0, abandoned, settleErr, err
		}
	} else {
		wait = sqltext.LockTimeout(left) + "; " + wait
	}
	rows, abandoned, settleErr, err = m.execHeld(stmt, conn, wait, pid, tx, k)
	if err != nil && errs.LockNotAvailable(err) {
		// The server kept the deadline, which ctx, whose timer may not
		// have fired yet, is about to report.
		err = errs.WithCtxErr(ctx, err)
	}
	return rows, abandoned, settleErr, err
}

// execHeld runs q on conn, in transaction tx of backend pid, under a
// context that never ends, and stops waiting for it when stop ends: the
// transaction is then ended on the server, at once (see awaitBounded),
// whatever the driver. No driver sees a context end there: pgx would end
// the connection, and send a cancel request, as lib/pq would; and pgx's
// CancelRequestContextWatcherHandler (withlock's) sends one that
// PgBouncer before 1.21 exits on ("bad client state", the chaos run of
// 2026-12-07; pgbouncer/pgbouncer#822).
func (m *Manager) execHeld(stop context.Context, conn *sql.Conn, q string, pid, tx int64, k keyspace.Key) (rows int64, abandoned bool, settleErr error, err error) {
	ctx := neverEnding(stop)
	if stop.Done() == nil {
		r := m.execRaw(ctx, conn, q, nil, false, pid)
		return r.n, false, nil, r.err
	}
	done := make(chan outcome, 1)
	go func() { done <- m.execRaw(ctx, conn, q, nil, false, pid) }()
	end := func(sctx context.Context) error { return m.settler.TerminateTx(sctx, pid, tx, k) }
	r, abandoned, settleErr := m.awaitBounded(stop, 0, done, end, func(outcome) { _ = m.settler.EndTx(conn, pid, tx, k) })
	return r.n, abandoned, settleErr, r.err
}

// heldWaitGrace is how long past ctx's deadline heldWait lets the driver
// wait for the server to end the wait at its lock_timeout.
const heldWaitGrace = time.Second

// heldQuery runs held try query, marked with mark (see sqltext.Marked),
// on conn under ctx, and reads its answer into r (pid, tx, and n 1 if
// granted); stop bounds the wait for it as in execRowsWithin, whatever the
// driver, and a try abandoned to its driver is settled by its mark.
// Without answer, the query answers no row (BEGIN).
func (m *Manager) heldQuery(ctx, stop context.Context, conn *sql.Conn, query, mark string, answer bool) (r outcome, abandoned bool, settleErr error) {
	run := func() (r outcome) {
		if err := conn.Raw(func(dc any) error {
			r.dc = dc
			v, err := drv.QueryValue(ctx, dc, query, m.simpleArgs(dc))
			if !answer && errors.Is(err, sql.ErrNoRows) {
				err = nil
			} else if err == nil {
				var granted bool
				r.pid, granted, r.tx, err = sqltext.HeldAnswer(v)
				if granted {
					r.n = 1
				}
			}
			r.err = err
			return nil
		}); err != nil {
			r.err = err
		}
		return r
	}
	if stop.Done() == nil {
		return run(), false, nil
	}
	done := make(chan outcome, 1)
	go func() { done <- run() }()
	end := func(sctx context.Context) error { return m.settler.TerminateMarked(sctx, mark) }
	return m.awaitBounded(stop, graceFor(stop), done, end, func(outcome) { _ = m.settler.EndMarked(conn, mark) })
}

// rollbackHeld ends conn's held transaction, which releases its lock, and
// returns conn to the pool; if the rollback fails, the transaction
// (backend pid, begun at tx, if known) is ended instead.
func (m *Manager) rollbackHeld(conn *sql.Conn, pid, tx int64, k keyspace.Key) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
	defer cancel()
	_, abandoned, settleErr, err := m.execRows(ctx, conn, sqltext.RollbackSQL, nil, false, pid, tx, k, func() { _ = m.settler.EndTx(conn, pid, tx, k) })
	switch {
	case abandoned && settleErr != nil:
		return fmt.Errorf("%w: the rollback of the transaction that held the lock got no answer, and its session could not be ended: %w", errs.ErrNotReleased, settleErr)
	case abandoned:
		return nil
	case err != nil:
		return m.settler.EndTx(conn, pid, tx, k)
	}
	closeOrDiscard(m, conn)
	return nil
}

// closeOrDiscard returns conn to the pool, or discards it if that fails.
func closeOrDiscard(m *Manager, conn *sql.Conn) {
	if err := conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		m.settler.Discard(conn)
	}
}

// held returns t's statements held in a transaction, made on first use.
func (t *Target) held() *sqltext.Held {
	if h := t.heldQ.Load(); h != nil {
		return h
	}
	lease := t.m.cfg.Lease
	if t.m.serverIdleInTx.Load() {
		lease = 0 // the server's own setting stands
	}
	t.heldQ.CompareAndSwap(nil, sqltext.BuildHeld(t.Key, lease))
	return t.heldQ.Load()
}

// simpleArgs returns the arguments that make pgx run a query with no
// parameters of its own in the simple protocol (see drv.SimpleProtocol),
// or nil for other drivers, whose queries without arguments run in it
// already. The held transaction's statements run so: a portal left from
// the extended protocol would keep a snapshot in the idle transaction.
func (m *Manager) simpleArgs(dc any) []driver.NamedValue {
	if p := m.simple.Load(); p != nil {
		return *p
	}
	var args []driver.NamedValue
	if v := drv.SimpleProtocol(dc); v != nil {
		args = []driver.NamedValue{{Ordinal: 1, Value: v}}
	}
	m.simple.Store(&args)
	return args
}

package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A Mutex is a distributed mutual-exclusion lock with an exclusive and a
// shared mode, backed by one PostgreSQL advisory-lock key.
//
// Every lock a Mutex takes runs on its own connection, so it excludes every
// other holder exactly as one process excludes another: two Mutex values for
// one name, or one Mutex locked twice, exclude each other. (The Node package
// advisory-lock shares one session, where PostgreSQL's re-entrancy lets a
// second lock in the same process succeed; sqllock does not.) Like
// [sync.Mutex], locking a Mutex that the same goroutine already holds waits
// until the context ends.
//
// A Mutex is safe for concurrent use by multiple goroutines. When it holds
// several locks at once (shared locks, or a lock lost and taken again),
// Unlock and UnlockShared release the oldest lock of their mode first.
type Mutex struct {
	l     *Locker
	name  string
	key   keyspace.Key
	q     *sqltext.Queries                    // the Locker's statements for keys of this kind, or this key's own (literals)
	args  []any                               // the key as q's arguments; nil with literals
	named []driver.NamedValue                 // args, as the driver takes them
	cache [2][sqltext.KindCount]sqltext.Cache // each lock statement's guarded form, as last made: of q, of literal()
	lit   atomic.Pointer[sqltext.Queries]     // q with the key written in, for sessions sqllock does not prepare on (see literal)
	err   error                               // sticky: the Locker's, or this name's key problem

	mu     sync.Mutex
	excl   []*hold // exclusive holds of Lock and TryLock, oldest first: what Unlock releases
	shared []*hold // shared holds of LockShared and TryLockShared, oldest first
	scoped []*hold // holds of WithLock and friends, which release them themselves
}

// literal returns the Mutex's queries with the key written into the text,
// for a Locker that prepares its statements (see drv.StmtCache) on a session
// it may not prepare on: a simple query, one round trip, nothing named.
// Made on first use.
func (m *Mutex) literal() *sqltext.Queries {
	if q := m.lit.Load(); q != nil {
		return q
	}
	if m.args == nil {
		return m.q // its own: built with literals
	}
	m.lit.CompareAndSwap(nil, m.l.build(m.key, false))
	return m.lit.Load()
}

// unlockStatement returns the unlock statement and its arguments for a
// hold taken in the given form (prepared: see drv.StmtCache).
func (m *Mutex) unlockStatement(shared, prepared bool) (string, []driver.NamedValue) {
	q, args := m.q, m.named
	if m.l.prepared && !prepared {
		q, args = m.literal(), nil
	}
	if shared {
		return q.UnlockShared, args
	}
	return q.Unlock, args
}

// Name returns the lock's name; it is empty for a Mutex made by
// [Locker.MutexKey].
func (m *Mutex) Name() string { return m.name }

// Key returns the lock's advisory-lock key; it is the zero Key when the
// Mutex has a sticky error.
func (m *Mutex) Key() keyspace.Key { return m.key }

func (m *Mutex) fail(op string, err error) error {
	return &Error{Op: op, Name: m.name, Key: m.key, Err: err}
}

func opName(base string, shared bool) string {
	if shared {
		return base + " shared"
	}
	return base
}

// acquire takes the lock on a connection of its own. With try, it returns
// (nil, nil) if another session holds the key.
func (m *Mutex) acquire(ctx context.Context, shared, try bool, onLost func(error)) (*hold, error) {
	take := m.acquireConn
	if m.l.pool != nil {
		take = m.acquireShared
	}
	if len(m.l.cfg.observers) == 0 {
		return take(ctx, shared, try, onLost, false)
	}
	start := time.Now()
	h, err := take(ctx, shared, try, onLost, true)
	e := Event{Shared: shared, Wait: time.Since(start), Err: err}
	switch {
	case err != nil:
		e.Kind = EventFailed
	case h == nil:
		e.Kind = EventContended
	default:
		e.Kind = EventAcquired
		e.Wait = h.acquired.Sub(start)
	}
	m.observe(e)
	return h, err
}

// lockOp names a lock operation for its errors, and refuses to start one
// without a context, or on a Mutex with a sticky error.
func (m *Mutex) lockOp(ctx context.Context, shared, try bool) (string, error) {
	op := opName("lock", shared)
	if try {
		op = opName("trylock", shared)
	}
	switch {
	case ctx == nil:
		return op, m.fail(op, ErrNilContext)
	case m.err != nil:
		return op, m.fail(op, m.err)
	}
	return op, nil
}

func (m *Mutex) acquireConn(ctx context.Context, shared, try bool, onLost func(error), timed bool) (*hold, error) {
	op, err := m.lockOp(ctx, shared, try)
	if err != nil {
		return nil, err
	}
	var q *sqltext.LockStmt
	switch {
	case try && shared:
		q = m.q.TryShared
	case try:
		q = m.q.Try
	case shared:
		q = m.q.LockShared
	default:
		q = m.q.Lock
	}
	r, conn, err := m.lockStatement(ctx, q)
	if err != nil {
		cause := m.l.fencingErr(errs.Classify(errs.WithCtxErr(ctx, err)))
		if errs.IsDriverTimeout(ctx, err) {
			cause = fmt.Errorf("%w: %w", ErrDriverTimeout, err)
		}
		switch {
		case conn == nil:
		case errs.ServerRefused(ctx, err) && q.Fenced:
			// A fenced statement takes the lock before its token, whose
			// transaction id can fail (a full lock table): the grant
			// survives the error, so it is undone on the same session.
			if uerr := m.undo(conn, r.pid, false, r.prepared, false); uerr != nil {
				cause = fmt.Errorf("%w (%w)", cause, uerr)
			}
		case errs.ServerRefused(ctx, err):
			// The server answered the statement with an error of its own
			// (a full lock table, a deadlock): it took nothing, and the
			// session is sound.
			if cerr := conn.Close(); cerr != nil {
				m.l.settler.Discard(conn)
			}
		default:
			// The lock may or may not have been granted before the error (a
			// cancel racing the grant, an answer that makes no sense): only
			// ending the session is safe.
			if serr := m.l.settler.End(conn, r.pid, m.key); serr != nil {
				cause = fmt.Errorf("%w (%w)", cause, serr)
			}
		}
		return nil, m.fail(op, cause)
	}
	switch {
	case r.n&sqltext.FlagForeign != 0:
		// Nothing was taken. The session belongs to another client too.
		m.l.settler.Discard(conn)
		return nil, m.fail(op, fmt.Errorf("%w: server session %d belongs to another client connection (it carries another connection's sqllock owner token)", ErrSharedSession, r.pid))
	case r.n&sqltext.FlagStandby != 0:
		// Nothing was taken: the connection is clean.
		if err := conn.Close(); err != nil {
			m.l.settler.Discard(conn)
		}
		return nil, m.fail(op, ErrStandby)
	case r.n&sqltext.FlagStub != 0:
		if err := conn.Close(); err != nil {
			m.l.settler.Discard(conn)
		}
		return nil, m.fail(op, ErrStubLocks)
	case ctx.Err() != nil:
		// The answer came, but the context ended meanwhile: the caller
		// holds nothing, so a grant is undone. The driver may have sent
		// the server a cancel request for the statement, which can land on
		// whatever statement the session runs next (pgx's
		// CancelRequestContextWatcherHandler calls it inherently racy): the
		// connection does not go back to the pool.
		cerr := ctx.Err()
		if r.n&sqltext.FlagGranted != 0 {
			if err := m.undo(conn, r.pid, shared, r.prepared, true); err != nil {
				return nil, m.fail(op, fmt.Errorf("%w (%w)", cerr, err))
			}
		} else {
			m.l.settler.Discard(conn)
		}
		return nil, m.fail(op, cerr)
	case r.n&sqltext.FlagGranted == 0:
		if err := conn.Close(); err != nil {
			m.l.settler.Discard(conn)
		}
		return nil, nil
	}
	var acquired time.Time
	if timed {
		acquired = time.Now()
	}
	h := m.newHold(conn, r, shared, acquired, onLost)
	m.warnPoolFull()
	return h, nil
}

// undo releases a lock that a call which is failing may have been
// granted on conn, bounded by the keep-alive timeout rather than the
// caller's context; if the release is not confirmed, the session is ended.
// After a cancelled wait (cancelled: the grant is known) conn is discarded,
// since the driver may have sent the server a cancel request that could
// land on the next statement (see acquireConn); after a fenced statement's
// error, which may or may not have granted the lock, the session is sound
// and conn goes back to the pool.
func (m *Mutex) undo(conn *sql.Conn, pid int64, shared, prepared, cancelled bool) error {
	q, args := m.unlockStatement(shared, prepared)
	ctx, cancel := context.WithTimeout(context.Background(), m.l.cfg.timeout)
	defer cancel()
	rows, abandoned, settleErr, err := m.l.execRows(ctx, conn, q, args, prepared, pid, m.key, func() { _ = m.l.settler.End(conn, pid, m.key) })
	switch {
	case abandoned && settleErr != nil:
		return fmt.Errorf("%w: the release of a lock granted as the call failed got no answer within %v, and its session could not be ended: %w", ErrNotReleased, m.l.cfg.timeout, settleErr)
	case abandoned:
		return nil // the session ended on the server; the driver has yet to notice
	case err != nil || rows < 0 || cancelled && rows != 1:
		return m.l.settler.End(conn, pid, m.key)
	case cancelled:
		m.l.settler.Discard(conn)
	default:
		if cerr := conn.Close(); cerr != nil {
			m.l.settler.Discard(conn)
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
func (m *Mutex) lockStatement(ctx context.Context, q *sqltext.LockStmt) (r outcome, conn *sql.Conn, err error) {
	retries := -1
	for {
		conn, err = m.l.db.Conn(ctx)
		if err != nil {
			return outcome{}, nil, err
		}
		var abandoned bool
		var settleErr error
		r, abandoned, settleErr = m.runLock(ctx, conn, q)
		switch {
		case abandoned && settleErr != nil:
			return r, nil, fmt.Errorf("%w (%w: backend %d: %w)", r.err, ErrNotReleased, r.pid, settleErr)
		case abandoned:
			return r, nil, r.err
		case r.err == nil || errs.CtxEnded(ctx) || !errs.DeadSession(r.err):
			return r, conn, r.err
		}
		// A lock statement sent on a session that turns out dead took
		// nothing that outlives the session; endSession proves it.
		if !r.ran {
			m.l.settler.Discard(conn)
		} else if err := m.l.settler.End(conn, r.pid, m.key); err != nil {
			return r, nil, fmt.Errorf("%w (%w)", r.err, err)
		}
		if retries < 0 {
			retries = m.l.db.Stats().Idle + 1
		}
		if retries == 0 {
			return r, nil, r.err
		}
		retries--
	}
}

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
// (see Locker.awaitBounded), and a statement not yet sent is never sent.
// If the driver still does not return, runLock returns ctx.Err() and
// abandoned is true: the statement goes on in the background, and its
// session is ended once the driver returns. The caller must not touch
// conn again.
func (m *Mutex) runLock(ctx context.Context, conn *sql.Conn, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error) {
	return m.runLockWithin(ctx, ctx, conn, q)
}

// runLockWithin is runLock with the statement run under ctx and the wait
// for it bounded by stop: a statement on a shared session must not see
// its caller's context end (both drivers then destroy the connection), and
// one whose context never ends spares lib/pq a goroutine that watches it.
func (m *Mutex) runLockWithin(ctx, stop context.Context, conn *sql.Conn, q *sqltext.LockStmt) (r outcome, abandoned bool, settleErr error) {
	if m.l.boundsContext || stop.Done() == nil {
		return m.lockRaw(ctx, conn, q, nil), false, nil
	}
	var f inFlight
	done := make(chan outcome, 1)
	go func() { done <- m.lockRaw(ctx, conn, q, &f) }()
	end := func(sctx context.Context) error {
		if pid := f.close(); pid != 0 {
			return m.l.settler.Terminate(sctx, pid, m.key)
		}
		return nil
	}
	r, abandoned, settleErr = m.l.awaitBounded(stop, graceFor(ctx), done, end, func(r outcome) { _ = m.l.settler.End(conn, r.pid, m.key) })
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
func (m *Mutex) lockRaw(ctx context.Context, conn *sql.Conn, q *sqltext.LockStmt, f *inFlight) (r outcome) {
	if err := conn.Raw(func(dc any) error {
		r = m.lockOn(ctx, dc, q, f)
		return nil
	}); err != nil {
		r.err = err
	}
	return r
}

// lockOn runs lock statement q on driver connection dc, in its guarded
// form for dc's session, which the Locker verifies first if it has not
// (see Locker.guarded). A guarded form that finds another session on the
// connection (a transaction pooler moved it) took nothing: the new
// session is verified and the lock tried there, once.
//
// r.n holds sqltext.FlagGranted, or the verify statement's refusal flags; r.pid is
// the session's backend pid once known, also with an error; r.ran reports
// whether a lock statement was sent.
func (m *Mutex) lockOn(ctx context.Context, dc any, q *sqltext.LockStmt, f *inFlight) (r outcome) {
	r.dc = dc
	for moved := false; ; moved = true {
		g, pid, flags, err := m.l.guarded(ctx, dc, q, &m.cache[0][q.Kind])
		r.pid, r.n = pid, flags
		if err != nil || flags != 0 {
			r.err = err
			return r
		}
		args, sent := m.named, q
		r.prepared = m.l.prepared && m.l.stmts.Direct(dc, pid)
		if m.l.prepared && !r.prepared {
			lq := m.literal()
			sent, args = lq.Stmt(q.Kind), nil
			g = sent.GuardedFor(&m.cache[1][q.Kind], drv.ConnPointer(dc), g.Conn, pid)
		}
		if !f.send(pid) {
			r.err = errs.WithCtxErr(ctx, context.Cause(ctx))
			return r
		}
		r.ran = true
		var v any
		if r.prepared {
			v, err = m.l.stmts.QueryValue(ctx, dc, pid, g.Text, args)
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
		case !errors.Is(err, sql.ErrNoRows) && !m.l.statementGone(err) || errs.CtxEnded(ctx):
			r.err = err
			return r
		case moved:
			r.err = fmt.Errorf("%w: the connection reached another server session with each statement", ErrSharedSession)
			return r
		}
		// Another session, and nothing taken: forget the one verified,
		// here and in this statement's cache.
		m.l.sessions.forget(g.Conn, g.PID)
		m.l.stmts.Drop(dc) // prepared in the session that is gone
		m.cache[0][q.Kind].Forget()
		m.cache[1][q.Kind].Forget()
	}
}

// statementGone reports whether err says that a statement sqllock prepared
// on the connection does not exist in its session (SQLSTATE 26000): a
// pooler moved the connection to another session, where the statement
// never ran, as the guarded form's empty answer says on drivers whose
// statements are not prepared by sqllock.
func (l *Locker) statementGone(err error) bool {
	var se interface{ SQLState() string }
	return l.prepared && errors.As(err, &se) && se.SQLState() == "26000"
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

// Lock waits until it holds the lock exclusively, or until ctx ends. The
// wait happens in the server (pg_advisory_lock), which grants the lock the
// moment its holder lets go; no polling.
//
// ctx bounds only the wait: cancelling it after Lock returns does not
// release the lock. If ctx ends first, Lock returns an error wrapping
// ctx.Err() and holds nothing, even when the grant raced the cancel. If the
// server ends the session while it waits or before it starts (a restart,
// pg_terminate_backend, idle_session_timeout), Lock goes on waiting on
// another connection, at most once per idle connection of the pool plus
// one.
//
// The lock pins one connection of the pool until [Mutex.Unlock]. While it is
// held, a keep-alive watches the session (see [WithKeepAlive]); [Mutex.Done]
// and [Mutex.Err] report a loss.
func (m *Mutex) Lock(ctx context.Context) error {
	return m.lock(ctx, false)
}

// LockShared is like [Mutex.Lock] in shared mode: any number of shared
// holders coexist, while an exclusive holder excludes them all and waits for
// them all. Release it with [Mutex.UnlockShared].
func (m *Mutex) LockShared(ctx context.Context) error {
	return m.lock(ctx, true)
}

func (m *Mutex) lock(ctx context.Context, shared bool) error {
	h, err := m.acquire(ctx, shared, false, nil)
	if err != nil {
		return err
	}
	m.push(h)
	return nil
}

// TryLock takes the lock exclusively if no one holds it, in one round trip.
// Contention is not an error: it returns (false, nil) when the lock is held
// elsewhere, including by another lock of this process. ctx bounds the
// round trip.
func (m *Mutex) TryLock(ctx context.Context) (bool, error) {
	return m.tryLock(ctx, false)
}

// TryLockShared is like [Mutex.TryLock] in shared mode: it fails only while
// someone holds the lock exclusively.
func (m *Mutex) TryLockShared(ctx context.Context) (bool, error) {
	return m.tryLock(ctx, true)
}

func (m *Mutex) tryLock(ctx context.Context, shared bool) (bool, error) {
	h, err := m.acquire(ctx, shared, true, nil)
	if err != nil || h == nil {
		return false, err
	}
	m.push(h)
	return true, nil
}

func (m *Mutex) push(h *hold) {
	m.mu.Lock()
	if h.shared {
		m.shared = append(m.shared, h)
	} else {
		m.excl = append(m.excl, h)
	}
	m.mu.Unlock()
}

// remove takes WithLock's hold h off the Mutex's holds.
func (m *Mutex) remove(h *hold) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i := slices.Index(m.scoped, h); i >= 0 {
		m.scoped = slices.Delete(m.scoped, i, i+1)
	}
}

// Unlock releases the exclusive lock taken by Lock or TryLock, and returns
// its connection to the pool.
//
// It returns an error wrapping [ErrNotHeld] if this Mutex holds no exclusive
// lock, and one wrapping [ErrLockLost] if the lock was lost while held.
//
// ctx bounds the unlock statement, not the release: with a context that is
// already done, Unlock still sends the unlock, bounded by the keep-alive
// timeout. If the statement fails or ctx cuts it short, the session is
// ended instead, on the server if need be, which releases the lock. Either
// way Unlock returns nil only once the server no longer shows the lock
// held, and an error wrapping [ErrNotReleased] if it could not confirm
// that within the keep-alive timeout (the server unreachable). A
// connection that may still hold the lock never returns to the pool.
// Unlock(context.WithoutCancel(ctx)) in a defer is the usual form.
func (m *Mutex) Unlock(ctx context.Context) error {
	return m.unlock(ctx, false)
}

// UnlockShared releases a shared lock taken by LockShared or TryLockShared,
// as [Mutex.Unlock] does an exclusive one.
func (m *Mutex) UnlockShared(ctx context.Context) error {
	return m.unlock(ctx, true)
}

func (m *Mutex) unlock(ctx context.Context, shared bool) error {
	op := opName("unlock", shared)
	if ctx == nil {
		return m.fail(op, ErrNilContext)
	}
	if m.err != nil {
		return m.fail(op, m.err)
	}
	m.mu.Lock()
	list, other := &m.excl, m.shared
	if shared {
		list, other = &m.shared, m.excl
	}
	if len(*list) == 0 {
		m.mu.Unlock()
		if len(other) > 0 {
			hint := "it is held shared: use UnlockShared"
			if shared {
				hint = "it is held exclusively: use Unlock"
			}
			return m.fail(op, fmt.Errorf("%w (%s)", ErrNotHeld, hint))
		}
		return m.fail(op, ErrNotHeld)
	}
	// Shift rather than reslice, so that the next push reuses the array.
	h := (*list)[0]
	n := copy(*list, (*list)[1:])
	(*list)[n] = nil
	*list = (*list)[:n]
	m.mu.Unlock()
	return h.release(ctx)
}

// oldest returns the lock Done and Err describe: the oldest exclusive lock
// still held, else the oldest shared lock still held, else (all of them
// lost, none unlocked yet) the oldest lock of either mode.
func (m *Mutex) oldest() *hold {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first *hold // the oldest hold of all, should every one be lost
	for _, shared := range []bool{false, true} {
		for _, list := range [][]*hold{m.excl, m.shared, m.scoped} {
			for _, h := range list {
				if h.shared != shared {
					continue
				}
				if first == nil {
					first = h
				}
				if h.err() == nil {
					return h
				}
			}
		}
	}
	return first
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done returns a channel that is closed when the lock this Mutex holds
// ends, as a context's Done channel is: when it is lost (its session died)
// or released. [Mutex.Err] then says which. Capture it right after Lock, or
// call it inside WithLock's function:
//
//	if err := mu.Lock(ctx); err != nil { ... }
//	lost := mu.Done()
//	select {
//	case <-lost:     // mu.Err() wraps ErrLockLost: stop working
//	case <-workDone:
//	}
//
// With no lock held it returns a closed channel. A Mutex that holds several
// locks at once (a lock and shared locks, say) describes one of them: the
// oldest exclusive lock still held, else the oldest shared one; when all
// were lost and none is unlocked yet, the oldest of those.
func (m *Mutex) Done() <-chan struct{} {
	if h := m.oldest(); h != nil {
		return h.doneChan()
	}
	return closedChan
}

// Err returns nil while the lock described by [Mutex.Done] is held, an
// error wrapping [ErrLockLost] once it is lost, and [ErrNotHeld] when no
// lock is held.
func (m *Mutex) Err() error {
	if h := m.oldest(); h != nil {
		return h.err()
	}
	if m.err != nil {
		return m.fail("hold", m.err)
	}
	return ErrNotHeld
}

// WithLock runs fn while holding the lock exclusively, and releases it
// however fn ends: by returning nil, by returning an error (which WithLock
// returns), or by panicking (WithLock releases, then the panic goes on).
//
// ctx bounds the wait for the lock and is the parent of fn's context; to
// bound the wait alone, add [MaxWait]. If the lock is not acquired, fn does
// not run and WithLock returns an error wrapping [ErrNotAcquired] (and the
// cause: ctx.Err() for a wait that ended). If the lock is lost while fn
// runs, fn's context is cancelled with a cause wrapping [ErrLockLost] (see
// [context.Cause]), and WithLock returns an error wrapping ErrLockLost even
// if fn returned nil. fn should stop its work when its context ends. An
// error fn returns comes back as fn returned it, unless the release failed
// or found the lock lost: then WithLock's error wraps both (errors.Is
// finds either), or is fn's alone when fn returned the loss itself
// (context.Cause of its context).
//
// The release does not depend on ctx: it is bounded by the keep-alive
// timeout, after which the session is ended instead (see [Mutex.Unlock]).
func (m *Mutex) WithLock(ctx context.Context, fn func(ctx context.Context) error, opts ...WithLockOption) error {
	_, err := m.withLock(ctx, false, false, fn, opts)
	return err
}

// WithLockShared is [Mutex.WithLock] in shared mode.
func (m *Mutex) WithLockShared(ctx context.Context, fn func(ctx context.Context) error, opts ...WithLockOption) error {
	_, err := m.withLock(ctx, true, false, fn, opts)
	return err
}

// TryWithLock is [Mutex.WithLock] without the wait: if the lock is held
// elsewhere it returns (false, nil) at once and does not run fn. Otherwise
// it runs fn as WithLock does and returns true with WithLock's error.
func (m *Mutex) TryWithLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error) {
	return m.withLock(ctx, false, true, fn, nil)
}

// TryWithLockShared is [Mutex.TryWithLock] in shared mode.
func (m *Mutex) TryWithLockShared(ctx context.Context, fn func(ctx context.Context) error) (bool, error) {
	return m.withLock(ctx, true, true, fn, nil)
}

func (m *Mutex) withLock(ctx context.Context, shared, try bool, fn func(context.Context) error, opts []WithLockOption) (bool, error) {
	op := opName("withlock", shared)
	if fn == nil {
		return false, m.fail(op, ErrNilFunc)
	}
	if ctx == nil {
		return false, m.fail(op, ErrNilContext)
	}
	var cfg withLockConfig
	for _, opt := range opts {
		if opt == nil {
			return false, m.fail(op, errors.New("sqllock: nil WithLockOption"))
		}
		opt(&cfg)
	}
	if cfg.err != nil {
		return false, m.fail(op, cfg.err)
	}
	wctx := ctx
	if cfg.maxWait > 0 {
		var cancelWait context.CancelFunc
		wctx, cancelWait = context.WithTimeout(ctx, cfg.maxWait)
		defer cancelWait()
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h, err := m.acquire(wctx, shared, try, cancel)
	if err != nil {
		return false, m.fail(op, fmt.Errorf("%w: %w", ErrNotAcquired, unwrapOwn(err)))
	}
	if h == nil {
		return false, nil
	}
	if h.token != 0 {
		fctx = context.WithValue(fctx, tokenKey{}, h.token)
	}
	// The release runs under ctx's values but not its cancellation: a
	// context that never ends gets the keep-alive timeout as its bound
	// (see hold.release). One that already never ends is used as it is.
	rctx := ctx
	if ctx.Done() != nil {
		rctx = context.WithoutCancel(ctx)
	}
	// Registered while fn runs, so that Done and Err describe it inside
	// fn as after Lock; apart from Lock's holds, so that no Unlock takes
	// it (an Unlock releases what Lock took).
	m.mu.Lock()
	m.scoped = append(m.scoped, h)
	m.mu.Unlock()
	release := func() error {
		m.remove(h)
		return h.release(rctx)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked or called runtime.Goexit
			_ = release()
		}
	}()
	fnErr := fn(fctx)
	returned = true
	relErr := release()
	switch {
	case relErr == nil:
		return true, fnErr
	case fnErr == nil:
		return true, relErr
	case errors.Is(fnErr, ErrLockLost) && errors.Is(relErr, ErrLockLost):
		// fn returned its context's cause, the loss: saying it twice
		// adds nothing.
		return true, fnErr
	}
	return true, fmt.Errorf("%w (and fn returned: %w)", relErr, fnErr)
}

// Package conntest checks that a database/sql setup gives package sqllock
// the session semantics its locks rely on. The setup is the driver, the
// connection string, any pooler or proxy between client and server, and the
// PostgreSQL server itself.
//
// sqllock takes each lock as a session-level advisory lock on a [sql.Conn]
// of its own. The lock is only as good as the session under it: every
// statement on that Conn must reach the same server session for as long as
// the Conn is held, and cancelling a statement must interrupt it. When a
// call gives up on a session whose lock state it cannot know (a cancelled
// wait or unlock), sqllock closes the connection and then ends the session
// on the server if it still holds or waits for the lock, whatever the
// driver's Close does; that needs the session's backend to be the one
// pg_backend_pid() named when the lock was taken. Direct connections with
// github.com/lib/pq or github.com/jackc/pgx/v5/stdlib (also behind gorm,
// sqlx, bun or instrumentation wrappers), pgx's pool bridge
// (stdlib.OpenDBFromPool) and session-mode poolers provide all of that;
// transaction- and statement-mode poolers do not. docs/drivers.md lists the
// setups proven so. [Run] proves it for your setup, with real
// locks on your server, the way [testing/fstest.TestFS] proves a file
// system.
//
// Call Run from a test, with a *sql.DB opened the way your application opens
// it, and the options your application gives sqllock.New:
//
//	func TestLocks(t *testing.T) { conntest.Run(t, openDB(t)) }
//	func TestWithSessions(t *testing.T) { conntest.Run(t, openDB(t), sqllock.WithSessions(4)) }
//
// # Checks
//
// Each check is a subtest of the test that calls Run, in this order:
//
//   - SessionPinned: every statement in one transaction runs in the same
//     server session (pg_backend_pid() does not change), and two
//     transactions open at once have different sessions. Outside a
//     transaction, a transaction-mode pooler may move a *sql.Conn from
//     session to session: sqllock then holds each lock in a transaction of
//     its own, and the check logs that it found such a pooler.
//   - Exclusion: while one session holds a lock, TryLock in another returns
//     false; after Unlock it returns true.
//   - SharedCoexist: two shared holders coexist; they exclude an exclusive
//     TryLock, and an exclusive holder excludes a shared TryLockShared.
//   - UnlockReleases: after Unlock, pg_locks shows no lock and the connection
//     is back in the pool.
//   - WaiterWokenOnRelease: a session waiting in Lock (granted = false in
//     pg_locks) gets the lock when the holder unlocks.
//   - CancelWhileWaiting: cancelling Lock's context ends the wait promptly
//     with an error wrapping [context.Canceled], and leaves no lock, waiter
//     or busy connection behind: pg_locks shows only the holder the moment
//     Lock returns.
//   - UnlockCancelled: Unlock with an already cancelled context still
//     releases the lock: pg_locks shows nothing the moment it returns.
//   - CancelStorm: Lock and Unlock under random deadlines of up to 3ms,
//     with the lock held by another session or free; after every call
//     returns, pg_locks shows exactly the locks still held, at once.
//   - LossDetected: terminating the holder's backend (pg_terminate_backend)
//     closes [sqllock.Mutex.Done], and Err and Unlock report
//     [sqllock.ErrLockLost].
//   - WithLockReleasesOnPanic: when WithLock's function panics, the panic
//     propagates and the lock is released.
//   - NotStandby: the server is a primary (pg_is_in_recovery() is false);
//     a hot standby's advisory locks exclude nobody on the primary.
//   - TransactionLocks: a transaction-scoped lock ([sqllock.Mutex.LockTx])
//     excludes another transaction until commit releases it. These are the
//     locks that work behind a transaction-mode pooler.
//   - FencingTokens: with [sqllock.WithFencing], each exclusive grant's
//     token is larger than the one before, whichever session takes it. It
//     is skipped on servers older than PostgreSQL 13, and with options that
//     exclude fencing ([sqllock.WithAllowStandby]).
//   - Semaphore: a 2-slot [sqllock.Semaphore] lets two holders from
//     different Lockers in, each holding exactly one slot in pg_locks;
//     refuses a third TryAcquire; makes the third's Acquire wait until a
//     slot is released, then gives it that slot; and each Release frees
//     its slot at once. It is skipped with options whose keyspace cannot
//     name a semaphore's slots (a strategy that does not hash names).
//   - NoLeak: once every check has finished, no advisory lock on a key the
//     suite used remains in pg_locks.
//
// # Failures
//
// A failing check means sqllock's locks cannot be trusted with this setup:
// two processes may both believe they hold a lock, a lock may outlive its
// holder, or a cancelled wait may leave a lock or a connection behind. Each failure says what
// it saw and what usually causes it. By far the most common cause is a
// pooler in transaction or statement mode (PgBouncer's
// pool_mode=transaction, or a cloud proxy that multiplexes sessions): it
// hands consecutive statements of one client connection to different server
// sessions, so SessionPinned and Exclusion fail. Connect such applications
// to the server directly, or through a session-mode pool, for their locks.
//
// # Requirements
//
// Run needs db to itself while it runs: it compares db.Stats().InUse with
// its value when Run began. The pool must allow at least three connections
// beyond those already in use. Semaphore's wait needs five at once (two
// holders, a waiter's two, one to read pg_locks), and as many server
// connections behind a pooler: with a pool limited to fewer
// (SetMaxOpenConns), it checks that a released slot goes to the next
// TryAcquire instead, and logs that it did. The checks run one after another, each under
// a 30-second deadline; a call that ignores its context fails the check
// instead of stalling the suite. Lock names are derived from the test's name
// and a random per-Run prefix, so concurrent runs, in one process or many,
// never contend. LossDetected needs the right to terminate the lock's
// backend (superuser, the same role, or pg_signal_backend); without it the
// check is skipped with the reason, as SQLSTATE 42501 reports it.
package conntest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

const (
	caseTimeout    = 30 * time.Second      // deadline of each check
	hangGrace      = 5 * time.Second       // how long a call may outlive its context before the check fails as hung
	cleanupTimeout = 10 * time.Second      // bound of each release a check's cleanup does
	promptTimeout  = 5 * time.Second       // how long a wait may last once it should end
	settleTimeout  = 5 * time.Second       // how long a discarded session may take to end on the server
	pollInterval   = 10 * time.Millisecond // pg_locks polling interval
	keepAlive      = 20 * time.Millisecond // the suite's keep-alive interval, so LossDetected is quick
	keepAliveLimit = 2 * time.Second       // the suite's keep-alive timeout
	neededConns    = 3                     // connections the busiest check holds at once
	maxHolds       = 16                    // bound of the cleanup's unlock loop
	lockNameRoot   = "conntest/"           // first element of every lock name
	pgLocksWhere   = "locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)

// pooler explains the usual cause of a failure.
const pooler = "a pooler in statement mode (PgBouncer pool_mode=statement, or a proxy that " +
	"multiplexes sessions within a transaction) between client and server breaks advisory locks: connect directly, " +
	"or through a session- or transaction-mode pool"

// stubLocks explains the other cause of two sessions holding one key.
const stubLocks = "or the server's advisory-lock functions are stubs that lock nothing (CockroachDB): use PostgreSQL"

// discarded explains the usual cause of a lock that outlives a cancelled
// call.
const discarded = "sqllock ends such a session on the server (pg_terminate_backend), and that failed, or the session it " +
	"terminated was not the one holding the lock: a driver or pool bridge (pgx's stdlib.OpenDBFromPool, a wrapper) " +
	"that hands one database/sql connection different server sessions, or a pooler, breaks session locks"

// Run checks that db (driver, DSN and any pooler between) gives sqllock the
// session semantics it needs. Each check is a subtest. Typical use:
//
//	func TestLocks(t *testing.T) { conntest.Run(t, openDB(t)) }
//
// Every check takes its locks from Lockers built by [sqllock.New] with the
// suite's own options (a keep-alive probing every 20ms, so that
// LossDetected is quick) followed by opts, so an application can check its
// own options too, [sqllock.WithSessions] included; each Mutex of a check
// comes from a Locker of its own, as another process's would. Options that
// disable the keep-alive make LossDetected fail.
//
// Run needs db to itself while it runs and at least three free connections
// in its pool. It leaves db open, with every lock it took released and every
// connection back in the pool.
func Run(t *testing.T, db *sql.DB, opts ...sqllock.Option) {
	t.Helper()
	if db == nil {
		t.Fatal("conntest: Run: nil *sql.DB")
	}
	r := &run{
		db:     db,
		opts:   append([]sqllock.Option{sqllock.WithKeepAlive(keepAlive, keepAliveLimit)}, opts...),
		prefix: fmt.Sprintf("%s%016x/", lockNameRoot, rand.Uint64()),
		keys:   make(map[keyspace.Key]string),
	}
	if err := sqllock.New(db, r.opts...).Err(); err != nil {
		t.Fatalf("conntest: sqllock.New with the options given to Run: %v", err)
	}
	st := db.Stats()
	r.baseline = st.InUse
	if st.MaxOpenConnections > 0 && st.MaxOpenConnections-st.InUse < neededConns {
		t.Fatalf("conntest: db allows %d open connections (SetMaxOpenConns) and %d are in use; the checks need %d free",
			st.MaxOpenConnections, st.InUse, neededConns)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { r.runCase(t, c) })
	}
	if got := db.Stats().InUse; got != r.baseline {
		t.Errorf("conntest: after all checks, db.Stats().InUse = %d, want %d as when Run began: connections were not returned to the pool",
			got, r.baseline)
	}
}

// A testCase is one check: a name for its subtest, what it checks (with the
// place it is defined) and the check itself.
type testCase struct {
	name        string
	explanation string
	f           func(t *testing.T, e *env)
}

// withSource appends the caller's file and line to s, as slogtest does,
// so a failing check says where to read it.
func withSource(s string) string {
	_, file, line, ok := runtime.Caller(1)
	if !ok {
		return s
	}
	return fmt.Sprintf("%s (%s:%d)", s, path.Join(path.Base(path.Dir(file)), path.Base(file)), line)
}

// run is the state of one call of Run.
type run struct {
	db       *sql.DB
	opts     []sqllock.Option
	baseline int    // db.Stats().InUse when Run began
	prefix   string // lock-name prefix, random per Run

	mu   sync.Mutex
	keys map[keyspace.Key]string // every key a check used, with its name
}

// runCase runs c under its deadline, with a fresh Locker.
func (r *run) runCase(t *testing.T, c testCase) {
	// Registered first, so it runs after every cleanup of the check.
	t.Cleanup(func() {
		if got := r.db.Stats().InUse; got != r.baseline {
			t.Errorf("after the check and its cleanup, db.Stats().InUse = %d, want %d: a connection was not returned to the pool",
				got, r.baseline)
		}
		if t.Failed() {
			t.Logf("%s checks that %s", c.name, c.explanation)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), caseTimeout)
	defer cancel()
	e := &env{
		t:    t,
		ctx:  ctx,
		run:  r,
		name: r.prefix + t.Name(),
	}
	c.f(t, e)
}

// usedKeys returns the keys the checks used so far.
func (r *run) usedKeys() map[keyspace.Key]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make(map[keyspace.Key]string, len(r.keys))
	for k, v := range r.keys {
		keys[k] = v
	}
	return keys
}

// env is what a check works with: its test, its context (which carries the
// check's deadline) and a Locker. Its helpers fail the check on errors.
type env struct {
	t   *testing.T
	ctx context.Context
	*run
	name string // the check's lock name; every Mutex of the check contends for it
}

// errHung reports a call still running hangGrace after its context ended.
var errHung = errors.New("conntest: call still running after its context ended")

// call runs f(ctx) and returns its error, or errHung if f is still running
// hangGrace after ctx ends; f is then left running. A panic in f is
// re-raised in the caller's goroutine.
func call(ctx context.Context, f func(context.Context) error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	ch := make(chan result, 1)
	go func() {
		r := result{panicked: true}
		defer func() {
			if r.panicked {
				r.value = recover()
			}
			ch <- r
		}()
		r.err = f(ctx)
		r.panicked = false
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		timer := time.NewTimer(hangGrace)
		defer timer.Stop()
		select {
		case r = <-ch:
		case <-timer.C:
			return errHung
		}
	}
	if r.panicked {
		panic(r.value)
	}
	return r.err
}

// do runs f with the check's context. A call that ignores its context fails
// the check instead of stalling the suite.
func (e *env) do(what string, f func(context.Context) error) error {
	e.t.Helper()
	return e.doCtx(e.ctx, what, f)
}

// doWithin is do with a shorter deadline.
func (e *env) doWithin(d time.Duration, what string, f func(context.Context) error) error {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, d)
	defer cancel()
	return e.doCtx(ctx, what, f)
}

func (e *env) doCtx(ctx context.Context, what string, f func(context.Context) error) error {
	e.t.Helper()
	err := call(ctx, f)
	if errors.Is(err, errHung) {
		e.t.Fatalf("%s still running %v after its context ended (%v): the driver or a pooler ignores cancellation, so no lock wait can be bounded",
			what, hangGrace, context.Cause(ctx))
	}
	return err
}

// must runs a lock or unlock that has to succeed.
func (e *env) must(what string, f func(context.Context) error) {
	e.t.Helper()
	if err := e.do(what, f); err != nil {
		if errors.Is(err, sqllock.ErrLockLost) {
			e.t.Fatalf("%s: %v\nThe lock was lost while held, or the release reached a session that did not hold it; %s", what, err, pooler)
		}
		e.t.Fatalf("%s: %v", what, err)
	}
}

// try runs a TryLock or TryLockShared and returns whether it got the lock.
func (e *env) try(what string, f func(context.Context) (bool, error)) bool {
	e.t.Helper()
	var ok bool
	err := e.do(what, func(ctx context.Context) error {
		var err error
		ok, err = f(ctx)
		return err
	})
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
	return ok
}

// mutex returns a new Mutex for the check's lock name, from a Locker with
// the suite's options and then extra, and releases whatever it still holds
// when the check ends.
func (e *env) mutex(extra ...sqllock.Option) *sqllock.Mutex {
	e.t.Helper()
	// A Locker of its own, as another process would have: with
	// sqllock.WithSessions, one Locker's holders settle their contention
	// among themselves, before the server sees it, and the checks are
	// about what the server does.
	m := sqllock.New(e.db, append(slices.Clip(e.opts), extra...)...).Mutex(e.name)
	if !m.Key().Valid() {
		e.t.Fatalf("Locker.Mutex(%q) has no valid key: %v", e.name, m.Err())
	}
	e.run.mu.Lock()
	e.run.keys[m.Key()] = e.name
	e.run.mu.Unlock()
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		for _, unlock := range []func(context.Context) error{m.Unlock, m.UnlockShared} {
			for range maxHolds {
				err := call(ctx, unlock)
				if errors.Is(err, errHung) {
					e.t.Errorf("cleanup: releasing %v still running %v after %v: the driver or a pooler ignores cancellation",
						m.Key(), hangGrace, cleanupTimeout)
					return
				}
				if errors.Is(err, sqllock.ErrNotHeld) {
					break
				}
			}
		}
	})
	return m
}

// conn returns a connection of the pool, closed when the check ends.
func (e *env) conn() *sql.Conn {
	e.t.Helper()
	var c *sql.Conn
	if err := e.do("DB.Conn", func(ctx context.Context) (err error) {
		c, err = e.db.Conn(ctx)
		return err
	}); err != nil {
		e.t.Fatalf("DB.Conn: %v", err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// begin opens a transaction on c.
func (e *env) begin(c *sql.Conn) *sql.Tx {
	e.t.Helper()
	var tx *sql.Tx
	if err := e.do("BEGIN", func(ctx context.Context) (err error) {
		tx, err = c.BeginTx(context.WithoutCancel(ctx), nil)
		return err
	}); err != nil {
		e.t.Fatalf("BEGIN: %v: sqllock holds its locks in a transaction behind a transaction-mode pooler, and a pooler in statement mode refuses transactions; %s", err, pooler)
	}
	e.t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

// rollback ends tx.
func (e *env) rollback(tx *sql.Tx) {
	e.t.Helper()
	if err := tx.Rollback(); err != nil {
		e.t.Fatalf("ROLLBACK: %v", err)
	}
}

// pid returns pg_backend_pid() as seen through c.
func (e *env) pid(c interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int64 {
	e.t.Helper()
	var pid int64
	if err := e.do("SELECT pg_backend_pid()", func(ctx context.Context) error {
		return c.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	}); err != nil {
		e.t.Fatalf("SELECT pg_backend_pid(): %v", err)
	}
	return pid
}

// A lockRow is one session holding or waiting for a key, from pg_locks.
type lockRow struct {
	pid     int64
	granted bool
	shared  bool
}

func (r lockRow) String() string {
	mode, state := "exclusive", "holds"
	if r.shared {
		mode = "shared"
	}
	if !r.granted {
		state = "waits"
	}
	return fmt.Sprintf("backend %d %s %s", r.pid, state, mode)
}

// granted returns the rows of sessions that hold the lock.
func granted(rows []lockRow) []lockRow {
	return slices.DeleteFunc(slices.Clone(rows), func(r lockRow) bool { return !r.granted })
}

// locks returns the sessions that hold or wait for k, from pg_locks.
func (e *env) locks(k keyspace.Key) []lockRow {
	e.t.Helper()
	classid, objid, objsubid := k.LockTag()
	var rows []lockRow
	err := e.do("querying pg_locks", func(ctx context.Context) error {
		rows = nil
		rs, err := e.db.QueryContext(ctx, "SELECT COALESCE(pid, 0), granted, mode = 'ShareLock' FROM pg_locks WHERE "+pgLocksWhere+
			" AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid::bigint = $3",
			int64(classid), int64(objid), int64(objsubid))
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var r lockRow
			if err := rs.Scan(&r.pid, &r.granted, &r.shared); err != nil {
				return err
			}
			rows = append(rows, r)
		}
		return rs.Err()
	})
	if err != nil {
		e.t.Fatalf("querying pg_locks: %v", err)
	}
	return rows
}

// poll calls cond every pollInterval until it returns true, and reports
// whether it did within limit and the check's deadline.
func (e *env) poll(limit time.Duration, cond func() bool) bool {
	e.t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-timer.C:
			return cond()
		case <-e.ctx.Done():
			return false
		}
	}
	return true
}

// waitFree polls pg_locks until no session holds or waits for k, for up to
// settleTimeout: a discarded connection's session ends a moment after the
// client lets go of it. It returns the rows last seen and whether k is free.
func (e *env) waitFree(k keyspace.Key) ([]lockRow, bool) {
	e.t.Helper()
	var rows []lockRow
	ok := e.poll(settleTimeout, func() bool {
		rows = e.locks(k)
		return len(rows) == 0
	})
	return rows, ok
}

// checkInUse checks db.Stats().InUse.
func (e *env) checkInUse(want int, when string) {
	e.t.Helper()
	if got := e.db.Stats().InUse; got != want {
		e.t.Errorf("db.Stats().InUse %s = %d, want %d: a connection was not returned to the pool", when, got, want)
	}
}

// settleInUse is checkInUse for a check whose calls may leave a
// connection coming back to the pool in the background: it waits up to
// settleTimeout for db.Stats().InUse to reach want.
func (e *env) settleInUse(want int, when string) {
	e.t.Helper()
	start := time.Now()
	first := e.db.Stats().InUse
	for e.db.Stats().InUse != want && time.Since(start) < settleTimeout {
		time.Sleep(5 * time.Millisecond)
	}
	if first != want && e.db.Stats().InUse == want {
		e.t.Logf("db.Stats().InUse %s was %d, and %d %v later", when, first, want, time.Since(start).Round(time.Millisecond))
	}
	e.checkInUse(want, when)
}

// A pending is a wait (a Lock, an Acquire) running in a goroutine of its own.
type pending struct {
	done   chan struct{} // closed when the wait returns
	err    error         // its result, once done is closed
	cancel context.CancelFunc
}

// goLock starts m.Lock in a goroutine, with a context of its own derived
// from the check's. When the check ends, the Lock is cancelled and waited
// for; the cleanup of m then releases what it got.
func (e *env) goLock(m *sqllock.Mutex) *pending {
	return e.goWait("Lock", m.Lock)
}

// goWait starts wait, named what, in a goroutine (see goLock).
func (e *env) goWait(what string, wait func(context.Context) error) *pending {
	ctx, cancel := context.WithCancel(e.ctx)
	p := &pending{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(p.done)
		p.err = wait(ctx)
	}()
	e.t.Cleanup(func() {
		cancel()
		timer := time.NewTimer(cleanupTimeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			e.t.Errorf("cleanup: %s still waiting %v after its context was cancelled: the driver or a pooler ignores cancellation", what, cleanupTimeout)
		}
	})
	return p
}

// awaitWaiter polls pg_locks until a session waits for k, and returns its
// row. It fails the check if p's Lock returns first: it got a lock that
// another session holds, or failed.
func (e *env) awaitWaiter(k keyspace.Key, p *pending) lockRow {
	e.t.Helper()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		for _, r := range e.locks(k) {
			if !r.granted {
				return r
			}
		}
		select {
		case <-p.done:
			if p.err != nil {
				e.t.Fatalf("Lock while another session holds the lock: %v, want it to wait", p.err)
			}
			e.t.Fatalf("Lock returned nil while another session held the lock, want it to wait: the lock did not exclude a second session; %s", pooler)
		case <-e.ctx.Done():
			e.t.Fatalf("no session waits for %v in pg_locks while Lock runs and another session holds the lock (%v)", k, context.Cause(e.ctx))
		case <-tick.C:
		}
	}
}

package conntest

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// cases is the suite, run in this order; NoLeak comes last. Keep the package
// doc's list in step.
var cases = []testCase{
	{
		"SessionPinned",
		withSource("every statement on one *sql.Conn runs in the same server session, and two Conns held at once have different sessions"),
		sessionPinned,
	},
	{
		"Exclusion",
		withSource("while one session holds a lock, TryLock in another returns false, and after Unlock it returns true"),
		exclusion,
	},
	{
		"SharedCoexist",
		withSource("two shared holders coexist and exclude an exclusive lock, and an exclusive holder excludes a shared one"),
		sharedCoexist,
	},
	{
		"UnlockReleases",
		withSource("after Unlock, pg_locks shows no lock and the connection is back in the pool"),
		unlockReleases,
	},
	{
		"WaiterWokenOnRelease",
		withSource("a session waiting in Lock gets the lock when the holder unlocks"),
		waiterWokenOnRelease,
	},
	{
		"CancelWhileWaiting",
		withSource("cancelling Lock's context ends the wait promptly with context.Canceled and leaves no lock, waiter or busy connection"),
		cancelWhileWaiting,
	},
	{
		"UnlockCancelled",
		withSource("Unlock with an already cancelled context still releases the lock: pg_locks is clean the moment it returns, and the next lock is granted"),
		unlockCancelled,
	},
	{
		"CancelStorm",
		withSource("Lock and Unlock under random short deadlines, with the lock held elsewhere or free: after every call returns, pg_locks shows only the locks still held"),
		cancelStorm,
	},
	{
		"LossDetected",
		withSource("terminating the holder's backend closes Mutex.Done, and Err and Unlock then report ErrLockLost"),
		lossDetected,
	},
	{
		"WithLockReleasesOnPanic",
		withSource("when WithLock's function panics, the panic propagates and the lock is released"),
		withLockReleasesOnPanic,
	},
	{
		"NotStandby",
		withSource("the server is a primary: pg_is_in_recovery() is false, so its advisory locks exclude every client of the database"),
		notStandby,
	},
	{
		"TransactionLocks",
		withSource("a transaction-scoped lock (LockTx) excludes another transaction's TryLockTx until commit releases it"),
		transactionLocks,
	},
	{
		"FencingTokens",
		withSource("with WithFencing, each exclusive grant's token is larger than the one before, whichever session takes it"),
		fencingTokens,
	},
	{
		"Semaphore",
		withSource("a 2-slot semaphore lets two holders from different Lockers in, one slot each in pg_locks, refuses a third TryAcquire, makes its Acquire wait until a slot is released, and each Release frees its slot"),
		semaphoreSlots,
	},
	{
		"NoLeak",
		withSource("no advisory lock on a key used by the checks above remains in pg_locks"),
		noLeak,
	},
}

func sessionPinned(t *testing.T, e *env) {
	// What sqllock's locks need: a server session that stays one
	// client's while it holds a lock. Behind a transaction-mode pooler that
	// is a transaction, in which sqllock holds each lock there.
	c1, c2 := e.conn(), e.conn()
	tx1, tx2 := e.begin(c1), e.begin(c2)
	p1, p2 := e.pid(tx1), e.pid(tx2)
	for range 3 {
		if p := e.pid(tx1); p != p1 {
			t.Fatalf("pg_backend_pid() in one transaction got backend %d, then %d after a statement in another transaction, want the same: statements ran in whichever server session was free, as behind a pooler in statement mode; %s",
				p1, p, pooler)
		}
		if p := e.pid(tx2); p != p2 {
			t.Fatalf("pg_backend_pid() in a second transaction got backend %d, then %d, want the same: consecutive statements ran in different server sessions; %s",
				p2, p, pooler)
		}
	}
	if p1 == p2 {
		t.Fatalf("pg_backend_pid() in two transactions open at once: both got backend %d, want different backends: the two connections share one server session; %s",
			p1, pooler)
	}
	e.rollback(tx1)
	e.rollback(tx2)
	// Outside a transaction, a session that moves is a transaction
	// pooler's: sqllock holds its locks in transactions there.
	for i := range 4 {
		if p := e.pid(c1); i > 0 && p != p1 {
			t.Logf("statements on one *sql.Conn outside a transaction ran in backends %d and %d: a transaction-mode pooler sits between client and server, and sqllock holds its locks in transactions (a pinned server connection per lock, or per session with WithSessions)", p1, p)
			return
		}
		p1 = e.pid(c1)
	}
}

func exclusion(t *testing.T, e *env) {
	a, b := e.mutex(), e.mutex()
	e.must("Lock of a free lock", a.Lock)
	if e.try("TryLock", b.TryLock) {
		t.Fatalf("TryLock in a second session while the first holds the lock = true, want false: the lock did not exclude a second session; %s; %s", pooler, stubLocks)
	}
	if g := granted(e.locks(a.Key())); len(g) != 1 || g[0].shared {
		t.Fatalf("pg_locks for %v while one session holds it: got %v, want one session holding it exclusively", a.Key(), g)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("Mutex.Err() of the holder = %v, want nil: the keep-alive saw the lock lost while nothing happened to its session; %s", err, pooler)
	}
	e.must("Unlock of a held lock", a.Unlock)
	if !e.try("TryLock", b.TryLock) {
		t.Fatalf("TryLock after the holder's Unlock = false, want true: Unlock did not release the lock, so the session that took it still holds it; %s", pooler)
	}
	e.must("Unlock of a held lock", b.Unlock)
}

func sharedCoexist(t *testing.T, e *env) {
	s1, s2, x := e.mutex(), e.mutex(), e.mutex()
	k := s1.Key()
	e.must("LockShared of a free lock", s1.LockShared)
	if err := e.doWithin(promptTimeout, "LockShared", s2.LockShared); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("LockShared while another session holds the lock shared: still waiting after %v, want the lock at once: shared locks do not coexist (%v)",
				promptTimeout, err)
		}
		t.Fatalf("LockShared while another session holds the lock shared: %v", err)
	}
	g := granted(e.locks(k))
	if len(g) != 2 || !g[0].shared || !g[1].shared || g[0].pid == g[1].pid {
		t.Fatalf("pg_locks for %v while two sessions hold it shared: got %v, want two different backends holding it shared; %s", k, g, pooler)
	}
	if e.try("TryLock", x.TryLock) {
		t.Fatalf("TryLock (exclusive) while two sessions hold the lock shared = true, want false: shared holders did not exclude an exclusive lock; %s", pooler)
	}
	e.must("UnlockShared of a held lock", s1.UnlockShared)
	e.must("UnlockShared of a held lock", s2.UnlockShared)
	if !e.try("TryLock", x.TryLock) {
		t.Fatalf("TryLock after both shared holders unlocked = false, want true: UnlockShared did not release the lock; %s", pooler)
	}
	if e.try("TryLockShared", s1.TryLockShared) {
		t.Fatalf("TryLockShared while another session holds the lock exclusively = true, want false: the exclusive lock did not exclude a shared one; %s", pooler)
	}
	e.must("Unlock of a held lock", x.Unlock)
}

func unlockReleases(t *testing.T, e *env) {
	m := e.mutex()
	k := m.Key()
	e.must("Lock of a free lock", m.Lock)
	done := m.Done()
	if g := granted(e.locks(k)); len(g) != 1 || g[0].shared {
		t.Fatalf("pg_locks for %v after Lock: got %v, want one session holding it exclusively", k, g)
	}
	e.must("Unlock of a held lock", m.Unlock)
	if rows := e.locks(k); len(rows) != 0 {
		t.Fatalf("pg_locks for %v right after Unlock returned: got %v, want no session holding or waiting: the unlock ran in a session that did not hold the lock, which stays held; %s",
			k, rows, pooler)
	}
	select {
	case <-done:
	default:
		t.Errorf("Mutex.Done() channel of the lock still open after Unlock, want closed")
	}
	if err := m.Err(); !errors.Is(err, sqllock.ErrNotHeld) {
		t.Errorf("Mutex.Err() after Unlock = %v, want %v", err, sqllock.ErrNotHeld)
	}
	e.checkInUse(e.baseline, "after Unlock")
}

func waiterWokenOnRelease(t *testing.T, e *env) {
	holder, waiter := e.mutex(), e.mutex()
	k := holder.Key()
	e.must("Lock of a free lock", holder.Lock)
	p := e.goLock(waiter)
	w := e.awaitWaiter(k, p)
	e.must("Unlock of a held lock", holder.Unlock)
	timer := time.NewTimer(promptTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		t.Fatalf("Lock still waiting %v after the holder's Unlock returned, want it granted: the release did not reach the session that held the lock, or the waiter was not woken; %s",
			promptTimeout, pooler)
	}
	if p.err != nil {
		t.Fatalf("Lock woken by the holder's Unlock: %v, want nil", p.err)
	}
	if g := granted(e.locks(k)); len(g) != 1 || g[0].pid != w.pid || g[0].shared {
		t.Fatalf("pg_locks for %v after the waiter got the lock: got %v, want backend %d (the one that waited) holding it exclusively", k, g, w.pid)
	}
	e.must("Unlock of a held lock", waiter.Unlock)
}

func cancelWhileWaiting(t *testing.T, e *env) {
	holder, waiter, probe := e.mutex(), e.mutex(), e.mutex()
	k := holder.Key()
	e.must("Lock of a free lock", holder.Lock)
	p := e.goLock(waiter)
	e.awaitWaiter(k, p)
	p.cancel()
	start := time.Now()
	timer := time.NewTimer(promptTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		t.Fatalf("Lock still waiting %v after its context was cancelled, want it to return promptly: the driver does not interrupt a statement when its context ends", promptTimeout)
	}
	t.Logf("Lock returned %v after its context was cancelled", time.Since(start))
	if !errors.Is(p.err, context.Canceled) {
		t.Fatalf("Lock after its context was cancelled: got error %v, want one wrapping %v", p.err, context.Canceled)
	}
	if err := waiter.Err(); !errors.Is(err, sqllock.ErrNotHeld) {
		t.Errorf("Mutex.Err() of the cancelled waiter = %v, want %v", err, sqllock.ErrNotHeld)
	}
	e.checkInUse(e.baseline+1, "after the cancelled Lock returned, with the holder's lock still held")
	if rows := e.locks(k); len(rows) != 1 || !rows[0].granted {
		t.Fatalf("pg_locks for %v right after the cancelled Lock returned: got %v, want only the holder: the cancelled wait left its session waiting in the server; %s",
			k, rows, discarded)
	}
	e.must("Unlock of a held lock", holder.Unlock)
	if rows := e.locks(k); len(rows) != 0 {
		t.Fatalf("pg_locks for %v right after the holder unlocked: got %v, want no session holding or waiting: the cancelled wait left a session behind that got the lock; %s",
			k, rows, discarded)
	}
	if !e.try("TryLock", probe.TryLock) {
		t.Fatalf("TryLock after the waiter was cancelled and the holder unlocked = false, want true")
	}
	e.must("Unlock of a held lock", probe.Unlock)
	e.checkInUse(e.baseline, "after the check released everything")
}

func unlockCancelled(t *testing.T, e *env) {
	m, probe := e.mutex(), e.mutex()
	k := m.Key()
	e.must("Lock of a free lock", m.Lock)
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	err := e.doCtx(cancelled, "Unlock with a cancelled context", m.Unlock)
	if rows := e.locks(k); len(rows) != 0 {
		t.Fatalf("pg_locks for %v right after Unlock with a cancelled context returned %v: got %v, want no session holding or waiting: the lock outlived its release; %s",
			k, err, rows, discarded)
	}
	if err != nil {
		t.Logf("Unlock with a cancelled context: %v (the lock is released)", err)
	}
	if !e.try("TryLock", probe.TryLock) {
		t.Fatalf("TryLock after Unlock with a cancelled context = false, want true")
	}
	e.must("Unlock of a held lock", probe.Unlock)
	e.checkInUse(e.baseline, "after the check released everything")
}

// stormRounds is how many Lock and Unlock calls CancelStorm cancels.
const stormRounds = 40

func cancelStorm(t *testing.T, e *env) {
	holder := e.mutex()
	k := holder.Key()
	held := false
	var ended, granted int
	for round := range stormRounds {
		if want := round%4 < 2; want != held {
			if want {
				e.must("Lock of a free lock", holder.Lock)
			} else {
				e.must("Unlock of a held lock", holder.Unlock)
			}
			held = want
		}
		m := e.mutex()
		deadline := func() time.Duration { return time.Duration(rand.Int64N(int64(3 * time.Millisecond))) }
		err := e.doWithin(deadline(), "Lock under a short deadline", m.Lock)
		switch {
		case err == nil && held:
			t.Fatalf("round %d: Lock = nil while another session holds %v, want it to wait: the lock did not exclude a second session; %s", round, k, pooler)
		case err == nil:
			granted++
			err = e.doWithin(deadline(), "Unlock under a short deadline", m.Unlock)
		}
		if err != nil {
			ended++
		}
		// Whatever each call returned, the server shows exactly the
		// holder's lock, at once: nothing the storm touched lingers.
		rows := e.locks(k)
		if held && (len(rows) != 1 || !rows[0].granted) || !held && len(rows) != 0 {
			want := "none"
			if held {
				want = "only the holder's"
			}
			t.Fatalf("round %d: pg_locks for %v right after a call under a short deadline returned %v: got %v, want %s: a cancelled call left a lock or a wait behind; %s",
				round, k, err, rows, want, discarded)
		}
	}
	if held {
		e.must("Unlock of a held lock", holder.Unlock)
	}
	t.Logf("%d rounds: %d locks granted (then unlocked or cancelled), %d calls cut short by their deadline", stormRounds, granted, ended)
	e.checkInUse(e.baseline, "after the storm")
}

// sqlState is what pgx's and lib/pq's server errors have in common.
type sqlState interface{ SQLState() string }

func lossDetected(t *testing.T, e *env) {
	m := e.mutex()
	k := m.Key()
	e.must("Lock of a free lock", m.Lock)
	lost := m.Done()
	g := granted(e.locks(k))
	if len(g) != 1 {
		t.Fatalf("pg_locks for %v after Lock: got %v, want one session holding it", k, g)
	}
	pid := g[0].pid
	select {
	case <-lost:
		t.Fatalf("Mutex.Done() closed before anything happened to the holder's session (Err: %v), want it open: the keep-alive saw the lock lost; %s",
			m.Err(), pooler)
	default:
	}

	var terminated bool
	err := e.do("pg_terminate_backend", func(ctx context.Context) error {
		return e.db.QueryRowContext(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&terminated)
	})
	if se := sqlState(nil); errors.As(err, &se) && se.SQLState() == "42501" {
		t.Skipf("cannot check loss detection: pg_terminate_backend(%d) needs a superuser, the role that holds the lock or a member of pg_signal_backend: %v",
			pid, err)
	}
	if err != nil {
		t.Fatalf("pg_terminate_backend(%d): %v", pid, err)
	}
	if !terminated {
		t.Fatalf("pg_terminate_backend(%d) = false, want true: the backend holding the lock is gone", pid)
	}

	select {
	case <-lost:
	case <-e.ctx.Done():
		t.Fatalf("Mutex.Done() still open after the holder's backend %d was terminated (%v), want it closed: the loss went unnoticed (do the options given to Run disable the keep-alive?)",
			pid, context.Cause(e.ctx))
	}
	if err := m.Err(); !errors.Is(err, sqllock.ErrLockLost) {
		t.Errorf("Mutex.Err() after the holder's backend was terminated = %v, want an error wrapping %v", err, sqllock.ErrLockLost)
	}
	if err := e.do("Unlock", m.Unlock); !errors.Is(err, sqllock.ErrLockLost) {
		t.Errorf("Unlock after the holder's backend was terminated = %v, want an error wrapping %v", err, sqllock.ErrLockLost)
	}
	if rows, ok := e.waitFree(k); !ok {
		t.Fatalf("pg_locks for %v %v after its holder's backend %d was terminated: got %v, want no session holding or waiting", k, settleTimeout, pid, rows)
	}
}

// errPanic is the panic of WithLockReleasesOnPanic's function.
var errPanic = errors.New("conntest: deliberate panic in WithLock's function")

func withLockReleasesOnPanic(t *testing.T, e *env) {
	m, other := e.mutex(), e.mutex()
	k := m.Key()
	var ran, excluded bool
	var tryErr, err error
	recovered := func() (r any) {
		defer func() { r = recover() }()
		err = e.do("WithLock", func(ctx context.Context) error {
			return m.WithLock(ctx, func(ctx context.Context) error {
				ran = true
				ok, err := other.TryLock(ctx)
				excluded, tryErr = !ok, err
				if ok {
					_ = other.Unlock(context.WithoutCancel(ctx))
				}
				panic(errPanic)
			})
		})
		return nil
	}()
	switch {
	case !ran:
		t.Fatalf("WithLock of a free lock did not run its function: returned %v, panicked with %v", err, recovered)
	case recovered == nil:
		t.Fatalf("WithLock whose function panicked returned %v, want the panic to propagate", err)
	case recovered != errPanic:
		t.Fatalf("WithLock whose function panicked with %v: recovered %v, want the function's panic", errPanic, recovered)
	case tryErr != nil:
		t.Fatalf("TryLock in another session inside WithLock's function: %v", tryErr)
	case !excluded:
		t.Fatalf("TryLock in another session inside WithLock's function = true, want false: the lock did not exclude a second session; %s", pooler)
	}
	if rows, ok := e.waitFree(k); !ok {
		t.Fatalf("pg_locks for %v %v after WithLock's function panicked: got %v, want no session holding or waiting: the lock outlived the panic; %s",
			k, settleTimeout, rows, pooler)
	}
	if !e.try("TryLock", other.TryLock) {
		t.Fatalf("TryLock after WithLock's function panicked = false, want true")
	}
	e.must("Unlock of a held lock", other.Unlock)
}

func noLeak(t *testing.T, e *env) {
	keys := e.usedKeys()
	if len(keys) == 0 {
		t.Logf("no other check took a lock")
	}
	type leak struct {
		key keyspace.Key
		row lockRow
	}
	var leaks []leak
	ok := e.poll(settleTimeout, func() bool {
		leaks = nil
		err := e.do("querying pg_locks", func(ctx context.Context) error {
			rs, err := e.db.QueryContext(ctx, "SELECT classid::bigint, objid::bigint, objsubid::bigint, COALESCE(pid, 0), granted, mode = 'ShareLock' FROM pg_locks WHERE "+pgLocksWhere)
			if err != nil {
				return err
			}
			defer rs.Close()
			for rs.Next() {
				var classid, objid, objsubid int64
				var r lockRow
				if err := rs.Scan(&classid, &objid, &objsubid, &r.pid, &r.granted, &r.shared); err != nil {
					return err
				}
				k, err := keyspace.FromLockTag(uint32(classid), uint32(objid), int16(objsubid))
				if _, used := keys[k]; err == nil && used {
					leaks = append(leaks, leak{k, r})
				}
			}
			return rs.Err()
		})
		if err != nil {
			t.Fatalf("querying pg_locks: %v", err)
		}
		return len(leaks) == 0
	})
	if !ok {
		for _, l := range leaks {
			t.Errorf("pg_locks for %v (lock name %q), %v after every check ended: %v, want none", l.key, keys[l.key], settleTimeout, l.row)
		}
		t.Fatalf("advisory locks taken by the checks still held or awaited: got %d, want 0: sessions kept locks that sqllock released or discarded; %s",
			len(leaks), pooler)
	}
	e.checkInUse(e.baseline, "after every check")
}

func notStandby(t *testing.T, e *env) {
	var inRecovery bool
	if err := e.do("SELECT pg_is_in_recovery()", func(ctx context.Context) error {
		return e.db.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
	}); err != nil {
		t.Fatalf("SELECT pg_is_in_recovery(): %v", err)
	}
	if inRecovery {
		t.Fatalf("pg_is_in_recovery() = true, want false: this is a hot standby, whose advisory locks exclude nobody on the primary; " +
			"point the pool at the primary (sqllock refuses standby locks with ErrStandby unless WithAllowStandby is set)")
	}
}

func transactionLocks(t *testing.T, e *env) {
	begin := func() *sql.Tx {
		t.Helper()
		var tx *sql.Tx
		if err := e.do("DB.BeginTx", func(ctx context.Context) (err error) {
			tx, err = e.db.BeginTx(ctx, nil)
			return err
		}); err != nil {
			t.Fatalf("DB.BeginTx: %v", err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		return tx
	}
	a, b := e.mutex(), e.mutex()
	tx1, tx2 := begin(), begin()
	e.must("LockTx", func(ctx context.Context) error { return a.LockTx(ctx, tx1) })
	if e.try("TryLockTx in a second transaction", func(ctx context.Context) (bool, error) { return b.TryLockTx(ctx, tx2) }) {
		t.Fatalf("TryLockTx in a second transaction got the lock while the first holds it, want false: transaction-scoped locks do not exclude")
	}
	if err := e.do("Commit", func(context.Context) error { return tx1.Commit() }); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if !e.try("TryLockTx after the holder committed", func(ctx context.Context) (bool, error) { return b.TryLockTx(ctx, tx2) }) {
		t.Fatalf("TryLockTx after the holder committed returned false, want true: commit did not release the transaction lock")
	}
	if err := e.do("Rollback", func(context.Context) error { return tx2.Rollback() }); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
}

func fencingTokens(t *testing.T, e *env) {
	if err := sqllock.New(e.db, append(slices.Clip(e.run.opts), sqllock.WithFencing())...).Err(); err != nil {
		t.Skipf("the options given to Run exclude fencing: %v", err)
	}
	var last uint64
	for round := range 4 {
		m := e.mutex(sqllock.WithFencing())
		err := e.do("Lock", m.Lock)
		if errors.Is(err, sqllock.ErrFencingUnsupported) {
			t.Skipf("the server has no fencing tokens: %v", err)
		}
		if err != nil {
			t.Fatalf("Lock of a free lock with WithFencing: %v", err)
		}
		tok, ok := m.Token()
		if !ok {
			t.Fatalf("Mutex.Token() after Lock with WithFencing: no token")
		}
		if tok <= last {
			t.Fatalf("grant %d: token %d after %d, want a larger one: the server's transaction ids did not grow; are the two grants on the same server?",
				round+1, tok, last)
		}
		last = tok
		e.must("Unlock of a held lock", m.Unlock)
	}
}

package sqllock

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
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
	l   *Locker
	t   session.Target // its name, key and statements, handed down with each request
	err error          // sticky: the Locker's, or this name's key problem

	mu     sync.Mutex
	excl   []*session.Grant // exclusive grants of Lock and TryLock, oldest first: what Unlock releases
	shared []*session.Grant // shared grants of LockShared and TryLockShared, oldest first
	scoped []*session.Grant // grants of WithLock and friends, which release them themselves
}

// Name returns the lock's name; it is empty for a Mutex made by
// [Locker.MutexKey].
func (m *Mutex) Name() string { return m.t.Name }

// Key returns the lock's advisory-lock key; it is the zero Key when the
// Mutex has a sticky error.
func (m *Mutex) Key() keyspace.Key { return m.t.Key }

func (m *Mutex) fail(op string, err error) error {
	return fail(op, &m.t, err)
}

// fail makes the error of operation op on t's lock; the session layer's
// errors that outlive a call (a loss, a release) are made by it too.
func fail(op string, t *session.Target, err error) error {
	return &Error{Op: op, Name: t.Name, Key: t.Key, Err: err}
}

func opName(base string, shared bool) string {
	if shared {
		return base + " shared"
	}
	return base
}

// acquire takes the lock, through the Locker's session layer. With try,
// it returns (nil, nil) if another session holds the key.
//
// With push, a grant joins the Mutex's holds before observers hear of it:
// an observer told of an early loss may call Unlock, which must find it.
func (m *Mutex) acquire(ctx context.Context, shared, try, push bool, onLost func(error)) (*session.Grant, error) {
	g, _, err := m.acquireObserved(ctx, shared, try, push, onLost)
	return g, err
}

// acquireObserved is acquire, which also returns the observers' attempt
// (nil without observers), for WithLock's [HoldObserver]s.
func (m *Mutex) acquireObserved(ctx context.Context, shared, try, push bool, onLost func(error)) (*session.Grant, *attempt, error) {
	op := opName("lock", shared)
	if try {
		op = opName("trylock", shared)
	}
	switch {
	case ctx == nil:
		return nil, nil, m.fail(op, ErrNilContext)
	case m.err != nil:
		return nil, nil, m.fail(op, m.err)
	}
	var a *attempt
	if m.l.obs != nil {
		a = m.l.obs.start(ctx, &m.t, shared, try)
	}
	g, err := m.l.sessions.Acquire(ctx, &m.t, session.Request{Shared: shared, Try: try, OnLost: onLost})
	if err != nil {
		err = m.fail(op, err)
		g = nil
	}
	if push && g != nil {
		m.push(g)
	}
	if a != nil {
		m.l.obs.acquired(a, &m.t, shared, g, err)
	}
	return g, a, err
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
	_, err := m.acquire(ctx, shared, false, true, nil)
	return err
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
	h, err := m.acquire(ctx, shared, true, true, nil)
	return h != nil, err
}

func (m *Mutex) push(h *session.Grant) {
	m.mu.Lock()
	if h.Shared() {
		m.shared = append(m.shared, h)
	} else {
		m.excl = append(m.excl, h)
	}
	m.mu.Unlock()
}

// remove takes WithLock's grant h off the Mutex's grants.
func (m *Mutex) remove(h *session.Grant) {
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
	return m.release(ctx, h)
}

// oldest returns the lock Done and Err describe: the oldest exclusive lock
// still held, else the oldest shared lock still held, else (all of them
// lost, none unlocked yet) the oldest lock of either mode.
func (m *Mutex) oldest() *session.Grant {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first *session.Grant // the oldest hold of all, should every one be lost
	for _, shared := range []bool{false, true} {
		for _, list := range [][]*session.Grant{m.excl, m.shared, m.scoped} {
			for _, h := range list {
				if h.Shared() != shared {
					continue
				}
				if first == nil {
					first = h
				}
				if h.Err() == nil {
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
		return h.Done()
	}
	return closedChan
}

// Err returns nil while the lock described by [Mutex.Done] is held, an
// error wrapping [ErrLockLost] once it is lost, and [ErrNotHeld] when no
// lock is held.
func (m *Mutex) Err() error {
	if h := m.oldest(); h != nil {
		return h.Err()
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
// ctx bounds the wait for the lock and is the parent of fn's context
// (which a [HoldObserver] may add to: a tracer's hold span); to bound the
// wait alone, add [MaxWait]. If the lock is not acquired, fn does
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
	return runHolding(m, opName("withlock", shared), shared, try, ctx, fn, opts)
}

// acquireRun takes the lock for WithLock (see runner), registered apart
// from Lock's holds, so that no Unlock takes it (an Unlock releases what
// Lock took).
func (m *Mutex) acquireRun(ctx context.Context, shared, try bool, onLost func(error)) (*session.Grant, *attempt, error) {
	g, a, err := m.acquireObserved(ctx, shared, try, false, onLost)
	if g != nil {
		m.mu.Lock()
		m.scoped = append(m.scoped, g)
		m.mu.Unlock()
	}
	return g, a, err
}

// releaseRun releases WithLock's grant g (see runner).
func (m *Mutex) releaseRun(ctx context.Context, g *session.Grant) error {
	m.remove(g)
	return m.release(ctx, g)
}

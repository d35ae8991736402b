package sqllock

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
)

// A Semaphore lets at most n holders in at once, across every process
// that uses the same name and n: a counting semaphore on PostgreSQL
// advisory locks.
//
// Its n slots are n locks, slot i the lock the Locker's keyspace names
// "<name>#<i>" (i from 0); a grant holds exactly one of them, exclusively,
// so the server, not a process's memory, keeps the count. Each slot is
// held as a [Mutex] lock is: on a connection of its own (or a shared
// session with [WithSessions], or a transaction of its own behind a
// transaction-mode pooler), watched by the keep-alive, released at
// Release or when its session ends, with a fencing token per grant under
// [WithFencing]. docs/design.md ("Semaphores") gives the keys, so that
// other languages can join, and the waiting protocol.
//
// Waiters of one process are served first come, first served, and only
// the first of them waits on the server, in the server's queue of one
// slot, which it gets the moment its holder lets go; one of those waiters
// (the one holding the lock "<name>#watch") tries the other slots now and
// then, and a waiter turns to another slot after a while, so that no
// waiter starves while others are granted slots.
//
// Processes that disagree on n share the slots they have in common: the
// holders never number more than the largest n in use.
//
// A Semaphore is safe for concurrent use by multiple goroutines; several
// Semaphore values for one name in one process are as separate processes.
type Semaphore struct {
	l     *Locker
	name  string
	n     int
	slots []*Mutex       // slot i: the lock called name#i
	watch *Mutex         // name#watch: held by the waiter that tries the slots no one waits for
	err   error          // sticky: the Locker's, n's, or the keys' problem
	named session.Target // the semaphore's name, for observers, before a slot is known

	q semQueue

	mu     sync.Mutex
	held   []semGrant // grants of Acquire and TryAcquire, oldest first: what Release releases
	scoped []semGrant // grants of WithSlot and TrySlot, which release them themselves
	own    []int      // grants this Semaphore holds per slot, which its tries skip
	hint   atomic.Int64
}

// A semGrant is one granted slot.
type semGrant struct {
	slot int
	g    *session.Grant
}

// Semaphore returns a semaphore called name with n slots (see
// [Semaphore]). Every Semaphore for the same name and strategy, in this
// process or any other, shares the same slots.
//
// n must be at least 1, and the Locker's keyspace strategy must give the
// slots n+1 different keys (a strategy that parses names as numbers, or
// gives every name one key, cannot): otherwise the Semaphore records the
// problem and every operation returns it.
func (l *Locker) Semaphore(name string, n int) *Semaphore {
	s := &Semaphore{l: l, name: name, n: n}
	switch {
	case l.cfg.err != nil:
		s.err = l.cfg.err
		return s
	case n < 1:
		s.err = fmt.Errorf("sqllock: a semaphore needs at least 1 slot, not %d", n)
		return s
	case n > maxSlots:
		s.err = fmt.Errorf("sqllock: a semaphore has at most %d slots, not %d", maxSlots, n)
		return s
	}
	// The slots' and the watcher's locks carry the semaphore's name, in
	// errors and observers' events; their keys tell them apart.
	lock := func(lockName string) (*Mutex, error) {
		k, err := keyFor(l.cfg.strategy, lockName)
		if err != nil {
			return nil, fmt.Errorf("lock %q: %w", lockName, err)
		}
		m := &Mutex{l: l}
		m.t.Name = name
		return l.mutex(m, k), nil
	}
	names := []string{name + "#watch"}
	for i := range n {
		names = append(names, SlotName(name, i))
	}
	seen := make(map[keyspace.Key]string, n+1)
	for i, lockName := range names {
		m, err := lock(lockName)
		if err != nil {
			s.err = err
			return s
		}
		if other, dup := seen[m.Key()]; dup {
			s.err = fmt.Errorf("sqllock: keyspace strategy %T gives %q and %q the same key %v: a semaphore needs a strategy that hashes names", l.cfg.strategy, other, lockName, m.Key())
			return s
		}
		seen[m.Key()] = lockName
		if i == 0 {
			s.watch = m
		} else {
			s.slots = append(s.slots, m)
		}
	}
	s.named.Name = name
	s.own = make([]int, n)
	return s
}

// maxSlots bounds n: every slot is a lock of its own, and a waiter tries
// them all.
const maxSlots = 1024

// SlotName returns the name of slot i of the semaphore called name: the
// lock "<name>#<i>", whose key the Locker's keyspace strategy gives. A
// program in another language joins a semaphore by taking one of these
// locks with pg_try_advisory_lock or pg_advisory_lock on the same keys.
func SlotName(name string, i int) string {
	return name + "#" + strconv.Itoa(i)
}

// Name returns the semaphore's name.
func (s *Semaphore) Name() string { return s.name }

// Slots returns n, the number of holders the semaphore lets in at once.
func (s *Semaphore) Slots() int { return s.n }

func (s *Semaphore) fail(op string, err error) error {
	return &Error{Op: op, Name: s.name, Err: err}
}

// Acquire waits until it holds a slot, or until ctx ends. ctx bounds only
// the wait: cancelling it later does not release the slot. If ctx ends
// first, Acquire returns an error wrapping ctx.Err() and holds nothing.
//
// The slot pins a connection of the pool until [Semaphore.Release]; while
// it is held, the keep-alive watches its session, and [Semaphore.Done]
// and [Semaphore.Err] report a loss. While callers wait, the first of
// them in the process pins one connection, waiting in the server, and
// tries the other slots or the watcher's role now and then on another
// (one that watches pins a second one); the others wait in memory.
func (s *Semaphore) Acquire(ctx context.Context) error {
	_, _, err := s.acquire(ctx, "acquire", false, &s.held, nil)
	return err
}

// TryAcquire takes a slot if one is free, and returns (false, nil) if
// none is, or if other goroutines of this Semaphore wait for one: it never
// goes ahead of them. It costs one round trip per slot it tries, one when
// the semaphore is idle. ctx bounds the round trips.
func (s *Semaphore) TryAcquire(ctx context.Context) (bool, error) {
	g, _, err := s.acquire(ctx, "tryacquire", true, &s.held, nil)
	return g.g != nil, err
}

// Release releases the oldest slot taken by Acquire or TryAcquire, as
// [Mutex.Unlock] releases a lock: ctx bounds the statement, not the
// release, and Release returns nil only once the server no longer shows
// the slot held. It returns an error wrapping [ErrNotHeld] if no slot is
// held, and one wrapping [ErrLockLost] if the slot was lost.
func (s *Semaphore) Release(ctx context.Context) error {
	const op = "release"
	switch {
	case ctx == nil:
		return s.fail(op, ErrNilContext)
	case s.err != nil:
		return s.fail(op, s.err)
	}
	s.mu.Lock()
	if len(s.held) == 0 {
		s.mu.Unlock()
		return s.fail(op, ErrNotHeld)
	}
	h := s.held[0]
	n := copy(s.held, s.held[1:])
	s.held[n] = semGrant{}
	s.held = s.held[:n]
	s.mu.Unlock()
	return s.release(ctx, h)
}

// release releases h and lets the first waiter of this process try its
// slot at once.
func (s *Semaphore) release(ctx context.Context, h semGrant) error {
	err := s.slots[h.slot].release(ctx, h.g)
	s.mu.Lock()
	s.own[h.slot]--
	s.mu.Unlock()
	s.hint.Store(int64(h.slot))
	s.q.kick()
	return err
}

// oldest returns the grant Done, Err, Token and Slot describe: the
// oldest one still held, else the oldest lost one; false with none.
func (s *Semaphore) oldest() (semGrant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first semGrant
	for _, list := range [][]semGrant{s.held, s.scoped} {
		for _, h := range list {
			if first.g == nil {
				first = h
			}
			if h.g.Err() == nil {
				return h, true
			}
		}
	}
	return first, first.g != nil
}

// Done returns a channel that is closed when the slot this Semaphore holds
// ends: lost or released ([Semaphore.Err] says which). With several slots
// held, it describes the oldest one still held; with none, it returns a
// closed channel.
func (s *Semaphore) Done() <-chan struct{} {
	if h, ok := s.oldest(); ok {
		return h.g.Done()
	}
	return closedChan
}

// Err returns nil while the slot described by [Semaphore.Done] is held, an
// error wrapping [ErrLockLost] once it is lost, and [ErrNotHeld] when no
// slot is held.
func (s *Semaphore) Err() error {
	if h, ok := s.oldest(); ok {
		return h.g.Err()
	}
	if s.err != nil {
		return s.fail("hold", s.err)
	}
	return ErrNotHeld
}

// Token returns the fencing token of the slot described by
// [Semaphore.Done] (see [WithFencing]); false without WithFencing, or when
// no slot is held or it was lost. Inside WithSlot's function, [Token]
// reads it from the context.
func (s *Semaphore) Token() (uint64, bool) {
	h, ok := s.oldest()
	if !ok || h.g.Token() == 0 || h.g.Err() != nil {
		return 0, false
	}
	return h.g.Token(), true
}

// Slot returns the slot described by [Semaphore.Done]: its index, from 0;
// false when no slot is held.
func (s *Semaphore) Slot() (int, bool) {
	h, ok := s.oldest()
	return h.slot, ok
}

// WithSlot runs fn while holding a slot, and releases it however fn ends,
// as [Mutex.WithLock] does with a lock: ctx bounds the wait (add
// [MaxWait] to bound it alone) and is the parent of fn's context; if no
// slot is acquired, fn does not run and the error wraps [ErrNotAcquired];
// a slot lost while fn runs cancels fn's context with a cause wrapping
// [ErrLockLost], and WithSlot returns an error wrapping it.
func (s *Semaphore) WithSlot(ctx context.Context, fn func(ctx context.Context) error, opts ...WithLockOption) error {
	_, err := s.withSlot(ctx, false, fn, opts)
	return err
}

// TryWithSlot is [Semaphore.WithSlot] without the wait: if no slot is
// free (see [Semaphore.TryAcquire]) it returns (false, nil) at once and
// does not run fn.
func (s *Semaphore) TryWithSlot(ctx context.Context, fn func(ctx context.Context) error) (bool, error) {
	return s.withSlot(ctx, true, fn, nil)
}

func (s *Semaphore) withSlot(ctx context.Context, try bool, fn func(context.Context) error, opts []WithLockOption) (bool, error) {
	return runHolding(s, "withslot", false, try, ctx, fn, opts)
}

// acquireRun takes a slot for WithSlot (see runner), registered apart
// from Acquire's, so that no Release takes it.
func (s *Semaphore) acquireRun(ctx context.Context, _, try bool, onLost func(error)) (*session.Grant, *attempt, error) {
	h, a, err := s.acquire(ctx, "withslot", try, &s.scoped, onLost)
	return h.g, a, err
}

// releaseRun releases WithSlot's grant g (see runner).
func (s *Semaphore) releaseRun(ctx context.Context, g *session.Grant) error {
	s.mu.Lock()
	var h semGrant
	for i, x := range s.scoped {
		if x.g == g {
			h = x
			s.scoped = append(s.scoped[:i], s.scoped[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	return s.release(ctx, h)
}

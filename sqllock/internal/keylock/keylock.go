// Package keylock excludes holders of the same key within one process,
// the way PostgreSQL excludes sessions holding an advisory lock: exclusive
// holders exclude everyone, shared holders coexist with each other.
//
// PostgreSQL's session locks are re-entrant: a session may take a lock it
// already holds. When several holders of one process share a server
// session, the server would grant them all; a Table makes them wait for
// each other first, so that one process's holders exclude each other
// exactly as two processes do. Waiters are served in arrival order, so an
// exclusive waiter is not starved by a stream of shared ones.
package keylock

import (
	"context"
	"sync"
)

// A Table holds the keys of one process. The zero Table is ready to use. A
// Table must not be copied after first use.
type Table[K comparable] struct {
	mu   sync.Mutex
	keys map[K]*entry
	free []*entry // forgotten entries, for reuse: a key taken and released in a loop allocates none
}

// maxFree bounds the entries a Table keeps for reuse.
const maxFree = 64

// entry is one key's state: its holders and its waiters, oldest first.
type entry struct {
	exclusive bool // the holders hold it exclusively (then there is one)
	holders   int
	waiters   []*waiter
}

type waiter struct {
	shared bool
	ready  chan struct{} // closed when granted
}

// compatible reports whether a holder in the given mode may join e's
// holders now.
func (e *entry) compatible(shared bool) bool {
	if e.holders == 0 {
		return true
	}
	return shared && !e.exclusive
}

// TryLock takes k in the given mode if it can at once: no holder it
// conflicts with, and no one waiting before it.
func (t *Table[K]) TryLock(k K, shared bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(k)
	if len(e.waiters) > 0 || !e.compatible(shared) {
		t.tidy(k, e)
		return false
	}
	e.grant(shared)
	return true
}

// Lock takes k in the given mode, waiting behind earlier waiters and
// conflicting holders until it can, or until ctx ends; then it returns
// ctx's error and holds nothing.
func (t *Table[K]) Lock(ctx context.Context, k K, shared bool) error {
	t.mu.Lock()
	e := t.entry(k)
	if len(e.waiters) == 0 && e.compatible(shared) {
		e.grant(shared)
		t.mu.Unlock()
		return nil
	}
	w := &waiter{shared: shared, ready: make(chan struct{})}
	e.waiters = append(e.waiters, w)
	t.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-w.ready:
		// Granted as ctx ended: give it back.
		t.release(k, shared)
	default:
		for i, o := range e.waiters {
			if o == w {
				e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
				break
			}
		}
		// A waiter that left may have been what held back those
		// behind it.
		e.wake()
		t.tidy(k, e)
	}
	return context.Cause(ctx)
}

// Unlock releases one hold of k in the given mode. It panics if k is not
// held in that mode: a hold released twice is a bug of the caller's.
func (t *Table[K]) Unlock(k K, shared bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.release(k, shared)
}

// Held reports how many holders k has, and whether they hold it
// exclusively.
func (t *Table[K]) Held(k K) (holders int, exclusive bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.keys[k]; e != nil {
		return e.holders, e.exclusive
	}
	return 0, false
}

// Len returns the number of keys held or waited for.
func (t *Table[K]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}

func (t *Table[K]) release(k K, shared bool) {
	e := t.keys[k]
	if e == nil || e.holders == 0 || e.exclusive == shared {
		panic("keylock: Unlock of a key not held in that mode")
	}
	e.holders--
	if e.holders == 0 {
		e.exclusive = false
	}
	e.wake()
	t.tidy(k, e)
}

// entry returns k's entry, making it if need be. t.mu is held.
func (t *Table[K]) entry(k K) *entry {
	if t.keys == nil {
		t.keys = make(map[K]*entry)
	}
	e := t.keys[k]
	if e == nil {
		if n := len(t.free); n > 0 {
			e, t.free = t.free[n-1], t.free[:n-1]
		} else {
			e = &entry{}
		}
		t.keys[k] = e
	}
	return e
}

// tidy forgets k once no one holds or waits for it. t.mu is held.
func (t *Table[K]) tidy(k K, e *entry) {
	if e.holders == 0 && len(e.waiters) == 0 {
		delete(t.keys, k)
		if len(t.free) < maxFree {
			*e = entry{waiters: e.waiters[:0]}
			t.free = append(t.free, e)
		}
	}
}

func (e *entry) grant(shared bool) {
	e.holders++
	e.exclusive = !shared
}

// wake grants the waiters at the head of the queue that may hold now, in
// order: one exclusive waiter, or a run of shared ones.
func (e *entry) wake() {
	for len(e.waiters) > 0 && e.compatible(e.waiters[0].shared) {
		w := e.waiters[0]
		e.waiters[0] = nil
		e.waiters = e.waiters[1:]
		e.grant(w.shared)
		close(w.ready)
	}
}

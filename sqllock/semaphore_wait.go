package sqllock

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
)

// How a Semaphore waits (docs/design.md, "Semaphores"):
//
//  1. A caller tries the slots, one statement each, unless callers of this
//     Semaphore already wait: then it queues behind them, in memory.
//  2. The first waiter of the process waits in the server for one slot,
//     picked at random: the server grants it the moment its holder lets
//     go, first come first served among the waiters of that slot, and no
//     try takes it before them. After semRequeue it waits for another
//     slot instead, so that a slot held for hours holds up no one, and
//     after twice as long for the next, up to semRequeueMax: turning
//     costs its waiting session, which the server ends.
//  3. One first waiter of all processes, the one that holds the lock
//     name#watch, tries the other slots every semPoll, for slots that no
//     one waits for; the others try to take over that role every
//     semWatch. Every first waiter also tries the slots at once when a
//     holder of its Semaphore releases one.
//  4. With a slot, a waiter lets go of name#watch, and the next first
//     waiter of the process goes on.
const (
	semPoll       = 20 * time.Millisecond  // how often the watcher tries the other slots
	semWatch      = 100 * time.Millisecond // how often the other first waiters try to watch
	semRequeue    = 2 * time.Second        // how long a first waiter waits for one slot before another
	semRequeueMax = 30 * time.Second       // and at most, however long it waits
)

// acquire takes a slot: with try, only if one is free now and no caller
// of s waits. The grant joins list (s.held or s.scoped) before observers
// hear of it, as a Mutex's does. Observers hear of the call as one
// attempt, which it returns (see take).
func (s *Semaphore) acquire(ctx context.Context, op string, try bool, list *[]semGrant, onLost func(error)) (semGrant, *attempt, error) {
	switch {
	case ctx == nil:
		return semGrant{}, nil, s.fail(op, ErrNilContext)
	case s.err != nil:
		return semGrant{}, nil, s.fail(op, s.err)
	}
	var a *attempt
	if s.l.obs != nil {
		a = s.l.obs.start(ctx, &s.named, false, try)
	}
	var h semGrant
	var err error
	if !s.q.busy() {
		h, err = s.tryAll(ctx, onLost)
	}
	if h.g == nil && err == nil && !try {
		h, err = s.wait(ctx, onLost)
	}
	if err != nil {
		err = s.fail(op, err)
	}
	if h.g != nil {
		s.mu.Lock()
		*list = append(*list, h)
		s.mu.Unlock()
	}
	if a != nil {
		t := &s.named
		if h.g != nil {
			t = &s.slots[h.slot].t
		}
		s.l.obs.acquired(a, t, false, h.g, err)
	}
	return h, a, err
}

// take takes m's lock, a slot's or the watcher's, without telling the
// observers: they hear of a semaphore's call as a whole (see acquire).
func (s *Semaphore) take(ctx context.Context, m *Mutex, try bool, onLost func(error)) (*session.Grant, error) {
	g, err := s.l.sessions.Acquire(ctx, &m.t, session.Request{Try: try, OnLost: onLost})
	if err != nil {
		op := "lock"
		if try {
			op = "trylock"
		}
		return nil, m.fail(op, err)
	}
	return g, nil
}

// drop releases g, a grant of m that no caller gets (the watcher's lock, a
// second slot), of which no observer heard.
func (s *Semaphore) drop(ctx context.Context, g *session.Grant) {
	_ = g.Release(context.WithoutCancel(ctx)) // a failed release ends the session, which lets go
	if s.l.obs != nil {
		s.l.obs.forget(g)
	}
}

// tryAll tries every slot once, starting at the slot last released here
// (likely free), skipping the slots s holds itself.
func (s *Semaphore) tryAll(ctx context.Context, onLost func(error)) (semGrant, error) {
	start := int(s.hint.Load())
	for j := range s.n {
		i := (start + j) % s.n
		s.mu.Lock()
		mine := s.own[i] > 0
		s.mu.Unlock()
		if mine {
			continue
		}
		g, err := s.take(ctx, s.slots[i], true, onLost)
		if err != nil {
			return semGrant{}, err
		}
		if g != nil {
			return s.took(i, g), nil
		}
	}
	return semGrant{}, nil
}

// took records that s holds slot i with grant g.
func (s *Semaphore) took(i int, g *session.Grant) semGrant {
	s.mu.Lock()
	s.own[i]++
	s.mu.Unlock()
	return semGrant{slot: i, g: g}
}

// wait queues behind this process's waiters, then waits for a slot (see
// above).
func (s *Semaphore) wait(ctx context.Context, onLost func(error)) (semGrant, error) {
	kicked, err := s.q.enter(ctx)
	if err != nil {
		return semGrant{}, err
	}
	defer s.q.leave()
	// A slot may have been freed while this caller queued.
	if h, err := s.tryAll(ctx, onLost); h.g != nil || err != nil {
		return h, err
	}
	w := semWaiter{s: s, ctx: ctx, kicked: kicked, onLost: onLost}
	defer w.unwatch()
	if err := w.tryWatch(); err != nil {
		return semGrant{}, err
	}
	first := rand.IntN(s.n)
	turn := semRequeue
	for r := 0; ; r++ {
		h, err := w.waitFor((first+r)%s.n, turn)
		turn = min(2*turn, semRequeueMax)
		if h.g != nil || err != nil {
			return h, err
		}
	}
}

// A semWaiter is the first waiter of a process, waiting for a slot.
type semWaiter struct {
	s      *Semaphore
	ctx    context.Context
	kicked <-chan struct{}
	onLost func(error)
	watch  *session.Grant // name#watch, while this waiter watches
}

// unwatch lets go of name#watch.
func (w *semWaiter) unwatch() {
	if w.watch != nil {
		w.s.drop(w.ctx, w.watch)
		w.watch = nil
	}
}

// tryWatch takes name#watch if no one holds it.
func (w *semWaiter) tryWatch() error {
	g, err := w.s.take(w.ctx, w.s.watch, true, nil)
	w.watch = g
	return err
}

// An ended wait in the server for one slot.
type semWait struct {
	g   *session.Grant
	err error
}

// waitFor waits in the server for slot i, and tries the others as step 3
// says, for turn at most; it returns no grant and no error when the time
// is up.
func (w *semWaiter) waitFor(i int, turn time.Duration) (semGrant, error) {
	s, ctx := w.s, w.ctx
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	ended := make(chan semWait, 1)
	go func() {
		g, err := s.take(wctx, s.slots[i], false, w.onLost)
		ended <- semWait{g, err}
	}()
	// stopWait ends the wait and returns its grant, if it got one anyway.
	stopWait := func() *session.Grant {
		stop()
		return (<-ended).g
	}
	requeue := time.NewTimer(turn)
	defer requeue.Stop()
	tick := time.NewTicker(semWatch)
	if w.watch != nil {
		tick.Reset(semPoll)
	}
	defer tick.Stop()
	for {
		select {
		case e := <-ended:
			switch {
			case e.g != nil:
				return s.took(i, e.g), nil
			case ctx.Err() != nil:
				return semGrant{}, ctx.Err()
			}
			return semGrant{}, unwrapOwn(e.err)
		case <-ctx.Done():
			if g := stopWait(); g != nil {
				return s.took(i, g), nil
			}
			return semGrant{}, ctx.Err()
		case <-requeue.C:
			if g := stopWait(); g != nil {
				return s.took(i, g), nil
			}
			return semGrant{}, nil
		case <-w.kicked:
		case <-tick.C:
			if w.watch == nil {
				if err := w.tryWatch(); err != nil {
					stopAndDrop(s, i, stopWait, ctx)
					return semGrant{}, err
				}
				if w.watch == nil {
					continue
				}
				tick.Reset(semPoll)
			}
		}
		// Slot i too: the wait for it may not have reached the server
		// yet (a pooler out of server connections queues it).
		h, err := s.tryAll(ctx, w.onLost)
		if h.g == nil && err == nil {
			continue
		}
		// Another slot, or an error: the wait for slot i ends, and a grant
		// it got meanwhile is let go (this caller needs one slot).
		if g := stopWait(); g != nil {
			if h.g == nil {
				return s.took(i, g), nil
			}
			s.drop(ctx, g)
		}
		return h, err
	}
}

// stopAndDrop ends the wait for slot i and lets go of a grant it got
// meanwhile.
func stopAndDrop(s *Semaphore, i int, stopWait func() *session.Grant, ctx context.Context) {
	if g := stopWait(); g != nil {
		s.drop(ctx, g)
	}
}

// A semQueue is the in-process queue of a Semaphore's waiters, first come,
// first served: the first of them does the waiting on the server.
type semQueue struct {
	mu      sync.Mutex
	waiters []chan struct{} // closed when its waiter comes first
	kicks   chan struct{}   // tells the first waiter that a slot was released here
}

// busy reports whether callers wait.
func (q *semQueue) busy() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters) > 0
}

// enter queues the caller and returns once it comes first, with the
// channel that kick signals, or ctx's error if ctx ends first.
func (q *semQueue) enter(ctx context.Context) (<-chan struct{}, error) {
	me := make(chan struct{})
	q.mu.Lock()
	if q.kicks == nil {
		q.kicks = make(chan struct{}, 1)
	}
	q.waiters = append(q.waiters, me)
	if len(q.waiters) == 1 {
		close(me)
	}
	kicks := q.kicks
	q.mu.Unlock()
	select {
	case <-me:
		return kicks, nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, w := range q.waiters {
		if w == me {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			if i == 0 && len(q.waiters) > 0 { // it came first meanwhile: pass it on
				close(q.waiters[0])
			}
			break
		}
	}
	return nil, ctx.Err()
}

// leave takes the first waiter off the queue and lets the next one in.
func (q *semQueue) leave() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiters = q.waiters[1:]
	if len(q.waiters) > 0 {
		close(q.waiters[0])
	}
}

// kick tells the first waiter, if any, that a slot was released here.
func (q *semQueue) kick() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.kicks != nil && len(q.waiters) > 0 {
		select {
		case q.kicks <- struct{}{}:
		default:
		}
	}
}

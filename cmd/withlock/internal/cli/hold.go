package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// A hold is what withlock takes, and holds while the command runs: the
// lock, exclusive or shared, or with --slots one slot of the semaphore.
// Its run-with forms are sqllock's, which behave alike: the command's
// context ends with a cause wrapping ErrLockLost when the hold is lost,
// and their error wraps ErrNotAcquired or ErrLockLost the same way.
type hold struct {
	o   *runOptions
	mu  *sqllock.Mutex     // without --slots
	sem *sqllock.Semaphore // with --slots
}

func newHold(l *sqllock.Locker, o *runOptions) *hold {
	if o.slots > 0 {
		return &hold{o: o, sem: l.Semaphore(o.lockName, o.slots)}
	}
	return &hold{o: o, mu: l.Mutex(o.lockName)}
}

// with runs fn while holding, after waiting as long as ctx lets it.
func (h *hold) with(ctx context.Context, fn func(context.Context) error) error {
	switch {
	case h.sem != nil:
		return h.sem.WithSlot(ctx, fn)
	case h.o.shared:
		return h.mu.WithLockShared(ctx, fn)
	}
	return h.mu.WithLock(ctx, fn)
}

// try runs fn while holding, if it can be had at once; ok is false, and
// fn does not run, if it cannot.
func (h *hold) try(ctx context.Context, fn func(context.Context) error) (ok bool, err error) {
	switch {
	case h.sem != nil:
		return h.sem.TryWithSlot(ctx, fn)
	case h.o.shared:
		return h.mu.TryWithLockShared(ctx, fn)
	}
	return h.mu.TryWithLock(ctx, fn)
}

// noun is what is held, in one word.
func (h *hold) noun() string {
	if h.sem != nil {
		return "slot"
	}
	return "lock"
}

// mode is the lock's mode, for messages.
func (h *hold) mode() string {
	return modeName(h.o.shared)
}

// held names what is held, in messages: lock "x", or slot 2 of semaphore
// "x". Inside fn only: a semaphore knows its slot while it holds it.
func (h *hold) held() string {
	if h.sem == nil {
		return fmt.Sprintf("lock %q", h.o.lockName)
	}
	if slot, ok := h.sem.Slot(); ok {
		return fmt.Sprintf("slot %d of semaphore %q", slot, h.o.lockName)
	}
	return fmt.Sprintf("a slot of semaphore %q", h.o.lockName)
}

// acquired is what -v says once it is held, inside fn.
func (h *hold) acquired() string {
	if h.sem == nil {
		return fmt.Sprintf("acquired lock %q (%s)", h.o.lockName, h.mode())
	}
	slot, _ := h.sem.Slot()
	return fmt.Sprintf("acquired slot %d of %d of semaphore %q", slot, h.o.slots, h.o.lockName)
}

// waiting is what -v says while it waits.
func (h *hold) waiting() string {
	if h.sem == nil {
		return fmt.Sprintf("waiting for lock %q (%s)", h.o.lockName, h.mode())
	}
	return fmt.Sprintf("waiting for a slot of semaphore %q: its %s taken", h.o.lockName, plural(h.o.slots, "slot")+areIs(h.o.slots))
}

// taken is what -v says when --try finds it taken.
func (h *hold) taken() string {
	if h.sem == nil {
		return fmt.Sprintf("lock %q is taken", h.o.lockName)
	}
	return fmt.Sprintf("semaphore %q is full: its %s taken", h.o.lockName, plural(h.o.slots, "slot")+areIs(h.o.slots))
}

func areIs(n int) string {
	if n == 1 {
		return " is"
	}
	return " are"
}

// describeKeys says which keys withlock takes, and in which keyspace.
func (o *runOptions) describeKeys() string {
	if o.slots == 0 {
		key, _ := o.scheme.key(o.lockName)
		return fmt.Sprintf("lock %q is key %v (keyspace %s)", o.lockName, key, o.scheme.name)
	}
	var ks []string
	for i, k := range o.semKeys.slots {
		if i == 3 && len(o.semKeys.slots) > 4 {
			ks = append(ks, "...", o.semKeys.slots[len(o.semKeys.slots)-1].String())
			break
		}
		ks = append(ks, k.String())
	}
	first, last := sqllock.SlotName(o.lockName, 0), sqllock.SlotName(o.lockName, o.slots-1)
	locks := fmt.Sprintf("lock %q", first)
	if o.slots > 1 {
		locks = fmt.Sprintf("locks %q to %q", first, last)
	}
	return fmt.Sprintf("semaphore %q has %s, %s, keys %s, and a watch lock %q, key %v (keyspace %s)",
		o.lockName, plural(o.slots, "slot"), locks, strings.Join(ks, ", "), o.lockName+"#watch", o.semKeys.watch, o.scheme.name)
}

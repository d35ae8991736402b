package sqllock

import (
	"context"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
)

// A SlotHolder is a session that holds or waits for one of a semaphore's
// locks: a slot (Slot from 0), or the lock "<name>#watch" (Slot -1), held
// by the waiter that tries the slots no one waits for. Waiters that wait
// in their process's memory do not show.
type SlotHolder struct {
	Slot int
	Holder
}

// Holders lists the sessions that hold the semaphore's slots, slot by
// slot, then those that wait for a slot, then its watcher (see
// [SlotHolder] and [Mutex.Holders]). It reads pg_locks once per slot and
// once for the watcher; ctx bounds the reads.
func (s *Semaphore) Holders(ctx context.Context) ([]SlotHolder, error) {
	const op = "holders"
	switch {
	case ctx == nil:
		return nil, s.fail(op, ErrNilContext)
	case s.err != nil:
		return nil, s.fail(op, s.err)
	}
	var held, waiting, watch []SlotHolder
	for i, m := range append(s.slots, s.watch) {
		hs, err := holders(ctx, s.l.db, m.t.Key)
		if err != nil {
			return nil, s.fail(op, errs.WithCtxErr(ctx, err))
		}
		for _, h := range hs {
			switch sh := (SlotHolder{Slot: i, Holder: h}); {
			case i == s.n:
				sh.Slot = -1
				watch = append(watch, sh)
			case h.Granted:
				held = append(held, sh)
			default:
				waiting = append(waiting, sh)
			}
		}
	}
	return append(append(held, waiting...), watch...), nil
}

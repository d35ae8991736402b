package conntest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// semSlots is the size of the Semaphore check's semaphore.
const semSlots = 2

// semWaitConns is how many connections of the pool the Semaphore check
// holds at once while a third caller waits: one per slot, two for the
// waiter (one waits in the server for a slot, one holds the watch lock
// and tries the others), and one to read pg_locks.
const semWaitConns = semSlots + 3

// semaphore returns a new Semaphore with n slots for the check's name,
// from a Locker of its own with the suite's options, and releases what it
// still holds when the check ends. It returns nil if the options' keyspace
// cannot name the slots, with the reason.
func (e *env) semaphore(n int) (*sqllock.Semaphore, error) {
	e.t.Helper()
	s := sqllock.New(e.db, slices.Clip(e.opts)...).Semaphore(e.name, n)
	if err := s.Err(); !errors.Is(err, sqllock.ErrNotHeld) {
		return nil, err
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		for range maxHolds {
			err := call(ctx, s.Release)
			if errors.Is(err, errHung) {
				e.t.Errorf("cleanup: releasing a slot of %q hung %v past %v: the driver or a pooler ignores cancellation",
					e.name, hangGrace, cleanupTimeout)
				return
			}
			if errors.Is(err, sqllock.ErrNotHeld) {
				return
			}
		}
	})
	return s, nil
}

// semKeys returns the keys of the check's semaphore's n slots and of its
// watch lock, as the suite's keyspace names them, and records them for
// NoLeak.
func (e *env) semKeys(n int) (slots []keyspace.Key, watch keyspace.Key) {
	l := sqllock.New(e.db, slices.Clip(e.opts)...)
	watch = l.Mutex(e.name + "#watch").Key()
	for i := range n {
		slots = append(slots, l.Mutex(sqllock.SlotName(e.name, i)).Key())
	}
	e.run.mu.Lock()
	defer e.run.mu.Unlock()
	for i, k := range slots {
		e.run.keys[k] = sqllock.SlotName(e.name, i)
	}
	e.run.keys[watch] = e.name + "#watch"
	return slots, watch
}

// slotHolders returns, for each slot key, the sessions that hold it.
func (e *env) slotHolders(slots []keyspace.Key) [][]lockRow {
	e.t.Helper()
	out := make([][]lockRow, len(slots))
	for i, k := range slots {
		out[i] = granted(e.locks(k))
	}
	return out
}

// checkOneSlotEach fails the check unless pg_locks shows want slots held,
// each by one session exclusively, each session holding one.
func (e *env) checkOneSlotEach(slots []keyspace.Key, want int, when string) {
	e.t.Helper()
	held := e.slotHolders(slots)
	pids := map[int64]int{}
	total := 0
	for _, rows := range held {
		for _, r := range rows {
			pids[r.pid]++
			total++
		}
	}
	for i, rows := range held {
		if len(rows) > 1 || len(rows) == 1 && rows[0].shared {
			e.t.Fatalf("pg_locks for slot %d (%v) %s: got %v, want at most one session holding it exclusively: a slot did not exclude a second holder; %s; %s",
				i, slots[i], when, rows, pooler, stubLocks)
		}
	}
	for pid, n := range pids {
		if n > 1 {
			e.t.Fatalf("pg_locks %s: backend %d holds %d slots (%v), want each grant to hold exactly one", when, pid, n, held)
		}
	}
	if total != want {
		e.t.Fatalf("pg_locks %s: got %d slots held (%v), want %d: a grant that holds no slot in the server is no grant at all; %s; %s",
			when, total, held, want, pooler, stubLocks)
	}
}

// goAcquire starts s.Acquire in a goroutine (see goLock).
func (e *env) goAcquire(s *sqllock.Semaphore) *pending {
	return e.goWait("Acquire", s.Acquire)
}

func semaphoreSlots(t *testing.T, e *env) {
	a, err := e.semaphore(semSlots)
	if err != nil {
		t.Skipf("the options given to Run cannot make a semaphore: %v", err)
	}
	b, _ := e.semaphore(semSlots)
	c, _ := e.semaphore(semSlots)
	slots, watch := e.semKeys(semSlots)

	e.must("Acquire of an idle semaphore", a.Acquire)
	if err := e.doWithin(promptTimeout, "Acquire", b.Acquire); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Acquire from another Locker with one of %d slots free: still waiting after %v, want a slot at once: the first holder took more than one slot, or its slot excluded the others (%v)",
				semSlots, promptTimeout, err)
		}
		t.Fatalf("Acquire from another Locker with one of %d slots free: %v", semSlots, err)
	}
	sa, _ := a.Slot()
	sb, _ := b.Slot()
	if sa == sb {
		t.Fatalf("two holders of a %d-slot semaphore both hold slot %d, want different slots: the slot did not exclude a second holder; %s; %s", semSlots, sa, pooler, stubLocks)
	}
	e.checkOneSlotEach(slots, 2, "while two holders hold both slots")
	if e.try("TryAcquire", c.TryAcquire) {
		t.Fatalf("TryAcquire from a third Locker while both slots of a %d-slot semaphore are held = true, want false: the slots did not exclude a third holder; %s; %s",
			semSlots, pooler, stubLocks)
	}

	st := e.db.Stats()
	if free := st.MaxOpenConnections - e.baseline; st.MaxOpenConnections > 0 && free < semWaitConns {
		// Too few connections for a waiter: a freed slot goes to the next try.
		t.Logf("the pool allows %d connections beyond those in use (SetMaxOpenConns), and a wait for a slot with both held needs %d (a holder's each, the waiter's two, one to read pg_locks): checking that a freed slot goes to the next TryAcquire instead",
			free, semWaitConns)
		e.must("Release of a held slot", a.Release)
		if !e.try("TryAcquire", c.TryAcquire) {
			t.Fatalf("TryAcquire after a holder released its slot = false, want true: Release did not free the slot; %s", pooler)
		}
	} else {
		p := e.goAcquire(c)
		e.awaitSemWaiter(slots, watch, p)
		e.must("Release of a held slot", a.Release)
		timer := time.NewTimer(promptTimeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			t.Fatalf("Acquire kept waiting %v after a holder released its slot, want the slot: the release did not reach the session that held it, "+
				"or the waiter could not get the connections it needs (a waiter pins two besides the holders': is a pooler's server pool, such as PgBouncer's default_pool_size, smaller than %d?); %s",
				promptTimeout, semWaitConns, pooler)
		}
		if p.err != nil {
			t.Fatalf("Acquire that waited while both slots were held, after one was released: %v, want nil", p.err)
		}
		// The waiter lets go of the watch lock once it has a slot.
		if rows, ok := e.waitFree(watch); !ok {
			t.Errorf("pg_locks for the watch lock %v %v after the waiter got a slot: got %v, want no session holding or waiting", watch, settleTimeout, rows)
		}
	}
	if sc, _ := c.Slot(); sc != sa {
		t.Errorf("the third holder got slot %d, want %d, the one released (slot %d is still held)", sc, sa, sb)
	}
	e.checkOneSlotEach(slots, 2, "after the third holder took the released slot")

	for _, s := range []*sqllock.Semaphore{b, c} {
		slot, _ := s.Slot()
		e.must("Release of a held slot", s.Release)
		if rows := e.locks(slots[slot]); len(rows) != 0 {
			t.Fatalf("pg_locks for slot %d (%v) right after Release returned: got %v, want no session holding or waiting: the release ran in a session that did not hold the slot, which stays held; %s",
				slot, slots[slot], rows, pooler)
		}
	}
	// A wait for one slot that the waiter ended once another slot came
	// free may have been opening a shared session (WithSessions): a dial
	// that lib/pq cannot cut short goes on in the background and gives its
	// connection back when it completes. Give it the time a discarded
	// session gets; a connection kept for good still fails the check.
	e.settleInUse(e.baseline, "after every slot was released")
}

// awaitSemWaiter polls pg_locks until the Acquire p waits: its session
// holds the watch lock or waits for a slot. It fails the check if p
// returns first: it got a slot while both were held, or failed.
func (e *env) awaitSemWaiter(slots []keyspace.Key, watch keyspace.Key, p *pending) {
	e.t.Helper()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if len(granted(e.locks(watch))) > 0 {
			return
		}
		for _, k := range slots {
			if rows := e.locks(k); len(rows) > len(granted(rows)) {
				return
			}
		}
		select {
		case <-p.done:
			if p.err != nil {
				e.t.Fatalf("Acquire while both slots are held: %v, want it to wait", p.err)
			}
			e.t.Fatalf("Acquire returned nil while both slots were held, want it to wait: the slots did not exclude a third holder; %s; %s", pooler, stubLocks)
		case <-e.ctx.Done():
			e.t.Fatalf("no session waits for a slot or holds the watch lock in pg_locks while Acquire runs with both slots held (%v)", context.Cause(e.ctx))
		case <-tick.C:
		}
	}
}

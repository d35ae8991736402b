package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slotKeys returns the keys of a semaphore's slots and of its queue, as
// the default keyspace names them.
func slotKeys(name string, n int) (slots []keyspace.Key, watch keyspace.Key) {
	s := keyspace.Default
	for i := range n {
		slots = append(slots, s.Key(sqllock.SlotName(name, i)))
	}
	return slots, s.Key(name + "#watch")
}

// requireNoSlots fails unless pg_locks shows nothing on the semaphore's
// slots and watcher.
func requireNoSlots(t *testing.T, db *sql.DB, name string, n int) {
	t.Helper()
	slots, watch := slotKeys(name, n)
	for _, k := range append(slots, watch) {
		waitRows(t, db, k, 0, 0)
	}
}

// Each grant holds exactly one slot, a different one, and each release
// frees its own: pg_locks shows it.
func TestSemaphoreOneSlotPerGrant(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		sem := sqllock.New(db).Semaphore(name, 3)
		slots, _ := slotKeys(name, 3)
		ctx := t.Context()
		var held []int
		for i := range 3 {
			require.NoError(t, sem.Acquire(ctx))
			total := 0
			for _, k := range slots {
				h, w := lockRows(t, db, k)
				assert.LessOrEqual(t, h, 1)
				assert.Zero(t, w)
				total += h
			}
			require.Equal(t, i+1, total, "after %d grants", i+1)
		}
		for i := range 3 {
			slot, ok := sem.Slot()
			require.True(t, ok)
			held = append(held, slot)
			require.NoError(t, sem.Release(ctx))
			h, _ := lockRows(t, db, slots[slot])
			require.Zero(t, h, "slot %d still held after its release", slot)
			_ = i
		}
		assert.ElementsMatch(t, []int{0, 1, 2}, held)
		require.ErrorIs(t, sem.Release(ctx), sqllock.ErrNotHeld)
		requireNoSlots(t, db, name, 3)
	})
}

// A full semaphore refuses TryAcquire, makes Acquire wait until a slot is
// released, and a waiter's cancelled context leaves nothing behind.
func TestSemaphoreFullWaitsAndCancels(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		holder := sqllock.New(db).Semaphore(name, 2)
		require.NoError(t, holder.Acquire(ctx))
		ok, err := holder.TryAcquire(ctx)
		require.NoError(t, err)
		require.True(t, ok)

		other := sqllock.New(db).Semaphore(name, 2)
		ok, err = other.TryAcquire(ctx)
		require.NoError(t, err)
		require.False(t, ok, "a third holder of a 2-slot semaphore")

		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		err = other.Acquire(short)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		var se *sqllock.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, name, se.Name)

		got := make(chan error, 1)
		go func() { got <- other.Acquire(ctx) }()
		_, watch := slotKeys(name, 2)
		waitRows(t, db, watch, 1, 0) // the waiter watches
		select {
		case err := <-got:
			t.Fatalf("Acquire returned %v while both slots were held", err)
		default:
		}
		released := time.Now()
		require.NoError(t, holder.Release(ctx))
		require.NoError(t, <-got)
		t.Logf("a released slot taken by a waiter of another Semaphore after %v", time.Since(released))
		require.NoError(t, holder.Release(ctx))
		require.NoError(t, other.Release(ctx))
		requireNoSlots(t, db, name, 2)
	})
}

// At most n hold at once, with four Lockers (as four processes) and waiters
// under short deadlines, and n is reached; nothing is left afterwards.
func TestSemaphoreAtMostN(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		const n = 3
		var sems []*sqllock.Semaphore
		for range 4 {
			sems = append(sems, sqllock.New(db).Semaphore(name, n))
		}
		var holding, most atomic.Int32
		var grants, timeouts atomic.Int32
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem := sems[w%4]
				for i := range 12 {
					ctx := t.Context()
					var cancel context.CancelFunc = func() {}
					if (w+i)%3 == 0 {
						ctx, cancel = context.WithTimeout(ctx, time.Duration(1+i%5)*time.Millisecond*4)
					}
					err := sem.WithSlot(ctx, func(context.Context) error {
						now := holding.Add(1)
						for {
							m := most.Load()
							if now <= m || most.CompareAndSwap(m, now) {
								break
							}
						}
						time.Sleep(10 * time.Millisecond)
						holding.Add(-1)
						return nil
					})
					cancel()
					switch {
					case err == nil:
						grants.Add(1)
					case errors.Is(err, context.DeadlineExceeded):
						timeouts.Add(1)
					default:
						t.Errorf("WithSlot: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("%d grants, %d deadlines, at most %d at once", grants.Load(), timeouts.Load(), most.Load())
		assert.LessOrEqual(t, most.Load(), int32(n))
		assert.Equal(t, int32(n), most.Load(), "n never reached")
		requireNoSlots(t, db, name, n)
	})
}

// Waiters of one Semaphore are served in the order they came.
func TestSemaphoreFirstComeFirstServed(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		sem := sqllock.New(db).Semaphore(name, 1)
		require.NoError(t, sem.Acquire(ctx))
		order := make(chan int, 4)
		for i := range 4 {
			go func() {
				if err := sem.WithSlot(ctx, func(context.Context) error { order <- i; return nil }); err != nil {
					t.Errorf("waiter %d: %v", i, err)
				}
			}()
			// The next waiter comes once this one queues.
			for sqllock.SemaphoreWaiting(sem) != i+1 {
				time.Sleep(time.Millisecond)
			}
		}
		// A TryAcquire does not go ahead of them.
		ok, err := sem.TryAcquire(ctx)
		require.NoError(t, err)
		require.False(t, ok)
		require.NoError(t, sem.Release(ctx))
		for i := range 4 {
			require.Equal(t, i, <-order)
		}
		requireNoSlots(t, db, name, 1)
	})
}

// A slot whose session ends is lost and says so: Done, Err, and
// WithSlot's context and error.
func TestSemaphoreLoss(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		sem := sqllock.New(db, fastLoss).Semaphore(name, 2)
		slots, _ := slotKeys(name, 2)
		require.NoError(t, sem.Acquire(ctx))
		slot, _ := sem.Slot()
		terminate(t, db, backendOf(t, db, slots[slot]))
		<-sem.Done()
		require.ErrorIs(t, sem.Err(), sqllock.ErrLockLost)
		require.ErrorIs(t, sem.Release(ctx), sqllock.ErrLockLost)

		err := sem.WithSlot(ctx, func(ctx context.Context) error {
			slot, _ := sem.Slot()
			terminate(t, db, backendOf(t, db, slots[slot]))
			<-ctx.Done()
			require.ErrorIs(t, context.Cause(ctx), sqllock.ErrLockLost)
			return nil
		})
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		requireNoSlots(t, db, name, 2)
	})
}

// With WithFencing every grant carries a token, larger than the ones
// before it, and WithSlot's function reads it from its context.
func TestSemaphoreFencing(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ctx := t.Context()
		sem := sqllock.New(db, sqllock.WithFencing()).Semaphore(t.Name(), 2)
		require.NoError(t, sem.Acquire(ctx))
		first, ok := sem.Token()
		require.True(t, ok)
		require.NoError(t, sem.WithSlot(ctx, func(ctx context.Context) error {
			second, ok := sqllock.Token(ctx)
			require.True(t, ok)
			require.Greater(t, second, first)
			return nil
		}))
		require.NoError(t, sem.Release(ctx))
		_, ok = sem.Token()
		require.False(t, ok)
	})
}

// Holders shows who holds which slot and who waits.
func TestSemaphoreHolders(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		sem := sqllock.New(db).Semaphore(name, 2)
		require.NoError(t, sem.Acquire(ctx))
		require.NoError(t, sem.Acquire(ctx))
		waiter := sqllock.New(db).Semaphore(name, 2)
		got := make(chan error, 1)
		go func() { got <- waiter.WithSlot(ctx, func(context.Context) error { return nil }) }()
		slots, watch := slotKeys(name, 2)
		waitRows(t, db, watch, 1, 0)
		waiting := 0
		for _, k := range slots {
			_, w := lockRows(t, db, k)
			waiting += w
		}
		for waiting != 1 {
			time.Sleep(time.Millisecond)
			waiting = 0
			for _, k := range slots {
				_, w := lockRows(t, db, k)
				waiting += w
			}
		}
		hs, err := sem.Holders(ctx)
		require.NoError(t, err)
		var holders, waiters, first int
		seen := map[int]bool{}
		for _, h := range hs {
			switch {
			case h.Slot == -1:
				first++
				assert.True(t, h.Granted)
			case h.Granted:
				holders++
				seen[h.Slot] = true
			default:
				waiters++
			}
			assert.NotZero(t, h.PID)
		}
		assert.Equal(t, 2, holders, "%+v", hs)
		assert.Equal(t, map[int]bool{0: true, 1: true}, seen)
		assert.Equal(t, 1, waiters, "%+v", hs)
		assert.Equal(t, 1, first, "%+v", hs)
		require.NoError(t, sem.Release(ctx))
		require.NoError(t, <-got)
		require.NoError(t, sem.Release(ctx))
		requireNoSlots(t, db, name, 2)
	})
}

// Bad input gets an error naming the problem and the semaphore, never a
// panic or a hang.
func TestSemaphoreBadInput(t *testing.T) {
	db := setups[0].open(t)
	l := sqllock.New(db)
	for _, n := range []int{0, -1, 1 << 20} {
		err := l.Semaphore("jobs", n).Acquire(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"jobs"`)
		assert.Contains(t, err.Error(), fmt.Sprint(n))
	}
	explicit, err := keyspace.Lookup("int64")
	require.NoError(t, err)
	err = sqllock.New(db, sqllock.WithKeyspace(explicit)).Semaphore("42", 2).Acquire(t.Context())
	require.Error(t, err)
	t.Log(err)
	goose, err := keyspace.Lookup("goose")
	require.NoError(t, err)
	err = sqllock.New(db, sqllock.WithKeyspace(goose)).Semaphore("jobs", 2).Acquire(t.Context())
	require.ErrorContains(t, err, "same key")
	t.Log(err)

	sem := l.Semaphore("jobs", 2)
	//lint:ignore SA1012 the nil context is the point
	require.ErrorIs(t, sem.Acquire(nil), sqllock.ErrNilContext) //nolint:staticcheck
	require.ErrorIs(t, sem.WithSlot(t.Context(), nil), sqllock.ErrNilFunc)
	require.ErrorIs(t, sem.Release(t.Context()), sqllock.ErrNotHeld)
	require.ErrorIs(t, sem.Err(), sqllock.ErrNotHeld)
	require.ErrorContains(t, sem.WithSlot(t.Context(), func(context.Context) error { return nil }, sqllock.MaxWait(-1)), "MaxWait")
}

// Observers hear of each call as one attempt, named after the semaphore:
// a wait that polls and watches adds no events of its own, and nothing
// stays tracked once every slot is released.
func TestSemaphoreObserved(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		rec := &recorder{}
		l := sqllock.New(db, sqllock.WithObserver(rec))
		holder, waiter := l.Semaphore(name, 2), l.Semaphore(name, 2)
		require.NoError(t, holder.Acquire(ctx))
		require.NoError(t, holder.Acquire(ctx))
		ok, err := waiter.TryAcquire(ctx)
		require.NoError(t, err)
		require.False(t, ok)
		got := make(chan error, 1)
		go func() { got <- waiter.Acquire(ctx) }()
		_, watch := slotKeys(name, 2)
		waitRows(t, db, watch, 1, 0)
		time.Sleep(100 * time.Millisecond) // a few polls of the watcher
		require.NoError(t, holder.Release(ctx))
		require.NoError(t, <-got)
		require.NoError(t, holder.Release(ctx))
		require.NoError(t, waiter.Release(ctx))

		// The holder's release event follows its unlock's answer, and the
		// waiter may be granted the slot, and heard of, before that answer
		// arrives: those two come in either order.
		kinds := rec.kinds()
		require.Len(t, kinds, 7)
		assert.Equal(t, []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventAcquired, sqllock.EventContended}, kinds[:3])
		assert.ElementsMatch(t, []sqllock.EventKind{sqllock.EventReleased, sqllock.EventAcquired}, kinds[3:5])
		assert.Equal(t, []sqllock.EventKind{sqllock.EventReleased, sqllock.EventReleased}, kinds[5:])
		slots, _ := slotKeys(name, 2)
		rec.mu.Lock()
		var waited time.Duration
		for i, e := range rec.events {
			assert.Equal(t, name, e.Name)
			if e.Kind != sqllock.EventContended {
				assert.Contains(t, slots, e.Key)
			}
			if i >= 3 && e.Kind == sqllock.EventAcquired {
				waited = e.Wait
			}
		}
		rec.mu.Unlock()
		assert.Greater(t, waited, 100*time.Millisecond, "the acquired event's wait counts from the call")
		assert.Zero(t, sqllock.ObservedGrants(l))
	})
}

// keySQL is the argument list of an advisory-lock function for k, as a
// program in another language writes it.
func keySQL(k keyspace.Key) string {
	if a, b, ok := k.Pair(); ok {
		return fmt.Sprintf("(%d, %d)", a, b)
	}
	n, _ := k.Int64()
	return fmt.Sprintf("(%d)", n)
}

// A program in another language joins a semaphore by taking its slots'
// keys with plain SQL: the semaphore counts it.
func TestSemaphoreForeignHolder(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		slots, _ := slotKeys(name, 2)
		foreign := make([]*sql.Conn, 2)
		for i, k := range slots {
			c, err := db.Conn(ctx)
			require.NoError(t, err)
			defer c.Close()
			var ok bool
			require.NoError(t, c.QueryRowContext(ctx, "SELECT pg_try_advisory_lock"+keySQL(k)).Scan(&ok))
			require.True(t, ok)
			foreign[i] = c
		}
		sem := sqllock.New(db).Semaphore(name, 2)
		ok, err := sem.TryAcquire(ctx)
		require.NoError(t, err)
		require.False(t, ok, "both slots are held by plain SQL")
		got := make(chan error, 1)
		go func() { got <- sem.Acquire(ctx) }()
		_, err = foreign[1].ExecContext(ctx, "SELECT pg_advisory_unlock"+keySQL(slots[1]))
		require.NoError(t, err)
		require.NoError(t, <-got)
		slot, _ := sem.Slot()
		assert.Equal(t, 1, slot)
		require.NoError(t, sem.Release(ctx))
		_, err = foreign[0].ExecContext(ctx, "SELECT pg_advisory_unlock"+keySQL(slots[0]))
		require.NoError(t, err)
		requireNoSlots(t, db, name, 2)
	})
}

// Processes that disagree on n share the slots they have in common: the
// holders never number more than the largest n, and the smaller n is
// never exceeded by its own users.
func TestSemaphoreDisagreeingN(t *testing.T) {
	db := setups[1].open(t)
	name := t.Name()
	ctx := t.Context()
	two, three := sqllock.New(db).Semaphore(name, 2), sqllock.New(db).Semaphore(name, 3)
	require.NoError(t, three.Acquire(ctx))
	require.NoError(t, three.Acquire(ctx))
	ok, err := two.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok, "slots 0 and 1 are taken: n=2 has no more")
	ok, err = three.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok, "n=3 has slot 2")
	for range 3 {
		require.NoError(t, three.Release(ctx))
	}
	require.NoError(t, two.Acquire(ctx))
	require.NoError(t, two.Acquire(ctx))
	ok, err = three.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok, "slot 2 is never n=2's")
	slot, _ := three.Slot()
	assert.Equal(t, 2, slot)
	require.NoError(t, three.Release(ctx))
	require.NoError(t, two.Release(ctx))
	require.NoError(t, two.Release(ctx))
	requireNoSlots(t, db, name, 3)
}

// A waiter whose slot's holder never lets go turns to another slot: with
// the watcher's role taken by someone else, only the turn gets it the slot
// that freed up.
func TestSemaphoreWaiterTurns(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		name := t.Name()
		ctx := t.Context()
		slots, watch := slotKeys(name, 2)
		foreign, err := db.Conn(ctx)
		require.NoError(t, err)
		defer foreign.Close()
		for _, k := range []keyspace.Key{watch, slots[0]} {
			_, err := foreign.ExecContext(ctx, "SELECT pg_advisory_lock"+keySQL(k))
			require.NoError(t, err)
		}
		holder := sqllock.New(db).Semaphore(name, 2)
		require.NoError(t, holder.Acquire(ctx))
		slot, _ := holder.Slot()
		require.Equal(t, 1, slot)

		waiter := sqllock.New(db).Semaphore(name, 2)
		got := make(chan error, 1)
		start := time.Now()
		go func() { got <- waiter.Acquire(ctx) }()
		for {
			_, w0 := lockRows(t, db, slots[0])
			_, w1 := lockRows(t, db, slots[1])
			if w0+w1 == 1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, holder.Release(ctx))
		select {
		case err := <-got:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("the waiter did not turn to the slot that freed up")
		}
		t.Logf("got slot 1 after %v", time.Since(start).Round(time.Millisecond))
		slot, _ = waiter.Slot()
		assert.Equal(t, 1, slot)
		require.NoError(t, waiter.Release(ctx))
		for _, k := range []keyspace.Key{watch, slots[0]} {
			_, err := foreign.ExecContext(ctx, "SELECT pg_advisory_unlock"+keySQL(k))
			require.NoError(t, err)
		}
		requireNoSlots(t, db, name, 2)
	})
}

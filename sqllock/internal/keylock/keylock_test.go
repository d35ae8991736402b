package keylock_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/keylock"
)

const k = "key"

func TestModes(t *testing.T) {
	var tb keylock.Table[string]
	if !tb.TryLock(k, false) {
		t.Fatal("TryLock of a free key = false")
	}
	if tb.TryLock(k, false) || tb.TryLock(k, true) {
		t.Fatal("an exclusive holder excludes exclusive and shared")
	}
	tb.Unlock(k, false)
	for i := range 2 {
		if !tb.TryLock(k, true) {
			t.Fatalf("TryLockShared %d = false, want shared holders to coexist", i+1)
		}
	}
	if tb.TryLock(k, false) {
		t.Fatal("shared holders exclude an exclusive one")
	}
	if n, excl := tb.Held(k); n != 2 || excl {
		t.Fatalf("Held = %d, %v; want 2 shared", n, excl)
	}
	tb.Unlock(k, true)
	tb.Unlock(k, true)
	if tb.Len() != 0 {
		t.Fatalf("Len = %d after every hold was released, want 0", tb.Len())
	}
}

// Waiters are served in arrival order: shared lockers arriving after an
// exclusive waiter wait behind it, and a TryLock does not jump the queue.
func TestFIFO(t *testing.T) {
	var tb keylock.Table[string]
	ctx := t.Context()
	tb.TryLock(k, true) // a shared holder
	order := make(chan string, 3)
	lock := func(name string, shared bool) {
		if err := tb.Lock(ctx, k, shared); err != nil {
			t.Error(err)
		}
		order <- name
	}
	go lock("exclusive", false)
	waitWaiters(t, &tb, 1)
	if tb.TryLock(k, true) {
		t.Fatal("TryLockShared jumped ahead of a waiting exclusive locker")
	}
	go lock("shared", true)
	time.Sleep(10 * time.Millisecond) // let it queue (nothing must happen)
	select {
	case name := <-order:
		t.Fatalf("%s granted while a shared holder holds and an exclusive waiter is first", name)
	default:
	}
	tb.Unlock(k, true)
	if got := <-order; got != "exclusive" {
		t.Fatalf("first granted: %s, want exclusive", got)
	}
	tb.Unlock(k, false)
	if got := <-order; got != "shared" {
		t.Fatalf("then: %s, want shared", got)
	}
	tb.Unlock(k, true)
}

// A waiter whose context ends leaves the queue holding nothing, and the
// waiters behind it that may hold now are granted.
func TestCancelledWaiterLetsOthersThrough(t *testing.T) {
	var tb keylock.Table[string]
	tb.TryLock(k, true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- tb.Lock(ctx, k, false) }()
	waitWaiters(t, &tb, 1)
	shared := make(chan error, 1)
	go func() { shared <- tb.Lock(t.Context(), k, true) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Lock whose context was cancelled = %v, want context.Canceled", err)
	}
	if err := <-shared; err != nil {
		t.Fatalf("the shared waiter behind it: %v", err)
	}
	if n, excl := tb.Held(k); n != 2 || excl {
		t.Fatalf("Held = %d, %v; want 2 shared", n, excl)
	}
	tb.Unlock(k, true)
	tb.Unlock(k, true)
	if tb.Len() != 0 {
		t.Fatal("the key is still in the table")
	}
}

func TestUnlockNotHeldPanics(t *testing.T) {
	var tb keylock.Table[string]
	defer func() {
		if recover() == nil {
			t.Fatal("Unlock of a free key did not panic")
		}
	}()
	tb.Unlock(k, false)
}

// TestStress: goroutines take a few keys in random modes, some with
// deadlines that end mid-wait; while one holds a key exclusively no one
// else holds it, and at the end the table is empty.
func TestStress(t *testing.T) {
	var tb keylock.Table[int]
	type state struct{ excl, shared atomic.Int32 }
	var states [3]state
	var wg sync.WaitGroup
	rounds := 2000
	if testing.Short() {
		rounds = 300
	}
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range rounds / 16 {
				key := r.IntN(len(states))
				shared := r.IntN(2) == 0
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(200))*time.Microsecond)
				var err error
				if r.IntN(4) == 0 {
					if !tb.TryLock(key, shared) {
						err = context.DeadlineExceeded
					}
				} else {
					err = tb.Lock(ctx, key, shared)
				}
				cancel()
				if err != nil {
					continue
				}
				s := &states[key]
				if shared {
					s.shared.Add(1)
					if s.excl.Load() != 0 {
						t.Error("a shared holder alongside an exclusive one")
					}
				} else {
					if s.excl.Add(1) != 1 || s.shared.Load() != 0 {
						t.Error("an exclusive holder alongside another holder")
					}
				}
				time.Sleep(time.Duration(r.IntN(50)) * time.Microsecond)
				if shared {
					s.shared.Add(-1)
				} else {
					s.excl.Add(-1)
				}
				tb.Unlock(key, shared)
			}
		})
	}
	wg.Wait()
	if n := tb.Len(); n != 0 {
		t.Fatalf("Len = %d at the end, want 0", n)
	}
}

// waitWaiters waits until k, held shared, has a waiter: a TryLockShared
// that is refused while shared holders hold means someone waits (one that
// succeeds is given back at once).
func waitWaiters(t *testing.T, tb *keylock.Table[string], _ int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if n, excl := tb.Held(k); n > 0 && !excl {
			if !tb.TryLock(k, true) {
				return
			}
			tb.Unlock(k, true)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no waiter queued")
}

// A key taken and released in a loop reuses its forgotten entry.
func TestReuseAllocatesNothing(t *testing.T) {
	var tb keylock.Table[string]
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if err := tb.Lock(ctx, k, false); err != nil {
			t.Fatal(err)
		}
		tb.Unlock(k, false)
	})
	if allocs != 0 {
		t.Errorf("Lock+Unlock allocates %v times, want 0", allocs)
	}
	if h, _ := tb.Held(k); h != 0 {
		t.Errorf("Held after Unlock = %d, want 0", h)
	}
}

package sqllock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// At most three report generators run at once, across every process.
func ExampleLocker_Semaphore() {
	db := openDB()
	defer db.Close()
	reports := sqllock.New(db).Semaphore("example/reports", 3)

	err := reports.WithSlot(context.Background(), func(ctx context.Context) error {
		fmt.Println("generating a report, with at most two others")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: generating a report, with at most two others
}

func ExampleSemaphore_WithSlot() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/withslot", 2)

	// Wait at most a second for a slot; the work itself may take longer.
	err := sem.WithSlot(context.Background(), func(ctx context.Context) error {
		select {
		case <-ctx.Done(): // the slot was lost: stop at once
			return context.Cause(ctx)
		case <-time.After(10 * time.Millisecond): // the work
			fmt.Println("work done in a slot")
			return nil
		}
	}, sqllock.MaxWait(time.Second))
	if errors.Is(err, sqllock.ErrNotAcquired) {
		fmt.Println("no slot within a second")
	}
	// Output: work done in a slot
}

func ExampleSemaphore_TryWithSlot() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/trywithslot", 1)

	ran, err := sem.TryWithSlot(context.Background(), func(ctx context.Context) error {
		fmt.Println("the only one running")
		return nil
	})
	fmt.Println("ran:", ran, "err:", err)
	// Output:
	// the only one running
	// ran: true err: <nil>
}

func ExampleSemaphore_Acquire() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/acquire", 2)
	ctx := context.Background()

	if err := sem.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	defer sem.Release(context.WithoutCancel(ctx)) //nolint:errcheck
	slot, _ := sem.Slot()
	fmt.Println("holding slot", slot, "of", sem.Slots())
	// Output: holding slot 0 of 2
}

func ExampleSemaphore_TryAcquire() {
	db := openDB()
	defer db.Close()
	l := sqllock.New(db)
	ctx := context.Background()
	a, b := l.Semaphore("example/tryacquire", 1), l.Semaphore("example/tryacquire", 1)

	ok, _ := a.TryAcquire(ctx)
	fmt.Println("a:", ok)
	ok, _ = b.TryAcquire(ctx) // the one slot is a's
	fmt.Println("b:", ok)
	if err := a.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// a: true
	// b: false
}

func ExampleSemaphore_Release() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/release", 1)
	ctx := context.Background()

	if err := sem.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(sem.Release(ctx))
	fmt.Println(errors.Is(sem.Release(ctx), sqllock.ErrNotHeld)) // nothing left to release
	// Output:
	// <nil>
	// true
}

func ExampleSemaphore_Done() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/done", 2)
	ctx := context.Background()

	if err := sem.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	lost := sem.Done()
	select {
	case <-lost: // the slot's session ended: stop working
		fmt.Println("lost:", sem.Err())
	case <-time.After(10 * time.Millisecond): // the work
		fmt.Println("work done, err:", sem.Err())
	}
	if err := sem.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: work done, err: <nil>
}

func ExampleSemaphore_Err() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/err", 2)
	fmt.Println(errors.Is(sem.Err(), sqllock.ErrNotHeld))
	// Output: true
}

func ExampleSemaphore_Token() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db, sqllock.WithFencing()).Semaphore("example/token", 2)
	ctx := context.Background()

	if err := sem.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	token, ok := sem.Token() // pass it with every write the slot protects
	fmt.Println(ok, token > 0)
	if err := sem.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: true true
}

func ExampleSemaphore_Slot() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/slot", 4)
	_, held := sem.Slot()
	fmt.Println("held:", held)
	// Output: held: false
}

func ExampleSemaphore_Holders() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/holders", 2)
	ctx := context.Background()

	if err := sem.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	defer sem.Release(context.WithoutCancel(ctx)) //nolint:errcheck
	hs, err := sem.Holders(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range hs {
		fmt.Println("slot", h.Slot, "held:", h.Granted)
	}
	// Output: slot 0 held: true
}

func ExampleSemaphore_Name() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/name", 8)
	fmt.Println(sem.Name(), sem.Slots())
	// Output: example/name 8
}

func ExampleSemaphore_Slots() {
	db := openDB()
	defer db.Close()
	fmt.Println(sqllock.New(db).Semaphore("example/slots", 3).Slots())
	// Output: 3
}

// The slots' lock names, whose keys another language computes as sqllock's
// keyspace does, to take a slot with pg_try_advisory_lock.
func ExampleSlotName() {
	for i := range 3 {
		fmt.Println(sqllock.SlotName("reports", i))
	}
	// Output:
	// reports#0
	// reports#1
	// reports#2
}

func ExampleSlotHolder() {
	db := openDB()
	defer db.Close()
	sem := sqllock.New(db).Semaphore("example/slotholder", 1)
	hs, err := sem.Holders(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(hs), "sessions hold or wait") // the slot is free
	// Output: 0 sessions hold or wait
}

package sqllock_test

import (
	"context"
	"fmt"
	"log"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func ExampleWithObserver() {
	db := openDB()
	defer db.Close()

	// An Observer sees every lock event of the Locker: count them, time
	// them. It runs on the lock's goroutine, so it must be quick.
	observer := sqllock.ObserverFunc(func(e sqllock.Event) {
		fmt.Println(e.Name, e.Kind)
	})
	locker := sqllock.New(db, sqllock.WithObserver(observer))

	err := locker.Mutex("example/observer").WithLock(context.Background(), func(ctx context.Context) error {
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// example/observer acquired
	// example/observer released
}

// requestKey is the context key of a request's ID.
type requestKey struct{}

// requestObserver tells each lock attempt's events with the ID of the
// request that made it, read from the caller's context.
type requestObserver struct{}

// Observe gets no event here: every attempt has an observer of its own.
func (requestObserver) Observe(sqllock.Event) {}

// ObserveAttempt returns the attempt's observer, which remembers what it
// needs of ctx: a tracer would start a span here, and end it in the
// observer it returns.
func (requestObserver) ObserveAttempt(ctx context.Context, a sqllock.Attempt) sqllock.Observer {
	id, _ := ctx.Value(requestKey{}).(string)
	return sqllock.ObserverFunc(func(e sqllock.Event) {
		fmt.Printf("request %s: %s %s\n", id, a.Name, e.Kind)
	})
}

func ExampleAttemptObserver() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithObserver(requestObserver{}))

	ctx := context.WithValue(context.Background(), requestKey{}, "r-17")
	err := locker.Mutex("example/attempt").WithLock(ctx, func(ctx context.Context) error {
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// request r-17: example/attempt acquired
	// request r-17: example/attempt released
}

// lockKey is the context key of the lock a function runs under.
type lockKey struct{}

// lockNamer is an AttemptObserver whose attempts give WithLock's function
// a context that names the lock it runs under; a tracer puts its hold
// span there instead, to be the parent of the function's spans.
type lockNamer struct{}

// Observe gets no event here: every attempt has an observer of its own.
func (lockNamer) Observe(sqllock.Event) {}

func (lockNamer) ObserveAttempt(_ context.Context, a sqllock.Attempt) sqllock.Observer {
	return heldLock{name: a.Name}
}

// heldLock observes one attempt.
type heldLock struct{ name string }

func (heldLock) Observe(sqllock.Event) {}

// HoldContext derives the context of the function run under the lock.
func (h heldLock) HoldContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, lockKey{}, h.name)
}

func ExampleHoldObserver() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithObserver(lockNamer{}))

	err := locker.Mutex("example/hold").WithLock(context.Background(), func(ctx context.Context) error {
		fmt.Println("running under", ctx.Value(lockKey{}))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// running under example/hold
}

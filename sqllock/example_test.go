package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// openDB opens the pool the examples lock on.
func openDB() *sql.DB {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	return db
}

// The quick start of README.md is this function's body; a test keeps them
// identical.
func Example() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	locker := sqllock.New(db)
	mu := locker.Mutex("billing/nightly")

	// Only one process at a time runs this, however many are deployed.
	err = mu.WithLock(context.Background(), func(ctx context.Context) error {
		fmt.Println("running the nightly billing, alone")
		return nil // if the lock is lost meanwhile, ctx is cancelled
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: running the nightly billing, alone
}

func ExampleMutex_WithLock() {
	db := openDB()
	defer db.Close()
	mu := sqllock.New(db).Mutex("example/withlock")

	err := mu.WithLock(context.Background(), func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			// The lock was lost (or the caller gave up): stop at once.
			if errors.Is(context.Cause(ctx), sqllock.ErrLockLost) {
				return nil // WithLock reports the loss itself
			}
			return ctx.Err()
		case <-time.After(10 * time.Millisecond): // the work
			fmt.Println("work done under the lock")
			return nil
		}
	})
	fmt.Println("err:", err)
	// Output:
	// work done under the lock
	// err: <nil>
}

func ExampleMutex_Lock() {
	db := openDB()
	defer db.Close()
	mu := sqllock.New(db).Mutex("example/lock")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mu.Lock(ctx); err != nil { // ctx bounds the wait only
		log.Fatal(err)
	}
	defer mu.Unlock(context.WithoutCancel(ctx))

	// Watch for a loss while working.
	select {
	case <-mu.Done():
		fmt.Println("lost:", mu.Err())
	default:
		fmt.Println("holding", mu.Name())
	}
	// Output: holding example/lock
}

func ExampleMutex_TryLock() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db)
	ctx := context.Background()

	first, second := locker.Mutex("example/trylock"), locker.Mutex("example/trylock")
	ok, err := first.TryLock(ctx)
	fmt.Println("first:", ok, err)
	ok, err = second.TryLock(ctx) // contention is not an error
	fmt.Println("second:", ok, err)
	fmt.Println("unlock:", first.Unlock(ctx))
	// Output:
	// first: true <nil>
	// second: false <nil>
	// unlock: <nil>
}

func ExampleMutex_LockShared() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db)
	ctx := context.Background()

	// Readers share the lock; a writer waits for all of them.
	r1, r2, w := locker.Mutex("example/shared"), locker.Mutex("example/shared"), locker.Mutex("example/shared")
	fmt.Println(r1.LockShared(ctx), r2.LockShared(ctx))
	ok, _ := w.TryLock(ctx)
	fmt.Println("writer got it while readers hold it:", ok)
	fmt.Println(r1.UnlockShared(ctx), r2.UnlockShared(ctx))
	ok, _ = w.TryLock(ctx)
	fmt.Println("writer got it after:", ok, w.Unlock(ctx))
	// Output:
	// <nil> <nil>
	// writer got it while readers hold it: false
	// <nil> <nil>
	// writer got it after: true <nil>
}

func ExampleLocker_MutexKey() {
	db := openDB()
	defer db.Close()
	// An explicit key, e.g. one shared with another library's scheme.
	mu := sqllock.New(db).MutexKey(keyspace.Int64(4097083626))
	fmt.Println(mu.Key())
	// Output: int64(4097083626)
}

func ExampleWithKeyspace() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithKeyspace(keyspace.SHA256Int64))
	fmt.Println(locker.Mutex("dbmigration").Key())
	// Output: int64(-4938876031718299147)
}

func ExampleLocker_Election() {
	db := openDB()
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Every replica runs this; one at a time leads. The default takeover
	// delay (the keep-alive's bound) keeps two leaders from overlapping when
	// one dies; this example leads alone, so it skips it.
	clock := sqllock.New(db).Election("example/clock", sqllock.WithTakeoverDelay(0))
	err := clock.Run(ctx, func(ctx context.Context) error {
		fmt.Println("leading: the only clock process")
		cancel() // a real clock ticks until ctx ends: shutdown or lost leadership
		<-ctx.Done()
		return nil
	})
	fmt.Println(err)
	// Output:
	// leading: the only clock process
	// context canceled
}

// Wait at most a moment for the lock, then run a job that may take longer:
// MaxWait bounds the wait alone, and ErrNotAcquired tells a failed wait
// from the job's own failure.
func ExampleMaxWait() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db)
	other := locker.Mutex("example/maxwait")
	if err := other.Lock(context.Background()); err != nil { // someone else is running the job
		log.Fatal(err)
	}
	defer other.Unlock(context.Background())

	job := func(ctx context.Context) error {
		fmt.Println("running the job")
		return nil
	}
	err := locker.Mutex("example/maxwait").WithLock(context.Background(), job, sqllock.MaxWait(100*time.Millisecond))
	switch {
	case errors.Is(err, sqllock.ErrNotAcquired) && errors.Is(err, context.DeadlineExceeded):
		fmt.Println("someone else is running it; skipped")
	case err != nil:
		log.Fatal(err) // the job failed, or the lock was lost while it ran
	}
	// Output: someone else is running it; skipped
}

// Hold many locks on a few connections: one per tenant, say, all at once.
func ExampleWithSessions() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithSessions(2))
	var held []*sqllock.Mutex
	for tenant := range 100 {
		mu := locker.Mutex(fmt.Sprintf("example/tenant/%d", tenant))
		if err := mu.Lock(context.Background()); err != nil {
			log.Fatal(err)
		}
		held = append(held, mu)
	}
	fmt.Println("locks held:", len(held), "connections in use:", db.Stats().InUse)
	for _, mu := range held {
		if err := mu.Unlock(context.Background()); err != nil {
			log.Fatal(err)
		}
	}
	// Output: locks held: 100 connections in use: 2
}

// A holder that stops (a paused container, a frozen VM) loses its lock
// once its session has been idle for the lease; a live holder's keep-alive
// keeps it. Here: probes every second, a frozen holder's lock free within
// 5s.
func ExampleWithLease() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithKeepAlive(time.Second, 2*time.Second), sqllock.WithLease(5*time.Second))
	err := locker.Mutex("example/lease").WithLock(context.Background(), func(ctx context.Context) error {
		fmt.Println("held under a 5s lease")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: held under a 5s lease
}

// Pass the lock's fencing token with every write it protects; the resource
// refuses a token older than one it has seen (see docs/recipes.md).
func ExampleWithFencing() {
	db := openDB()
	defer db.Close()
	mu := sqllock.New(db, sqllock.WithFencing()).Mutex("example/fencing")

	var tokens []uint64
	for range 2 {
		err := mu.WithLock(context.Background(), func(ctx context.Context) error {
			token, _ := sqllock.Token(ctx)
			tokens = append(tokens, token) // write(ctx, token, ...)
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("the second grant's token is larger:", tokens[1] > tokens[0])
	// Output: the second grant's token is larger: true
}

// After Lock, the Mutex knows the token of the exclusive lock it holds.
func ExampleMutex_Token() {
	db := openDB()
	defer db.Close()
	mu := sqllock.New(db, sqllock.WithFencing()).Mutex("example/token")
	if err := mu.Lock(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer mu.Unlock(context.Background())
	token, ok := mu.Token()
	fmt.Println("fenced:", ok, token > 0)
	// Output: fenced: true true
}

// With fencing, a new leader need not wait out the old leader's keep-alive:
// the token refuses whatever an old leader that stalled writes late.
func ExampleToken() {
	db := openDB()
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	locker := sqllock.New(db, sqllock.WithFencing())
	election := locker.Election("example/fenced-leader", sqllock.WithTakeoverDelay(0))
	err := election.Run(ctx, func(ctx context.Context) error {
		defer cancel()
		token, ok := sqllock.Token(ctx)
		fmt.Println("leading with a token:", ok && token > 0) // fence every write with it
		return nil
	})
	fmt.Println(err)
	// Output:
	// leading with a token: true
	// context canceled
}

// Break a stuck lock: end the sessions that hold it. Each holder learns
// of its loss as usual.
func ExampleMutex_Terminate() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ended, err := sqllock.New(db).Mutex("billing/nightly").Terminate(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range ended {
		fmt.Printf("ended backend %d (%s, since %v)\n", h.PID, h.ApplicationName, h.BackendStart)
	}
}

// A status page shows where this process stands: following, waiting out
// the takeover delay with the lock won, or leading.
func ExampleElection_State() {
	db := openDB()
	defer db.Close()
	e := sqllock.New(db).Election("example/state")
	fmt.Println("before Run:", e.State())
	// Output: before Run: idle
}

// Many keyspaces (a tenant each) over one Locker and its sessions.
func ExampleLocker_Keyspace() {
	db := openDB()
	defer db.Close()
	locker := sqllock.New(db, sqllock.WithSessions(2))
	tenant7 := locker.Keyspace(keyspace.Scoped(7))
	tenant8 := locker.Keyspace(keyspace.Scoped(8))
	fmt.Println(tenant7.Mutex("invoicing").Key(), tenant8.Mutex("invoicing").Key())
	// Output: pair(7,-2052698607) pair(8,-2052698607)
}

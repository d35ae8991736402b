package sqllock_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// A status page says who leads, as the server shows it, from any
// process: a candidate that has won but still waits out its takeover
// delay is not reported as leading.
func ExampleElection_Leadership() {
	db := openDB()
	defer db.Close()
	e := sqllock.New(db).Election("example/leadership")
	ld, err := e.Leadership(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	switch ld.State {
	case sqllock.ElectionLeading:
		fmt.Println("leader: pid", ld.Leader.PID, ld.Leader.ApplicationName)
	case sqllock.ElectionWaiting:
		fmt.Println("pid", ld.Leader.PID, "has won and waits out its takeover delay")
	default:
		fmt.Println("no leader;", len(ld.Followers), "candidates waiting")
	}
	// Output: no leader; 0 candidates waiting
}

// Followers learn of each change of leader without polling faster than
// the keep-alive; observing holds nothing the candidates wait for.
func ExampleElection_Observe() {
	db := openDB()
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	locker := sqllock.New(db, sqllock.WithKeepAlive(100*time.Millisecond, time.Second)) // looks every 100ms
	e := locker.Election("example/observe", sqllock.WithTakeoverDelay(time.Minute))
	done := make(chan error, 1)
	go func() { // a candidate: nobody led before, so it waits out its delay
		done <- e.Run(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil })
	}()
	for ld := range e.Observe(ctx) {
		if ld.State == sqllock.ElectionWaiting {
			fmt.Println("the winner waits out its takeover delay; leading:", ld.State == sqllock.ElectionLeading)
			break
		}
	}
	cancel()
	<-done
	// Output: the winner waits out its takeover delay; leading: false
}

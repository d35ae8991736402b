package examples_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_atMostN() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// Each slot held pins a connection, and a waiting process one or two:
	// leave room for them beside the application's own queries.
	db.SetMaxOpenConns(20)
	locker := sqllock.New(db)

	// The vendor allows three report runs at once, whichever host starts
	// them. Every worker of every host asks the same semaphore.
	reports := locker.Semaphore("examples/vendor-reports", 3)
	var running, most atomic.Int32
	generate := func(ctx context.Context) error {
		now := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
		}
		time.Sleep(20 * time.Millisecond) // the vendor's API at work
		return nil
	}

	var wg sync.WaitGroup
	for range 8 { // eight workers, here in one process
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Wait at most a minute for a slot; the run itself may take longer.
			err := reports.WithSlot(context.Background(), generate, sqllock.MaxWait(time.Minute))
			if errors.Is(err, sqllock.ErrNotAcquired) {
				log.Print("no slot within a minute; trying again on the next schedule")
			} else if err != nil {
				log.Print(err)
			}
		}()
	}
	wg.Wait()
	// How many ran at once depends on timing; never more than three did.
	fmt.Println("more than three at once:", most.Load() > 3)
	// Output: more than three at once: false
}

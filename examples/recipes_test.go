package examples_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_clockProcess() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// A new leader first waits out the keep-alive bound of the old one
	// (max(interval, timeout) + timeout, 10s by default), so that two clocks
	// never tick at once, even when the old leader lost its session without
	// noticing yet. This example shortens the keep-alive, and so that wait, to 2s.
	locker := sqllock.New(db, sqllock.WithKeepAlive(500*time.Millisecond, time.Second))
	clock := locker.Election("examples/clock")

	// In a process: ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	// Every replica runs this; one ticks, the others wait to take over.
	err = clock.Run(ctx, func(ctx context.Context) error {
		fmt.Println("leading: this process runs the schedule")
		ticker := time.NewTicker(10 * time.Millisecond)
		defer ticker.Stop()
		for ticks := 1; ; ticks++ {
			select {
			case <-ctx.Done(): // leadership lost (the cause wraps sqllock.ErrLockLost), or shutdown
				return context.Cause(ctx)
			case <-ticker.C:
				if ctx.Err() != nil { // a tick and the loss came together: the loss wins
					return context.Cause(ctx)
				}
				fmt.Println("tick", ticks) // enqueue the jobs due now
				if ticks == 3 {
					stop() // the example ends after three ticks
				}
			}
		}
	})
	fmt.Println("clock stopped:", err)
	// Output:
	// leading: this process runs the schedule
	// tick 1
	// tick 2
	// tick 3
	// clock stopped: context canceled
}

func Example_cronOnManyHosts() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	locker := sqllock.New(db)
	ctx := context.Background()

	// Every host's crontab runs this at the same minute. One host sends the
	// report; the others find the lock taken and skip this run.
	report := func(ctx context.Context, host string) error {
		ran, err := locker.Mutex("examples/cron/hourly-report").TryWithLock(ctx, func(ctx context.Context) error {
			fmt.Println(host + ": sending the hourly report")
			return nil
		})
		if err == nil && !ran {
			fmt.Println(host + ": skipped, another host is sending it")
		}
		return err
	}

	// web-1 fired a moment earlier and is still sending when web-2 and web-3
	// fire; here a Lock stands in for it.
	web1 := locker.Mutex("examples/cron/hourly-report")
	if err := web1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	for _, host := range []string{"web-2", "web-3"} {
		if err := report(ctx, host); err != nil {
			log.Fatal(err)
		}
	}
	if err := web1.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	// An hour later web-2 is first.
	if err := report(ctx, "web-2"); err != nil {
		log.Fatal(err)
	}
	// Output:
	// web-2: skipped, another host is sending it
	// web-3: skipped, another host is sending it
	// web-2: sending the hourly report
}

func Example_perTenantJobs() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// One Locker for all tenants, each tenant in its own key namespace: two
	// tenants' locks never collide, whatever their names, and they share
	// the Locker (with WithSessions, its few sessions).
	locker := sqllock.New(db)
	lockerFor := func(tenantID int32) *sqllock.Locker {
		return locker.Keyspace(keyspace.Scoped(tenantID))
	}
	fmt.Println("tenant 7:", lockerFor(7).Mutex("examples/invoicing").Key())
	fmt.Println("tenant 8:", lockerFor(8).Mutex("examples/invoicing").Key())

	ctx := context.Background()
	err = lockerFor(7).Mutex("examples/invoicing").WithLock(ctx, func(ctx context.Context) error {
		fmt.Println("tenant 7: invoicing")
		// Tenant 8's invoicing runs alongside ...
		ran, err := lockerFor(8).Mutex("examples/invoicing").TryWithLock(ctx, func(ctx context.Context) error {
			fmt.Println("tenant 8: invoicing")
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Println("tenant 8 ran:", ran)
		// ... while a second run for tenant 7 is kept out.
		ran, err = lockerFor(7).Mutex("examples/invoicing").TryWithLock(ctx, func(ctx context.Context) error {
			fmt.Println("tenant 7: invoicing again") // not reached
			return nil
		})
		fmt.Println("second tenant 7 run ran:", ran)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// tenant 7: pair(7,917608582)
	// tenant 8: pair(8,917608582)
	// tenant 7: invoicing
	// tenant 8: invoicing
	// tenant 8 ran: true
	// second tenant 7 run ran: false
}

func Example_leaderElection() {
	// Name the process's sessions, so that Leader can tell who leads.
	cfg, err := pgx.ParseConfig(os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "cache-warmer@web-1" // say, "cache-warmer@" + hostname
	db := stdlib.OpenDB(*cfg)
	defer db.Close()

	// Warming a cache tolerates a brief overlap of two leaders, so a new
	// leader starts at once; see the clock process for work that does not.
	election := sqllock.New(db).Election("examples/cache-warmer", sqllock.WithTakeoverDelay(0))

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	err = election.Run(ctx, func(ctx context.Context) error {
		defer stop() // the example ends after one term; a leader works until ctx ends
		fmt.Println("this process leads:", election.Leading())
		// Any process, leading or not, can ask who leads (for a status page,
		// say): the server's view, from pg_locks and pg_stat_activity.
		leader, ok, err := election.Leader(ctx)
		if err != nil {
			return err
		}
		fmt.Println("someone leads:", ok)
		fmt.Println("leader:", leader.ApplicationName)
		return nil
	})
	fmt.Println("run:", err)
	// Output:
	// this process leads: true
	// someone leads: true
	// leader: cache-warmer@web-1
	// run: context canceled
}

package sqllock_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// BenchmarkManyLocks holds n distinct locks at once in one process, in
// today's mode (one connection per held lock), on a cluster of its own
// allowing 150 connections: how long 64 goroutines take to acquire them
// and to release them, the client heap per held lock (its *Mutex
// included), and the server
// sessions and keep-alive probes per interval they cost. Past the
// server's connection limit the mode fails (issue 15's starting point);
// the largest n reports where. Run it alone:
//
//	go test -run '^$' -bench ManyLocks -benchtime 1x ./sqllock/
//
// make bench leaves it out (it starts a cluster, and has no reference to
// pair with): it runs only when -bench names it.
func BenchmarkManyLocks(b *testing.B) {
	if f := flag.Lookup("test.bench"); f == nil || !strings.Contains(f.Value.String(), "ManyLocks") {
		b.Skip("run it by name: -bench ManyLocks")
	}
	// A lock table of 256 × (150 + 0) entries: room for 10,000 locks.
	c := pgtest.NewCluster(b, "max_connections=150", "max_locks_per_transaction=256")
	for _, d := range []string{"pq", "pgx"} {
		for _, n := range []int{10, 50, 100, 145, 200} {
			b.Run(fmt.Sprintf("driver=%s/mode=connections/locks=%d", d, n), func(b *testing.B) {
				db, err := sql.Open(driverName(d), c.DSN())
				check(b, err)
				defer db.Close()
				db.SetMaxIdleConns(n)
				for b.Loop() {
					manyLocks(b, db, n)
				}
			})
		}
		for _, n := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("driver=%s/mode=sessions/locks=%d", d, n), func(b *testing.B) {
				db, err := sql.Open(driverName(d), c.DSN())
				check(b, err)
				defer db.Close()
				db.SetMaxIdleConns(8)
				for b.Loop() {
					manyLocks(b, db, n, sqllock.WithSessions(8))
				}
			})
		}
	}
}

func manyLocks(b *testing.B, db *sql.DB, n int, opts ...sqllock.Option) {
	ctx := context.Background()
	l := sqllock.New(db, opts...)
	// The heap per lock counts the *Mutex, which the caller keeps to
	// unlock, and the Mutex slice (one pointer per lock).
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ms := make([]*sqllock.Mutex, n)
	for i := range ms {
		ms[i] = l.MutexKey(keyspace.Int64(int64(8_000_000 + i)))
	}

	start := time.Now()
	errs := each(ms, func(m *sqllock.Mutex) error { return m.Lock(ctx) })
	acquire := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := n - len(errs)
	sessions := db.Stats().InUse // every connection in use carries held locks
	if len(errs) > 0 {
		b.Logf("%d locks: %d acquired, %d failed, e.g. %v", n, held, len(errs), errs[0])
	}
	start = time.Now()
	each(ms, func(m *sqllock.Mutex) error {
		if m.Err() != nil { // never acquired
			return nil
		}
		return m.Unlock(ctx)
	})
	release := time.Since(start)

	b.ReportMetric(float64(held), "held")
	b.ReportMetric(float64(acquire.Milliseconds()), "acquire-ms")
	b.ReportMetric(float64(release.Milliseconds()), "release-ms")
	if held > 0 {
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(held), "heap-B/lock")
	}
	b.ReportMetric(float64(sessions), "sessions")
	b.ReportMetric(float64(sessions), "probes/interval") // one probe per session and interval
}

// each runs f on every Mutex from 64 goroutines and returns the errors.
func each(ms []*sqllock.Mutex, f func(*sqllock.Mutex) error) []error {
	work := make(chan *sqllock.Mutex)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for m := range work {
				if err := f(m); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, m := range ms {
		work <- m
	}
	close(work)
	wg.Wait()
	return errs
}

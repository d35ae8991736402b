package sqllock_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// BenchmarkSemaphore measures an uncontended Acquire+Release of a 3-slot
// semaphore against Lock+Unlock of a Mutex, on the same driver and pool
// (issue 29's target: at most 1.1×).
func BenchmarkSemaphore(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		alternate(b, "impl=semaphore", func(b *testing.B) {
			sem := sqllock.New(db).Semaphore(b.Name(), 3)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				check(b, sem.Acquire(ctx))
				check(b, sem.Release(ctx))
			}
		}, "impl=mutex", func(b *testing.B) {
			mu := sqllock.New(db).Mutex(b.Name())
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				check(b, mu.Lock(ctx))
				check(b, mu.Unlock(ctx))
			}
		})
	})
}

// BenchmarkSemaphoreHandoff measures how soon a slot one holder releases
// is taken by a waiting process: 3 slots held, 8 waiters, each holder and
// waiter a Semaphore of its own Locker, as processes are. It reports the
// median and the 99th percentile (issue 29's target: median ≤ 50 ms).
func BenchmarkSemaphoreHandoff(b *testing.B) {
	const slots, waiters = 3, 8
	benchDrivers(b, 2*(slots+waiters)+4, func(b *testing.B, db *sql.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		name := b.Name()
		type grant struct {
			id int
			at time.Time
		}
		acquired := make(chan grant, slots+waiters)
		release := make([]chan struct{}, slots+waiters)
		again := make([]chan struct{}, slots+waiters)
		done := make(chan struct{}, slots+waiters)
		for id := range slots + waiters {
			release[id], again[id] = make(chan struct{}), make(chan struct{})
			sem := sqllock.New(db).Semaphore(name, slots)
			go func() {
				defer func() { done <- struct{}{} }()
				for {
					if err := sem.Acquire(ctx); err != nil {
						return // the benchmark ended
					}
					acquired <- grant{id, time.Now()}
					select {
					case <-release[id]:
					case <-ctx.Done():
					}
					_ = sem.Release(context.Background())
					select {
					case <-again[id]:
					case <-ctx.Done():
						return
					}
				}
			}()
		}
		var holders []int // oldest first
		for range slots {
			holders = append(holders, (<-acquired).id)
		}
		slotKeysOf, _ := slotKeys(name, slots)
		waiting := func() {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				w := 0
				for _, k := range slotKeysOf {
					_, n := lockRows(b, db, k)
					w += n
				}
				if w == waiters {
					return
				}
			}
			b.Fatalf("no %d waiters", waiters)
		}
		lat := make([]time.Duration, 0, 1024)
		for b.Loop() {
			b.StopTimer()
			waiting()
			b.StartTimer()
			h := holders[0]
			holders = holders[1:]
			start := time.Now()
			release[h] <- struct{}{}
			g := <-acquired
			lat = append(lat, g.at.Sub(start))
			holders = append(holders, g.id)
			again[h] <- struct{}{} // the releaser waits again
		}
		cancel()
		for range slots + waiters {
			<-done
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
}

// BenchmarkSemaphoreTry is BenchmarkSemaphore's Mutex side with TryLock,
// the statement a Semaphore's grant uses.
func BenchmarkSemaphoreTry(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		mu := sqllock.New(db).Mutex(b.Name())
		b.ReportAllocs()
		for b.Loop() {
			ok, err := mu.TryLock(ctx)
			check(b, err)
			if !ok {
				b.Fatal("contended")
			}
			check(b, mu.Unlock(ctx))
		}
	})
}

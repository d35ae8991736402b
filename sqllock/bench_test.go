package sqllock_test

import (
	"context"
	"database/sql"
	"flag"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// Each scenario runs on both drivers, as the library ("lib") and as
// hand-written database/sql code on a pinned *sql.Conn ("ref"), in the same
// run. "floor" is one SELECT 1 on a pinned connection: one round trip.
// Compare with benchstat; make bench prints the ratios.

var (
	refFirst = flag.Bool("reffirst", false, "benchmarks: run each scenario's reference before the library (make bench alternates)")
	rounds   = flag.Int("rounds", 1, "benchmarks: measure each scenario's library and reference this many times, alternating")
)

// libRef runs a scenario's two sub-benchmarks, the library's first unless
// -reffirst is set, -rounds times, swapping the order each round. A
// ratio is taken from the two samples of one round, measured back to back:
// on a machine whose speed drifts from one second to the next, the closer
// the two sides of a ratio are in time, the less the drift weighs in it.
// Repeated rounds appear as name#01, name#02, ... (internal/benchrun
// strips the suffix).
func libRef(b *testing.B, lib, ref func(b *testing.B)) {
	alternate(b, "impl=lib", lib, "impl=ref", ref)
}

// alternate is libRef for any two sides, named nameA and nameB: A is the
// library's side, B the reference's.
func alternate(b *testing.B, nameA string, a func(b *testing.B), nameB string, bf func(b *testing.B)) {
	first, second := a, bf
	firstName, secondName := nameA, nameB
	if *refFirst {
		first, second, firstName, secondName = second, first, secondName, firstName
	}
	for range max(*rounds, 1) {
		b.Run(firstName, first)
		b.Run(secondName, second)
		first, second, firstName, secondName = second, first, secondName, firstName
	}
}

// benchDrivers runs f on each driver with a pool of at most conns
// connections, all of them opened before f runs. A scenario that needs one
// connection gets a pool of one, so that its library side and its
// reference side talk to the server over the same connection and the same
// backend, and no difference between two connections or two backends can
// enter their ratio.
func benchDrivers(b *testing.B, conns int, f func(b *testing.B, db *sql.DB)) {
	for _, d := range []string{"pq", "pgx"} {
		b.Run("driver="+d, func(b *testing.B) {
			db := pgtest.DB(b, driverName(d))
			db.SetMaxOpenConns(conns)
			db.SetMaxIdleConns(conns)
			warm(b, db, conns)
			f(b, db)
		})
	}
}

// driverName returns the database/sql driver name for a benchmark's
// driver=... label.
func driverName(label string) string {
	return map[string]string{"pq": "postgres", "pgx": "pgx"}[label]
}

// otherDB opens a second pool on the benchmark's driver, for a party that
// must not take the benchmark pool's connection.
func otherDB(b *testing.B) *sql.DB {
	label := "pq"
	if strings.Contains(b.Name(), "driver=pgx") {
		label = "pgx"
	}
	return pgtest.DB(b, driverName(label))
}

// warm opens n connections in db's pool, so that no benchmark dials one in
// its timed loop: a new session takes 25 ms or more here, the time of
// hundreds of lock cycles, and would weigh on whichever side of a ratio
// ran first.
func warm(b *testing.B, db *sql.DB, n int) {
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(context.Background())
		check(b, err)
		conns[i] = c
	}
	for _, c := range conns {
		check(b, c.Close())
	}
}

func pin(b *testing.B, db *sql.DB) *sql.Conn {
	b.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func check(b *testing.B, err error) {
	if err != nil {
		b.Fatal(err)
	}
}

// refSQL is the fastest hand-written SQL a user of the benchmark's driver
// writes for key n: with pgx, the key as a parameter ($1), which pgx
// prepares once per connection; with lib/pq, the key written into the
// text, built once, which lib/pq sends as a simple query in one round trip
// (with a parameter it would take two: Parse/Describe, then Bind/Execute).
type refSQL struct {
	lockQ, unlockQ, tryQ string
	args                 []any
}

// newRef returns b's reference statements for key n, in the given mode (""
// or "_shared").
func newRef(b *testing.B, mode string, n int64) refSQL {
	if strings.Contains(b.Name(), "driver=pq") {
		k := strconv.FormatInt(n, 10)
		return refSQL{
			lockQ:   "SELECT pg_advisory_lock" + mode + "(" + k + ")",
			unlockQ: "SELECT pg_advisory_unlock" + mode + "(" + k + ")",
			tryQ:    "SELECT pg_try_advisory_lock" + mode + "(" + k + ")",
		}
	}
	return refSQL{
		lockQ:   "SELECT pg_advisory_lock" + mode + "($1)",
		unlockQ: "SELECT pg_advisory_unlock" + mode + "($1)",
		tryQ:    "SELECT pg_try_advisory_lock" + mode + "($1)",
		args:    []any{n},
	}
}

func (r refSQL) lock(b *testing.B, ctx context.Context, c *sql.Conn) {
	_, err := c.ExecContext(ctx, r.lockQ, r.args...)
	check(b, err)
}

func (r refSQL) unlock(b *testing.B, ctx context.Context, c *sql.Conn) {
	var ok bool
	check(b, c.QueryRowContext(ctx, r.unlockQ, r.args...).Scan(&ok))
}

func (r refSQL) try(b *testing.B, ctx context.Context, c *sql.Conn) bool {
	var ok bool
	check(b, c.QueryRowContext(ctx, r.tryQ, r.args...).Scan(&ok))
	return ok
}

// refCycle is the hand-written reference: lock and unlock on a pinned
// connection.
func refCycle(b *testing.B, ctx context.Context, c *sql.Conn, r refSQL) {
	r.lock(b, ctx, c)
	r.unlock(b, ctx, c)
}

func benchKey(b *testing.B) keyspace.Key { return keyspace.SHA256Int64.Key(b.Name()) }

// reportCPU reports the client process's CPU time per operation
// ("cpu-µs/op", user plus system), a figure that the machine's other load
// disturbs far less than wall time: it shows what the library itself costs,
// round trips aside. Call it first; it reports when the benchmark returns.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkFloor(b *testing.B) {
	// As many samples as the scenarios' rounds, so that each pairs with one.
	for range max(*rounds, 1) {
		benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
			c := pin(b, db)
			ctx := context.Background()
			b.ReportAllocs()
			defer reportCPU(b)()
			var one int
			for b.Loop() {
				check(b, c.QueryRowContext(ctx, "SELECT 1").Scan(&one))
			}
		})
	}
}

func BenchmarkLockUnlock(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		libRef(b, func(b *testing.B) {
			mu := sqllock.New(db).MutexKey(k)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				check(b, mu.Lock(ctx))
				check(b, mu.Unlock(ctx))
			}
		}, func(b *testing.B) {
			c := pin(b, db)
			r := newRef(b, "", n)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				refCycle(b, ctx, c, r)
			}
		})
	})
}

func BenchmarkTryLockContended(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		// The holder has a pool of its own: the benchmark pool's one
		// connection is the contenders'.
		holder := sqllock.New(otherDB(b)).MutexKey(k)
		check(b, holder.Lock(ctx))
		defer holder.Unlock(ctx)
		libRef(b, func(b *testing.B) {
			mu := sqllock.New(db).MutexKey(k)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				ok, err := mu.TryLock(ctx)
				check(b, err)
				if ok {
					b.Fatal("TryLock succeeded on a held key")
				}
			}
		}, func(b *testing.B) {
			c := pin(b, db)
			r := newRef(b, "", n)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if r.try(b, ctx, c) {
					b.Fatal("try-lock succeeded on a held key")
				}
			}
		})
	})
}

func BenchmarkWithLock(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		noop := func(context.Context) error { return nil }
		libRef(b, func(b *testing.B) {
			mu := sqllock.New(db).MutexKey(k)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				check(b, mu.WithLock(ctx, noop))
			}
		}, func(b *testing.B) {
			c := pin(b, db)
			r := newRef(b, "", n)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				r.lock(b, ctx, c)
				check(b, noop(ctx))
				r.unlock(b, ctx, c)
			}
		})
	})
}

// BenchmarkHandoff measures the latency from the holder's release to the
// waiter's acquisition, with the waiter already blocked in the server.
func BenchmarkHandoff(b *testing.B) {
	benchDrivers(b, 3, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		run := func(b *testing.B, lock, unlock [2]func() error) {
			lat := make([]time.Duration, 0, 1024)
			check(b, lock[0]())
			for b.Loop() {
				acquired := make(chan time.Time, 1)
				go func() {
					err := lock[1]()
					acquired <- time.Now()
					check(b, err)
				}()
				waitWaiters(b, db, k, 1)
				start := time.Now()
				check(b, unlock[0]())
				lat = append(lat, (<-acquired).Sub(start))
				// Swap roles: the waiter now holds.
				lock[0], lock[1] = lock[1], lock[0]
				unlock[0], unlock[1] = unlock[1], unlock[0]
			}
			check(b, unlock[0]())
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		}
		libRef(b, func(b *testing.B) {
			l := sqllock.New(db)
			m0, m1 := l.MutexKey(k), l.MutexKey(k)
			run(b, [2]func() error{func() error { return m0.Lock(ctx) }, func() error { return m1.Lock(ctx) }},
				[2]func() error{func() error { return m0.Unlock(ctx) }, func() error { return m1.Unlock(ctx) }})
		}, func(b *testing.B) {
			c0, c1 := pin(b, db), pin(b, db)
			r := newRef(b, "", n)
			lk := func(c *sql.Conn) func() error {
				return func() error { _, err := c.ExecContext(ctx, r.lockQ, r.args...); return err }
			}
			ul := func(c *sql.Conn) func() error {
				return func() error { _, err := c.ExecContext(ctx, r.unlockQ, r.args...); return err }
			}
			run(b, [2]func() error{lk(c0), lk(c1)}, [2]func() error{ul(c0), ul(c1)})
		})
	})
}

// waitWaiters polls pg_locks until k has n waiters (outside the measured
// interval of BenchmarkHandoff).
func waitWaiters(b *testing.B, db *sql.DB, k keyspace.Key, n int) {
	c, o, s := k.LockTag()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var w int
		check(b, db.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = $1 AND objid = $2 AND objsubid = $3`, int64(c), int64(o), int64(s)).Scan(&w))
		if w == n {
			return
		}
	}
	b.Fatalf("no waiter on %v", k)
}

// BenchmarkParallel runs 8 goroutines per CPU, each locking and unlocking its own key.
//
// The library side runs without the lease (WithLease(0)): the reference
// sets none, and under a load that the server's CPU bounds, the lease's
// two set_config calls per cycle show; BenchmarkLeaseParallel measures
// them.
func BenchmarkParallel(b *testing.B) {
	benchDrivers(b, 16, func(b *testing.B, db *sql.DB) {
		base := benchKey(b)
		bn, _ := base.Int64()
		libRef(b, parallelLoop(sqllock.New(db, sqllock.WithLease(0)), bn), func(b *testing.B) {
			ctx := context.Background()
			var next atomic.Int64
			b.SetParallelism(8)
			b.ReportAllocs()
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				r := newRef(b, "", bn+next.Add(1))
				c, err := db.Conn(ctx)
				check(b, err)
				defer c.Close()
				for pb.Next() {
					refCycle(b, ctx, c, r)
				}
			})
		})
	})
}

// BenchmarkShared runs 8 goroutines taking and releasing one key in shared mode.
func BenchmarkShared(b *testing.B) {
	benchDrivers(b, 16, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		libRef(b, func(b *testing.B) {
			mu := sqllock.New(db).MutexKey(k)
			b.SetParallelism(8)
			b.ReportAllocs()
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					check(b, mu.LockShared(ctx))
					check(b, mu.UnlockShared(ctx))
				}
			})
		}, func(b *testing.B) {
			b.SetParallelism(8)
			b.ReportAllocs()
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				r := newRef(b, "_shared", n)
				c, err := db.Conn(ctx)
				check(b, err)
				defer c.Close()
				for pb.Next() {
					refCycle(b, ctx, c, r)
				}
			})
		})
	})
}

// BenchmarkKeepAlive measures what the keep-alive costs on the lock path:
// the library's Lock+Unlock with the keep-alive at its default
// ("keepalive=on") and off ("keepalive=off"), measured as the other
// scenarios' two sides are. No probe runs within a cycle: the difference
// is the probe's scheduler entry, made at Lock and removed at Unlock.
// BenchmarkSessions measures an uncontended Lock+Unlock on a shared session
// (WithSessions) against the same on a connection of its own, the default
// mode: mode=sessions over mode=connections, within 1.05.
func BenchmarkSessions(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		k := benchKey(b)
		alternate(b, "mode=sessions", lockUnlockLoop(sqllock.New(db, sqllock.WithSessions(1)), k),
			"mode=connections", lockUnlockLoop(sqllock.New(db), k))
	})
}

func BenchmarkKeepAlive(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		k := benchKey(b)
		alternate(b, "keepalive=on", lockUnlockLoop(sqllock.New(db), k),
			"keepalive=off", lockUnlockLoop(sqllock.New(db, sqllock.WithKeepAlive(0, 0)), k))
	})
}

// parallelLoop is a benchmark side where 16 goroutines lock and unlock keys
// of their own, from base+1 on, with l.
func parallelLoop(l *sqllock.Locker, base int64) func(b *testing.B) {
	return func(b *testing.B) {
		ctx := context.Background()
		var next atomic.Int64
		b.SetParallelism(8)
		b.ReportAllocs()
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			mu := l.MutexKey(keyspace.Int64(base + next.Add(1)))
			for pb.Next() {
				check(b, mu.Lock(ctx))
				check(b, mu.Unlock(ctx))
			}
		})
	}
}

// BenchmarkLease measures what the lease (WithLease, on by default) costs
// per uncontended Lock+Unlock: lease=on over lease=off, paired in one run.
// The difference is two set_config calls in the server.
func BenchmarkLease(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		k := benchKey(b)
		alternate(b, "lease=on", lockUnlockLoop(sqllock.New(db), k),
			"lease=off", lockUnlockLoop(sqllock.New(db, sqllock.WithLease(0)), k))
	})
}

// BenchmarkLeaseParallel is BenchmarkLease under BenchmarkParallel's load,
// where the server's CPU is the bound.
func BenchmarkLeaseParallel(b *testing.B) {
	benchDrivers(b, 16, func(b *testing.B, db *sql.DB) {
		base, _ := benchKey(b).Int64()
		alternate(b, "lease=on", parallelLoop(sqllock.New(db), base),
			"lease=off", parallelLoop(sqllock.New(db, sqllock.WithLease(0)), base))
	})
}

// lockUnlockLoop is a benchmark side that locks and unlocks k with l.
func lockUnlockLoop(l *sqllock.Locker, k keyspace.Key) func(b *testing.B) {
	return func(b *testing.B) {
		ctx := context.Background()
		mu := l.MutexKey(k)
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			check(b, mu.Lock(ctx))
			check(b, mu.Unlock(ctx))
		}
	}
}

// BenchmarkFencing measures what WithFencing costs per uncontended
// Lock+Unlock: fencing=on over fencing=off, paired in one run. The
// difference is a transaction id and a WAL flush per grant.
func BenchmarkFencing(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		k := benchKey(b)
		alternate(b, "fencing=on", lockUnlockLoop(sqllock.New(db, sqllock.WithFencing()), k),
			"fencing=off", lockUnlockLoop(sqllock.New(db), k))
	})
}

// BenchmarkFencedLockUnlock compares a fenced Lock+Unlock with the
// fastest hand-written SQL that gets a token as durable, in one round trip
// per operation: the lock, a transactional WAL message and the
// transaction id in one statement, then the unlock.
func BenchmarkFencedLockUnlock(b *testing.B) {
	benchDrivers(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		k := benchKey(b)
		n, _ := k.Int64()
		libRef(b, lockUnlockLoop(sqllock.New(db, sqllock.WithFencing()), k), func(b *testing.B) {
			c := pin(b, db)
			r := newRef(b, "", n)
			key := "$1"
			if r.args == nil {
				key = strconv.FormatInt(n, 10)
			}
			lockQ := "SELECT CASE WHEN pg_advisory_lock(" + key + ") IS NOT NULL" +
				" AND pg_logical_emit_message(true, 'ref', '') IS NOT NULL" +
				" THEN left(pg_walfile_name(pg_current_wal_lsn()), 8) || ' ' || pg_current_xact_id()::text END"
			b.ReportAllocs()
			defer reportCPU(b)()
			var token string
			for b.Loop() {
				check(b, c.QueryRowContext(ctx, lockQ, r.args...).Scan(&token))
				r.unlock(b, ctx, c)
			}
		})
	})
}

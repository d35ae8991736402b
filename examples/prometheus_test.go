package examples_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_prometheus() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// The metrics. Label by event kind only: lock names (one per tenant,
	// say) can make unbounded label values.
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sqllock_events_total",
		Help: "Lock events by kind: acquired, contended, failed, released, lost.",
	}, []string{"event"})
	wait := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sqllock_wait_seconds",
		Help:    "Time spent taking a lock, whether granted, contended or failed.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms to about 4.4min
	})
	hold := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sqllock_hold_seconds",
		Help:    "Time a lock was held, until released or lost.",
		Buckets: prometheus.ExponentialBuckets(0.01, 4, 10), // 10ms to about 44min
	})
	for _, k := range []sqllock.EventKind{sqllock.EventAcquired, sqllock.EventContended,
		sqllock.EventFailed, sqllock.EventReleased, sqllock.EventLost} {
		events.WithLabelValues(k.String()) // export zeros from the start
	}
	// The Observer: it runs on the lock's goroutine, and Prometheus metrics
	// are fast, non-blocking and safe for concurrent use, as an Observer must be.
	observer := sqllock.ObserverFunc(func(e sqllock.Event) {
		events.WithLabelValues(e.Kind.String()).Inc()
		switch e.Kind {
		case sqllock.EventAcquired, sqllock.EventContended, sqllock.EventFailed:
			wait.Observe(e.Wait.Seconds())
		case sqllock.EventReleased, sqllock.EventLost:
			hold.Observe(e.Held.Seconds())
		}
	})
	reg := prometheus.NewRegistry() // in a server: prometheus.DefaultRegisterer, or your own
	reg.MustRegister(events, wait, hold)
	locker := sqllock.New(db, sqllock.WithObserver(observer))

	// Take and release a lock; try it once while it is held.
	ctx := context.Background()
	err = locker.Mutex("examples/metrics").WithLock(ctx, func(ctx context.Context) error {
		_, err := locker.Mutex("examples/metrics").TryLock(ctx)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	// What a scrape would see (in a server, serve reg with
	// promhttp.HandlerFor(reg, promhttp.HandlerOpts{}) on /metrics).
	families, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if c := m.GetCounter(); c != nil {
				fmt.Printf("%s{event=%q} %v\n", f.GetName(), m.GetLabel()[0].GetValue(), c.GetValue())
			}
			if h := m.GetHistogram(); h != nil {
				fmt.Printf("%s_count %d\n", f.GetName(), h.GetSampleCount())
			}
		}
	}
	// Output:
	// sqllock_events_total{event="acquired"} 1
	// sqllock_events_total{event="contended"} 1
	// sqllock_events_total{event="failed"} 0
	// sqllock_events_total{event="lost"} 0
	// sqllock_events_total{event="released"} 1
	// sqllock_hold_seconds_count 1
	// sqllock_wait_seconds_count 2
}

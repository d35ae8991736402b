package otelsqllock_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/advisorylock/go-advisory-lock/otelsqllock"
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

// sums prints the value of each sum metric in rm for the lock name
// attribute name, in metric name order.
func sums(rm metricdata.ResourceMetrics, name string) {
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				if got, ok := p.Attributes.Value(otelsqllock.AttrLockName); ok && got.AsString() == name {
					lines = append(lines, fmt.Sprintf("%s{%s} %d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value))
				}
			}
		}
	}
	slices.Sort(lines)
	fmt.Println(strings.Join(lines, "\n"))
}

func Example() {
	db := openDB()
	defer db.Close()

	// The SDK, set up as the service sets it up for everything else (here
	// with in-memory exporters, to print what they get).
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	obs, err := otelsqllock.New(otelsqllock.WithTracerProvider(tp), otelsqllock.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	locker := sqllock.New(db, sqllock.WithObserver(obs))

	// The lock's span is a child of the span in ctx, and the work done
	// under the lock (in WithLock's function) its child.
	tracer := tp.Tracer("billing")
	ctx, span := tracer.Start(context.Background(), "nightly billing")
	err = locker.Mutex("otelsqllock/nightly").WithLock(ctx, func(ctx context.Context) error {
		_, charge := tracer.Start(ctx, "charge customers")
		defer charge.End()
		return nil
	})
	span.End()
	if err != nil {
		log.Fatal(err)
	}

	names := map[string]string{}
	for _, s := range spans.GetSpans() {
		names[s.SpanContext.SpanID().String()] = s.Name
	}
	for _, s := range spans.GetSpans() {
		if s.Parent.IsValid() && s.Name != "sqllock.acquire" { // a wait of 1ms or more has a span too
			fmt.Printf("%s, child of %s\n", s.Name, names[s.Parent.SpanID().String()])
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	sums(rm, "otelsqllock/nightly")
	// Output:
	// charge customers, child of sqllock.hold
	// sqllock.hold, child of nightly billing
	// sqllock.lock.acquired{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 1
	// sqllock.lock.attempts{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 1
	// sqllock.lock.contended{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 0
	// sqllock.lock.failed{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 0
	// sqllock.lock.held{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 0
	// sqllock.lock.lost{sqllock.lock.mode=exclusive,sqllock.lock.name=otelsqllock/nightly} 0
}

func ExampleNew() {
	db := openDB()
	defer db.Close()

	// With no option, the Observer uses the global providers, which the
	// service sets with otel.SetTracerProvider and otel.SetMeterProvider.
	obs, err := otelsqllock.New()
	if err != nil {
		log.Fatal(err)
	}
	// One Observer serves every Locker of the process.
	locker := sqllock.New(db, sqllock.WithObserver(obs))
	_ = locker.Mutex("jobs/cleanup")
}

func ExampleWithMetricLockName() {
	db := openDB()
	defer db.Close()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// Locks named per tenant would make a time series per tenant: their
	// metrics carry the name "tenant/*" instead. Spans keep the full name.
	obs, err := otelsqllock.New(otelsqllock.WithMeterProvider(mp),
		otelsqllock.WithMetricLockName(func(name string) string {
			if strings.HasPrefix(name, "tenant/") {
				return "tenant/*"
			}
			return name
		}))
	if err != nil {
		log.Fatal(err)
	}
	locker := sqllock.New(db, sqllock.WithObserver(obs))
	for _, tenant := range []string{"tenant/17", "tenant/42"} {
		err := locker.Mutex(tenant).WithLock(context.Background(), func(ctx context.Context) error {
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	sums(rm, "tenant/*")
	// Output:
	// sqllock.lock.acquired{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 2
	// sqllock.lock.attempts{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 2
	// sqllock.lock.contended{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 0
	// sqllock.lock.failed{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 0
	// sqllock.lock.held{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 0
	// sqllock.lock.lost{sqllock.lock.mode=exclusive,sqllock.lock.name=tenant/*} 0
}

func ExampleWithTracerProvider() {
	// A tracer provider of the service's own, rather than the global one.
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	obs, err := otelsqllock.New(otelsqllock.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	_ = sqllock.WithObserver(obs)
}

func ExampleWithWaitSpan() {
	// Every wait a span of its own, however short: two spans per lock
	// rather than one (see Cost in the package documentation).
	obs, err := otelsqllock.New(otelsqllock.WithWaitSpan(0))
	if err != nil {
		log.Fatal(err)
	}
	_ = sqllock.WithObserver(obs)
}

func ExampleWithMeterProvider() {
	// A meter provider of the service's own, rather than the global one.
	mp := sdkmetric.NewMeterProvider()
	defer mp.Shutdown(context.Background())
	obs, err := otelsqllock.New(otelsqllock.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	_ = sqllock.WithObserver(obs)
}

package examples_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"strings"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/advisorylock/go-advisory-lock/otelsqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func Example_openTelemetry() {
	db, err := sql.Open("pgx", os.Getenv("PG_CONNECTION_STRING"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// The SDK as the service sets it up for everything else; in a service,
	// an OTLP exporter behind sdktrace.WithBatcher and a periodic reader.
	// In-memory ones here, to print what they get.
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// One Observer for every Locker. Each lock name on the metrics is a
	// time series: names made per tenant are mapped to one value.
	obs, err := otelsqllock.New(
		otelsqllock.WithTracerProvider(tp), // default: the global providers
		otelsqllock.WithMeterProvider(mp),
		otelsqllock.WithMetricLockName(func(name string) string {
			if strings.HasPrefix(name, "examples/tenant/") {
				return "examples/tenant/*"
			}
			return name
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	locker := sqllock.New(db, sqllock.WithObserver(obs))

	// The lock's span, sqllock.hold, is a child of the span in the context
	// given to WithLock (or Lock), and the parent of the work done in
	// WithLock's function. A wait of 1ms or more, and an attempt that
	// takes no lock, has a span sqllock.acquire too.
	tracer := tp.Tracer("billing")
	ctx, span := tracer.Start(context.Background(), "nightly billing")
	err = locker.Mutex("examples/tenant/42").WithLock(ctx, func(ctx context.Context) error {
		_, charge := tracer.Start(ctx, "charge")
		defer charge.End()
		_, err := locker.Mutex("examples/tenant/42").TryLock(ctx) // contended
		return err
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
		switch parent := names[s.Parent.SpanID().String()]; {
		case parent == "":
		case s.Name == "sqllock.acquire" && parent == "nightly billing":
			// WithLock's wait: a span only if it took 1ms or more
		default:
			fmt.Println(s.Name, "in", parent)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			fmt.Println(m.Name, d.DataPoints[0].Value)
		case metricdata.Histogram[float64]: // a data point per outcome, for waits
			var n uint64
			for _, p := range d.DataPoints {
				n += p.Count
			}
			fmt.Println(m.Name, "count", n)
		}
	}
	// Output:
	// sqllock.acquire in sqllock.hold
	// charge in sqllock.hold
	// sqllock.hold in nightly billing
	// sqllock.lock.attempts 2
	// sqllock.lock.acquired 1
	// sqllock.lock.contended 1
	// sqllock.lock.failed 0
	// sqllock.lock.lost 0
	// sqllock.lock.held 0
	// sqllock.lock.wait.duration count 2
	// sqllock.lock.hold.duration count 1
}

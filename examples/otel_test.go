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

	// The lock's spans, sqllock.acquire (the wait) and sqllock.hold, are
	// children of the span in the context given to WithLock (or Lock).
	ctx, span := tp.Tracer("billing").Start(context.Background(), "nightly billing")
	err = locker.Mutex("examples/tenant/42").WithLock(ctx, func(ctx context.Context) error {
		_, err := locker.Mutex("examples/tenant/42").TryLock(ctx) // contended
		return err
	})
	span.End()
	if err != nil {
		log.Fatal(err)
	}

	for _, s := range spans.GetSpans() {
		if s.Parent.SpanID() == span.SpanContext().SpanID() {
			fmt.Println(s.Name, "in nightly billing")
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
	// sqllock.acquire in nightly billing
	// sqllock.acquire in nightly billing
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

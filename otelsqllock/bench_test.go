package otelsqllock_test

import (
	"context"
	"flag"
	"syscall"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/otelsqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// The flags of internal/benchrun, which runs these as make bench runs
// sqllock's: go build -o /tmp/benchrun ./internal/benchrun, then, here,
// /tmp/benchrun -pkg . -bench Observer.
var (
	rounds   = flag.Int("rounds", 1, "benchmarks: measure each side this many times, each round starting one side later")
	refFirst = flag.Bool("reffirst", false, "benchmarks: start with observer=none")
)

// discard is an exporter of spans and metrics that drops them: the SDK
// does all its work (sampling, recording, batching, aggregating), then
// nothing leaves the process.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }
func (discard) ForceFlush(context.Context) error                           { return nil }
func (discard) Export(context.Context, *metricdata.ResourceMetrics) error  { return nil }
func (discard) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}
func (discard) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

// BenchmarkObserver measures what the Observer costs per uncontended
// Lock+Unlock, as a service runs it: the SDK's default sampler, a batch
// span processor and a periodic metric reader, both to exporters that
// discard. The sides, measured back to back on one connection, -rounds
// times, each round starting one side later: observer=none (no
// observer, sqllock's default); observer=metrics (the Observer with spans
// off: a no-op tracer provider); observer=sampled (every trace sampled:
// the caller's context has no span, so each lock's span is a sampled
// root); observer=unsampled (the caller's span is a remote parent that
// was not sampled, as most requests are under parent-based sampling).
// cpu-µs/op is the process's CPU time per cycle (the batch processor's
// goroutine included).
func BenchmarkObserver(b *testing.B) {
	for _, d := range pgtest.Drivers() {
		b.Run("driver="+d, func(b *testing.B) {
			db := pgtest.DB(b, d)
			db.SetMaxOpenConns(1)
			db.SetMaxIdleConns(1)
			ctx := context.Background()
			if err := db.PingContext(ctx); err != nil { // its one connection, dialled now
				b.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(discard{})))
			b.Cleanup(func() {
				_ = tp.Shutdown(ctx)
				_ = mp.Shutdown(ctx)
			})
			obs, err := otelsqllock.New(otelsqllock.WithTracerProvider(tp), otelsqllock.WithMeterProvider(mp))
			if err != nil {
				b.Fatal(err)
			}
			metricsOnly, err := otelsqllock.New(otelsqllock.WithTracerProvider(noop.NewTracerProvider()), otelsqllock.WithMeterProvider(mp))
			if err != nil {
				b.Fatal(err)
			}
			traced := sqllock.New(db, sqllock.WithObserver(obs))
			unsampled := trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, Remote: true}))
			sides := []struct {
				name string
				l    *sqllock.Locker
				ctx  context.Context
			}{
				{"observer=sampled", traced, ctx},
				{"observer=none", sqllock.New(db), ctx},
				{"observer=metrics", sqllock.New(db, sqllock.WithObserver(metricsOnly)), ctx},
				{"observer=unsampled", traced, unsampled},
			}
			first := 0
			if *refFirst {
				first = 1
			}
			for r := range max(*rounds, 1) {
				for i := range sides {
					s := sides[(first+i+r)%len(sides)]
					b.Run(s.name, func(b *testing.B) { lockUnlock(b, s.ctx, s.l.Mutex("otelsqllock/bench/"+d)) })
				}
			}
		})
	}
}

// lockUnlock locks and unlocks mu b.N times with ctx, reporting allocations and
// the process's CPU time per cycle.
func lockUnlock(b *testing.B, ctx context.Context, mu *sqllock.Mutex) {
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if err := mu.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		if err := mu.Unlock(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

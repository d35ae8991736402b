package otelsqllock_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/otelsqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// hookSetups are the configurations BenchmarkHooks measures: how the
// service's SDK is set up, and the caller's context.
var hookSetups = []struct {
	name   string
	tp     func() trace.TracerProvider // nil: spans off (a no-op provider)
	parent func(context.Context) context.Context
}{
	{name: "metrics"},
	{name: "sampled-batch", tp: func() trace.TracerProvider {
		return sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
	}},
	{name: "sampled-sync", tp: func() trace.TracerProvider {
		return sdktrace.NewTracerProvider(sdktrace.WithSyncer(discard{}))
	}},
	{name: "unsampled-parent", tp: func() trace.TracerProvider {
		return sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
	}, parent: func(ctx context.Context) context.Context {
		return trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, Remote: true}))
	}},
	{name: "ratio-0.01", tp: func() trace.TracerProvider {
		return sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01))))
	}},
}

// BenchmarkHooks measures the Observer's own work for one uncontended
// lock cycle, without a database: ObserveAttempt, the attempt's
// EventAcquired (a wait of 90µs, under WithWaitSpan's default), for
// form=withlock the context of WithLock's function (HoldContext), then
// EventReleased, as sqllock calls them. What sqllock itself does for an
// observer is sqllock's BenchmarkFakeObserver. cpu-ns/op counts the
// process's CPU (a batch span processor's goroutine included).
func BenchmarkHooks(b *testing.B) {
	for _, s := range hookSetups {
		for _, withLock := range []bool{false, true} {
			form := "form=lock"
			if withLock {
				form = "form=withlock"
			}
			b.Run(s.name+"/"+form, func(b *testing.B) { hooks(b, s.tp, s.parent, withLock) })
		}
	}
}

func hooks(b *testing.B, newTP func() trace.TracerProvider, parent func(context.Context) context.Context, withLock bool) {
	ctx := context.Background()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(discard{})))
	var tp trace.TracerProvider = noop.NewTracerProvider()
	if newTP != nil {
		tp = newTP()
	}
	defer func() {
		if sd, ok := tp.(interface{ Shutdown(context.Context) error }); ok {
			_ = sd.Shutdown(ctx)
		}
		_ = mp.Shutdown(ctx)
	}()
	obs, err := otelsqllock.New(otelsqllock.WithTracerProvider(tp), otelsqllock.WithMeterProvider(mp))
	if err != nil {
		b.Fatal(err)
	}
	if parent != nil {
		ctx = parent(ctx)
	}
	name := "otelsqllock/bench"
	a := sqllock.Attempt{Name: name, Key: keyspace.Int64(42)}
	acquired := sqllock.Event{Kind: sqllock.EventAcquired, Name: name, Key: a.Key, Wait: 90 * time.Microsecond}
	released := sqllock.Event{Kind: sqllock.EventReleased, Name: name, Key: a.Key, Held: 10 * time.Microsecond}
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		per := obs.ObserveAttempt(ctx, a)
		per.Observe(acquired)
		if h, ok := per.(sqllock.HoldObserver); ok && withLock {
			_ = h.HoldContext(ctx)
		}
		per.Observe(released)
	}
	b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// BenchmarkSDKSpan measures the SDK alone, for comparison with
// BenchmarkHooks: one span started and ended, a child of a sampled (or
// unsampled) remote parent, with no attribute or with the four a hold
// span has, through a batch or a synchronous processor to a discarding
// exporter. It is the floor of a recorded span's cost, whoever makes it.
func BenchmarkSDKSpan(b *testing.B) {
	parent := func(flags trace.TraceFlags) context.Context {
		return trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: flags, Remote: true}))
	}
	attrs := []attribute.KeyValue{
		otelsqllock.AttrLockName.String("otelsqllock/bench"),
		otelsqllock.AttrLockKey.String("int64(42)"),
		otelsqllock.AttrLockMode.String("exclusive"),
		otelsqllock.AttrLockWait.Float64(0.00009),
	}
	for _, c := range []struct {
		name  string
		proc  func() sdktrace.TracerProviderOption
		ctx   context.Context
		attrs []attribute.KeyValue
	}{
		{"batch/attrs=0", func() sdktrace.TracerProviderOption { return sdktrace.WithBatcher(discard{}) }, parent(trace.FlagsSampled), nil},
		{"batch/attrs=4", func() sdktrace.TracerProviderOption { return sdktrace.WithBatcher(discard{}) }, parent(trace.FlagsSampled), attrs},
		{"sync/attrs=0", func() sdktrace.TracerProviderOption { return sdktrace.WithSyncer(discard{}) }, parent(trace.FlagsSampled), nil},
		{"unsampled/attrs=0", func() sdktrace.TracerProviderOption { return sdktrace.WithBatcher(discard{}) }, parent(0), nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(c.proc())
			defer func() { _ = tp.Shutdown(context.Background()) }()
			tracer := tp.Tracer("bench")
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				_, span := tracer.Start(c.ctx, "sqllock.hold")
				if len(c.attrs) > 0 {
					span.SetAttributes(c.attrs...)
				}
				span.End()
			}
			b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

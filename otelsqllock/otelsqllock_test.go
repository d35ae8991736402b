package otelsqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "github.com/lib/pq"              // registers "postgres"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/otelsqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func TestMain(m *testing.M) {
	_ = pgtest.ExportEnv() // for the examples; tests report a missing server themselves
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		// A benchmark's pool of one connection is full while a lock is
		// held, which sqllock warns of once per Locker: keep the output
		// to results.
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	pgtest.Main(m)
}

// fastLoss makes a terminated session's loss show within tens of
// milliseconds.
var fastLoss = sqllock.WithKeepAlive(20*time.Millisecond, 2*time.Second)

// otelSetup is an Observer over the SDK with in-memory exporters: every
// span ended so far, and the metrics on demand.
type otelSetup struct {
	obs    *otelsqllock.Observer
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	tracer trace.Tracer // the caller's, for the parent spans
}

func newOtel(t *testing.T, opts ...otelsqllock.Option) *otelSetup {
	t.Helper()
	s := &otelSetup{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	obs, err := otelsqllock.New(append([]otelsqllock.Option{
		otelsqllock.WithTracerProvider(tp), otelsqllock.WithMeterProvider(mp)}, opts...)...)
	require.NoError(t, err)
	s.obs, s.tracer = obs, tp.Tracer("test")
	return s
}

// metrics collects the metrics now.
func (s *otelSetup) metrics(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, s.reader.Collect(t.Context(), &rm))
	return rm
}

// value returns metric name's value summed over the data points that
// carry every attribute of want: a sum's value, a histogram's count. ok
// is false if no data point matched.
func value(rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (v int64, ok bool) {
	matches := func(set attribute.Set) bool {
		for _, kv := range want {
			if got, has := set.Value(kv.Key); !has || got != kv.Value {
				return false
			}
		}
		return true
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						v, ok = v+p.Value, true
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						v, ok = v+int64(p.Count), true
					}
				}
			}
		}
	}
	return v, ok
}

// counts returns the value of each metric the package documents.
func counts(rm metricdata.ResourceMetrics, want ...attribute.KeyValue) map[string]int64 {
	m := map[string]int64{}
	for _, name := range []string{"sqllock.lock.attempts", "sqllock.lock.acquired", "sqllock.lock.contended",
		"sqllock.lock.failed", "sqllock.lock.lost", "sqllock.lock.held",
		"sqllock.lock.wait.duration", "sqllock.lock.hold.duration"} {
		m[name], _ = value(rm, name, want...)
	}
	return m
}

// spansNamed returns the ended spans called name, in the order they ended.
func spansNamed(s *otelSetup, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		if sp.Name() == name {
			out = append(out, sp)
		}
	}
	return out
}

func attr(sp sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range sp.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// eachDriver runs f as a parallel subtest on lib/pq and on pgx's stdlib.
func eachDriver(t *testing.T, f func(t *testing.T, db *sql.DB)) {
	for _, d := range pgtest.Drivers() {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			f(t, pgtest.DB(t, d))
		})
	}
}

// backendOf returns the pid of a backend holding k.
func backendOf(t *testing.T, db *sql.DB, k keyspace.Key) int64 {
	t.Helper()
	c, o, s := k.LockTag()
	var pid int64
	require.NoError(t, db.QueryRowContext(t.Context(), `
		SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1 AND objid = $2 AND objsubid = $3 LIMIT 1`, int64(c), int64(o), int64(s)).Scan(&pid))
	return pid
}

// waitingFor waits until a session waits in the server for k.
func waitingFor(t *testing.T, db *sql.DB, k keyspace.Key) {
	t.Helper()
	c, o, s := k.LockTag()
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, db.QueryRowContext(t.Context(), `
			SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = $1 AND objid = $2 AND objsubid = $3`, int64(c), int64(o), int64(s)).Scan(&n))
		return n > 0
	}, 10*time.Second, time.Millisecond)
}

// A lock taken, tried while held, waited for in vain and released, with
// every wait a span of its own (WithWaitSpan(0)): an acquire span for
// each attempt and a hold span for the lock, all children of the caller's
// span, and the metrics of each outcome; the held gauge is 1 while the
// lock is held and 0 after Unlock.
func TestSpansAndMetrics(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		o := newOtel(t, otelsqllock.WithWaitSpan(0))
		l := sqllock.New(db, sqllock.WithObserver(o.obs))
		name := "otelsqllock/" + t.Name()
		a, b := l.Mutex(name), l.Mutex(name)
		ctx, request := o.tracer.Start(t.Context(), "request")

		require.NoError(t, a.Lock(ctx))
		held, _ := value(o.metrics(t), "sqllock.lock.held")
		assert.Equal(t, int64(1), held, "held while held")
		ok, err := b.TryLock(ctx)
		require.NoError(t, err)
		require.False(t, ok)
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		require.ErrorIs(t, b.Lock(wctx), context.DeadlineExceeded)
		cancel()
		require.NoError(t, a.Unlock(t.Context()))
		request.End()

		acquires := spansNamed(o, "sqllock.acquire")
		holds := spansNamed(o, "sqllock.hold")
		require.Len(t, acquires, 3)
		require.Len(t, holds, 1)
		for _, sp := range append(acquires, holds...) {
			assert.Equal(t, request.SpanContext().TraceID(), sp.SpanContext().TraceID(), "%s: in the caller's trace", sp.Name())
			assert.Equal(t, request.SpanContext().SpanID(), sp.Parent().SpanID(), "%s: a child of the caller's span", sp.Name())
			assert.Equal(t, name, attr(sp, otelsqllock.AttrLockName).AsString())
			assert.Equal(t, a.Key().String(), attr(sp, otelsqllock.AttrLockKey).AsString())
			assert.Equal(t, "exclusive", attr(sp, otelsqllock.AttrLockMode).AsString())
		}
		for i, want := range []struct {
			outcome string
			try     bool
			status  codes.Code
		}{{"acquired", false, codes.Unset}, {"contended", true, codes.Unset}, {"failed", false, codes.Error}} {
			sp := acquires[i]
			assert.Equal(t, want.outcome, attr(sp, otelsqllock.AttrLockOutcome).AsString(), "attempt %d", i)
			assert.Equal(t, want.try, attr(sp, otelsqllock.AttrLockTry).AsBool(), "attempt %d", i)
			assert.Equal(t, want.status, sp.Status().Code, "attempt %d", i)
		}
		require.NotEmpty(t, acquires[2].Events(), "the failed attempt records its error")
		assert.Equal(t, "exception", acquires[2].Events()[0].Name)
		assert.Contains(t, acquires[2].Status().Description, "deadline exceeded")
		hold := holds[0]
		assert.Equal(t, codes.Unset, hold.Status().Code)
		assert.Equal(t, acquires[0].EndTime(), hold.StartTime(), "the hold starts at the grant, where the wait ends")
		assert.Equal(t, acquires[0].EndTime().Sub(acquires[0].StartTime()).Seconds(), attr(hold, otelsqllock.AttrLockWait).AsFloat64(),
			"the hold span tells the wait")
		assert.False(t, hold.EndTime().Before(acquires[2].EndTime()), "the hold outlasts the attempts made meanwhile")

		rm := o.metrics(t)
		assert.Equal(t, map[string]int64{
			"sqllock.lock.attempts": 3, "sqllock.lock.acquired": 1, "sqllock.lock.contended": 1,
			"sqllock.lock.failed": 1, "sqllock.lock.lost": 0, "sqllock.lock.held": 0,
			"sqllock.lock.wait.duration": 3, "sqllock.lock.hold.duration": 1,
		}, counts(rm, otelsqllock.AttrLockName.String(name), otelsqllock.AttrLockMode.String("exclusive")))
		for _, oc := range []string{"acquired", "contended", "failed"} {
			n, _ := value(rm, "sqllock.lock.wait.duration", otelsqllock.AttrLockOutcome.String(oc))
			assert.Equal(t, int64(1), n, "waits that ended %s", oc)
		}
		_, keyed := value(rm, "sqllock.lock.attempts", otelsqllock.AttrLockKey.String(a.Key().String()))
		assert.False(t, keyed, "the key is no metric attribute")
	})
}

// By default a lock taken at once makes one span, sqllock.hold, which
// tells the wait in an attribute; a wait of 1ms or more (here: until the
// holder lets go) has its own span too, which ends where the hold span
// starts. Attempts that take no lock have their span whatever they
// waited.
func TestWaitSpan(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		o := newOtel(t)
		l := sqllock.New(db, sqllock.WithObserver(o.obs))
		// A lock that takes less than the threshold, whatever the load.
		quick := newOtel(t, otelsqllock.WithWaitSpan(time.Hour))
		lq := sqllock.New(db, sqllock.WithObserver(quick.obs))
		name := "otelsqllock/" + t.Name()
		a, b := l.Mutex(name), l.Mutex(name)
		ctx, request := o.tracer.Start(t.Context(), "request")
		defer request.End()

		mu := lq.Mutex(name)
		require.NoError(t, mu.Lock(ctx))
		require.NoError(t, mu.Unlock(ctx))
		ok, err := mu.TryLock(ctx)
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, mu.Unlock(ctx))
		assert.Len(t, spansNamed(quick, "sqllock.hold"), 2)
		assert.Empty(t, spansNamed(quick, "sqllock.acquire"), "a lock taken at once: its hold span alone")
		for _, sp := range spansNamed(quick, "sqllock.hold") {
			assert.Positive(t, attr(sp, otelsqllock.AttrLockWait).AsFloat64(), "the wait, as an attribute")
		}

		require.NoError(t, a.Lock(ctx))
		ok, err = b.TryLock(ctx)
		require.NoError(t, err)
		require.False(t, ok)
		waited := make(chan error)
		go func() { waited <- b.Lock(ctx) }()
		waitingFor(t, db, a.Key())
		time.Sleep(5 * time.Millisecond)
		require.NoError(t, a.Unlock(ctx))
		require.NoError(t, <-waited)
		require.NoError(t, b.Unlock(ctx))

		acquires := spansNamed(o, "sqllock.acquire")
		require.GreaterOrEqual(t, len(acquires), 2, "the contended try's and the wait's")
		require.LessOrEqual(t, len(acquires), 3, "and the first lock's, if it took 1ms under load")
		try, wait := acquires[len(acquires)-2], acquires[len(acquires)-1]
		assert.Equal(t, "contended", attr(try, otelsqllock.AttrLockOutcome).AsString())
		assert.Equal(t, "acquired", attr(wait, otelsqllock.AttrLockOutcome).AsString())
		assert.GreaterOrEqual(t, wait.EndTime().Sub(wait.StartTime()), 5*time.Millisecond)
		holds := spansNamed(o, "sqllock.hold")
		require.Len(t, holds, 2)
		assert.Equal(t, wait.EndTime(), holds[1].StartTime(), "the wait ends where the hold starts")
		assert.Equal(t, request.SpanContext().SpanID(), wait.Parent().SpanID())
		assert.Equal(t, request.SpanContext().SpanID(), holds[1].Parent().SpanID())
	})
}

// The work WithLock runs is done under the hold span: a span fn starts
// is a child of sqllock.hold, which is a child of the caller's span, in
// every form of WithLock. fn's context still carries the caller's values
// and is still cancelled at a loss.
func TestHoldContext(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		o := newOtel(t)
		l := sqllock.New(db, fastLoss, sqllock.WithObserver(o.obs))
		mu := l.Mutex("otelsqllock/" + t.Name())
		type key struct{}
		forms := []struct {
			name string
			run  func(ctx context.Context, fn func(context.Context) error) error
		}{
			{"WithLock", func(ctx context.Context, fn func(context.Context) error) error { return mu.WithLock(ctx, fn) }},
			{"WithLockShared", func(ctx context.Context, fn func(context.Context) error) error { return mu.WithLockShared(ctx, fn) }},
			{"WithLock MaxWait", func(ctx context.Context, fn func(context.Context) error) error {
				return mu.WithLock(ctx, fn, sqllock.MaxWait(time.Minute))
			}},
			{"TryWithLock", func(ctx context.Context, fn func(context.Context) error) error {
				ok, err := mu.TryWithLock(ctx, fn)
				assert.True(t, ok)
				return err
			}},
			{"TryWithLockShared", func(ctx context.Context, fn func(context.Context) error) error {
				ok, err := mu.TryWithLockShared(ctx, fn)
				assert.True(t, ok)
				return err
			}},
		}
		for _, f := range forms {
			ctx, request := o.tracer.Start(context.WithValue(t.Context(), key{}, "v"), "request "+f.name)
			var inHold trace.SpanContext
			require.NoError(t, f.run(ctx, func(ctx context.Context) error {
				assert.Equal(t, "v", ctx.Value(key{}), f.name)
				inHold = trace.SpanContextFromContext(ctx)
				_, work := o.tracer.Start(ctx, "work "+f.name)
				work.End()
				return nil
			}), f.name)
			request.End()
			works := spansNamed(o, "work "+f.name)
			require.Len(t, works, 1, f.name)
			holds := spansNamed(o, "sqllock.hold")
			hold := holds[len(holds)-1]
			assert.Equal(t, hold.SpanContext(), inHold, "%s: fn's context carries the hold span", f.name)
			assert.Equal(t, hold.SpanContext().SpanID(), works[0].Parent().SpanID(), "%s: fn's span is the hold span's child", f.name)
			assert.Equal(t, request.SpanContext().SpanID(), hold.Parent().SpanID(), "%s: the hold span is the caller's child", f.name)
		}

		// A semaphore's slot too.
		sem := l.Semaphore("otelsqllock/"+t.Name()+"/sem", 2)
		ctx, request := o.tracer.Start(t.Context(), "request WithSlot")
		require.NoError(t, sem.WithSlot(ctx, func(ctx context.Context) error {
			_, work := o.tracer.Start(ctx, "work WithSlot")
			work.End()
			return nil
		}))
		request.End()
		holds := spansNamed(o, "sqllock.hold")
		hold := holds[len(holds)-1]
		works := spansNamed(o, "work WithSlot")
		require.Len(t, works, 1)
		assert.Equal(t, hold.SpanContext().SpanID(), works[0].Parent().SpanID(), "WithSlot: fn's span is the hold span's child")
		assert.Equal(t, request.SpanContext().SpanID(), hold.Parent().SpanID())
		assert.Equal(t, sem.Name(), attr(hold, otelsqllock.AttrLockName).AsString())

		// A loss still ends fn's context.
		err := mu.WithLock(t.Context(), func(ctx context.Context) error {
			var ok bool
			require.NoError(t, db.QueryRowContext(t.Context(), "SELECT pg_terminate_backend($1)", backendOf(t, db, mu.Key())).Scan(&ok))
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(10 * time.Second):
				return errors.New("the loss was not seen")
			}
		})
		require.ErrorIs(t, err, sqllock.ErrLockLost)
	})
}

// With spans off (a no-op tracer provider) the Observer records the
// metrics and leaves fn's context as it was: fn's spans are the caller's
// children. Where the caller's trace is not sampled, nothing is recorded,
// and fn's context carries the unsampled hold span.
func TestHoldContextNoSpans(t *testing.T) {
	db := pgtest.DB(t, "pgx")
	o := newOtel(t)
	metricsOnly, err := otelsqllock.New(otelsqllock.WithTracerProvider(noop.NewTracerProvider()),
		otelsqllock.WithMeterProvider(sdkmetric.NewMeterProvider()))
	require.NoError(t, err)
	mu := sqllock.New(db, sqllock.WithObserver(metricsOnly)).Mutex("otelsqllock/" + t.Name())
	ctx, request := o.tracer.Start(t.Context(), "request")
	require.NoError(t, mu.WithLock(ctx, func(ctx context.Context) error {
		assert.Equal(t, request.SpanContext(), trace.SpanContextFromContext(ctx), "the caller's span")
		return nil
	}))
	request.End()

	unsampled := trace.ContextWithRemoteSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, Remote: true}))
	before := len(o.spans.Ended())
	mu = sqllock.New(db, sqllock.WithObserver(o.obs)).Mutex("otelsqllock/" + t.Name())
	require.NoError(t, mu.WithLock(unsampled, func(ctx context.Context) error {
		sc := trace.SpanContextFromContext(ctx)
		assert.Equal(t, trace.TraceID{1}, sc.TraceID(), "in the caller's trace")
		assert.False(t, sc.IsSampled())
		return nil
	}))
	assert.Len(t, o.spans.Ended(), before, "nothing recorded")
	assert.Equal(t, int64(1), counts(o.metrics(t))["sqllock.lock.acquired"], "the metrics still are")
}

// A lock whose session the server ends (pg_terminate_backend) is counted
// lost, no longer held, and its hold span says so.
func TestLost(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		o := newOtel(t)
		l := sqllock.New(db, fastLoss, sqllock.WithObserver(o.obs))
		mu := l.Mutex("otelsqllock/" + t.Name())
		ctx, request := o.tracer.Start(t.Context(), "request")
		defer request.End()

		require.NoError(t, mu.Lock(ctx))
		var ok bool
		require.NoError(t, db.QueryRowContext(t.Context(), "SELECT pg_terminate_backend($1)", backendOf(t, db, mu.Key())).Scan(&ok))
		require.True(t, ok)
		select {
		case <-mu.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the loss was not seen")
		}

		holds := spansNamed(o, "sqllock.hold")
		require.Len(t, holds, 1, "the hold span ends at the loss")
		hold := holds[0]
		assert.Equal(t, request.SpanContext().SpanID(), hold.Parent().SpanID())
		assert.Equal(t, codes.Error, hold.Status().Code)
		require.Len(t, hold.Events(), 1)
		ev := hold.Events()[0]
		assert.Equal(t, "sqllock.lock.lost", ev.Name)
		assert.Contains(t, ev.Attributes, otelsqllock.AttrSessionLocks.Int(1))
		rm := o.metrics(t)
		c := counts(rm)
		assert.Equal(t, int64(1), c["sqllock.lock.lost"])
		assert.Equal(t, int64(0), c["sqllock.lock.held"])
		assert.Equal(t, int64(1), c["sqllock.lock.hold.duration"])

		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
		assert.Len(t, spansNamed(o, "sqllock.hold"), 1, "Unlock after the loss ends nothing more")
		assert.Equal(t, int64(0), counts(o.metrics(t))["sqllock.lock.held"])
	})
}

// WithMetricLockName maps names on metrics (here: per-tenant names to
// their prefix, or to nothing); spans keep the full name. Shared locks
// say so.
func TestMetricLockName(t *testing.T) {
	db := pgtest.DB(t, "pgx")
	o := newOtel(t, otelsqllock.WithMetricLockName(func(name string) string {
		if strings.HasPrefix(name, "tenant/") {
			return "tenant/*"
		}
		return ""
	}))
	l := sqllock.New(db, sqllock.WithObserver(o.obs))
	for _, name := range []string{"tenant/1", "tenant/2", "other"} {
		mu := l.Mutex(name + "/" + t.Name())
		require.NoError(t, mu.WithLockShared(t.Context(), func(context.Context) error { return nil }))
	}
	rm := o.metrics(t)
	n, _ := value(rm, "sqllock.lock.acquired", otelsqllock.AttrLockName.String("tenant/*"), otelsqllock.AttrLockMode.String("shared"))
	assert.Equal(t, int64(2), n, "both tenants' locks under one value")
	all, _ := value(rm, "sqllock.lock.acquired")
	assert.Equal(t, int64(3), all)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sqllock.lock.acquired" {
				continue
			}
			assert.Len(t, m.Data.(metricdata.Sum[int64]).DataPoints, 2, "one series for the tenants, one without a name")
		}
	}
	for _, sp := range spansNamed(o, "sqllock.hold") {
		assert.Contains(t, attr(sp, otelsqllock.AttrLockName).AsString(), t.Name(), "spans keep the full name")
		assert.Equal(t, "shared", attr(sp, otelsqllock.AttrLockMode).AsString())
	}
}

// An Observer used as a plain sqllock.Observer (inside another) records
// the metrics, and no spans.
func TestPlainObserver(t *testing.T) {
	db := pgtest.DB(t, "pgx")
	o := newOtel(t)
	l := sqllock.New(db, sqllock.WithObserver(sqllock.ObserverFunc(o.obs.Observe)))
	mu := l.Mutex("otelsqllock/" + t.Name())
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
	c := counts(o.metrics(t))
	assert.Equal(t, int64(1), c["sqllock.lock.attempts"])
	assert.Equal(t, int64(1), c["sqllock.lock.acquired"])
	assert.Equal(t, int64(0), c["sqllock.lock.held"])
	assert.Empty(t, o.spans.Ended())
}

// The key on spans reads as keyspace.Key.String prints it.
func TestKeyString(t *testing.T) {
	for _, k := range []keyspace.Key{keyspace.Int64(-42), keyspace.Int64(1 << 62), keyspace.Pair(-7, 2147483647), {}} {
		assert.Equal(t, k.String(), otelsqllock.KeyString(k))
	}
}

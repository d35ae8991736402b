package otelsqllock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// ScopeName is the instrumentation scope of the tracer and meter an
// Observer uses.
const ScopeName = "github.com/advisorylock/go-advisory-lock/otelsqllock"

// Attribute keys of the spans and metrics (see the package documentation).
const (
	AttrLockName     = attribute.Key("sqllock.lock.name")
	AttrLockKey      = attribute.Key("sqllock.lock.key")
	AttrLockMode     = attribute.Key("sqllock.lock.mode")
	AttrLockTry      = attribute.Key("sqllock.lock.try")
	AttrLockOutcome  = attribute.Key("sqllock.lock.outcome")
	AttrLockWait     = attribute.Key("sqllock.lock.wait")
	AttrSessionLocks = attribute.Key("sqllock.session.locks")
)

// Bucket boundaries of the duration histograms, in seconds: a wait from
// an uncontended lock's round trip (100µs) to minutes behind a long job;
// a hold from a short critical section to a leader's day.
var (
	waitBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	holdBuckets = []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}
)

// An Option configures an [Observer].
type Option func(*config)

type config struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	nameAttr func(string) string
	waitSpan time.Duration
}

// DefaultWaitSpan is the shortest wait of an acquired lock that gets a
// span sqllock.acquire of its own unless [WithWaitSpan] says otherwise.
const DefaultWaitSpan = time.Millisecond

// WithTracerProvider makes the Observer's spans with tp instead of the
// global provider (otel.GetTracerProvider). A no-op provider
// (noop.NewTracerProvider()) turns spans off: the Observer records the
// metrics alone, and does no span work at all. A nil tp is ignored.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tp = tp
		}
	}
}

// WithMeterProvider makes the Observer's metrics with mp instead of the
// global provider (otel.GetMeterProvider). A nil mp is ignored.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.mp = mp
		}
	}
}

// WithMetricLockName sets the value of the sqllock.lock.name attribute of
// a lock's metrics: f(name), or no such attribute where f returns "". By
// default it is the lock's name. Map names made per tenant, job or row to
// a few values, or each makes a time series of its own (see
// Cardinality in the package documentation). f is called once per
// attempt, on the lock's goroutine, and must be fast and safe for
// concurrent use. Spans keep the full name. A nil f is ignored.
func WithMetricLockName(f func(name string) string) Option {
	return func(c *config) {
		if f != nil {
			c.nameAttr = f
		}
	}
}

// WithWaitSpan sets how long the wait of an acquired lock must last to
// get a span sqllock.acquire of its own, beside the hold span:
// [DefaultWaitSpan] (1ms), longer than a round trip to a server nearby
// takes, so that a lock taken at once makes one span and a lock waited
// for makes two, whose cost is then a small part of the wait. A shorter
// wait is the hold span's attribute sqllock.lock.wait only. 0 gives every
// wait its span, at the cost of a second span per lock. An attempt that
// takes no lock (a try that found it held, a failure) always has its
// span. A negative d is ignored.
func WithWaitSpan(d time.Duration) Option {
	return func(c *config) {
		if d >= 0 {
			c.waitSpan = d
		}
	}
}

// An Observer records the locks of the Lockers it is given to (with
// [sqllock.WithObserver]) as spans and metrics. It is an
// [sqllock.AttemptObserver], and safe for concurrent use: one Observer
// can serve every Locker of a process.
type Observer struct {
	tracer   trace.Tracer // nil: no spans (a no-op tracer provider)
	nameAttr func(string) string
	waitSpan time.Duration

	counters [numCounts]metric.Int64Observable // read from each labels' counts at collection
	wait     metric.Float64Histogram
	hold     metric.Float64Histogram

	labels sync.Map // labelKey → *labels: one per metric name value and mode
}

// labelKey is what a lock's metric attributes depend on.
type labelKey struct {
	name   string // the sqllock.lock.name value; "" for none
	shared bool
}

// labels are one labelKey's counts and measurement options, made once,
// each option in a slice of its own: so that recording a measurement
// allocates neither an attribute set nor an option slice.
type labels struct {
	o       *Observer
	counts  [numCounts]atomic.Int64
	observe []metric.ObserveOption
	hold    []metric.RecordOption
	wait    [3][]metric.RecordOption // by outcome: acquired, contended, failed
}

// The counts of a labels, which the counters and the up-down counter
// report when the metrics are collected: a lock event costs an atomic add
// for them, where a synchronous instrument's Add costs more than a
// microsecond of the SDK's attribute handling (BenchmarkObserver).
const (
	countAttempts = iota
	countAcquired
	countContended
	countFailed
	countLost
	countHeld
	numCounts
)

const (
	outcomeAcquired = iota
	outcomeContended
	outcomeFailed
)

var outcomes = [...]string{outcomeAcquired: "acquired", outcomeContended: "contended", outcomeFailed: "failed"}

// New returns an Observer that uses the global tracer and meter providers
// unless options say otherwise. It fails only if the meter provider
// refuses an instrument; the Observer it then returns records what it
// can.
func New(opts ...Option) (*Observer, error) {
	c := config{nameAttr: func(name string) string { return name }, waitSpan: DefaultWaitSpan}
	for _, opt := range opts {
		if opt != nil {
			opt(&c)
		}
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	meter := c.mp.Meter(ScopeName)
	o := &Observer{nameAttr: c.nameAttr, waitSpan: c.waitSpan}
	if _, off := c.tp.(noop.TracerProvider); !off {
		o.tracer = c.tp.Tracer(ScopeName)
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Observable {
		ins, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return ins
	}
	o.counters[countAttempts] = counter("sqllock.lock.attempts", "{attempt}", "Attempts to take a lock.")
	o.counters[countAcquired] = counter("sqllock.lock.acquired", "{lock}", "Locks granted.")
	o.counters[countContended] = counter("sqllock.lock.contended", "{attempt}", "Tries that found the lock held elsewhere.")
	o.counters[countFailed] = counter("sqllock.lock.failed", "{attempt}", "Attempts that ended in an error.")
	o.counters[countLost] = counter("sqllock.lock.lost", "{lock}", "Held locks lost, their session ended.")
	var err error
	o.counters[countHeld], err = meter.Int64ObservableUpDownCounter("sqllock.lock.held", metric.WithUnit("{lock}"),
		metric.WithDescription("Locks held."))
	errs = append(errs, err)
	var observables []metric.Observable
	for _, ins := range o.counters {
		if ins != nil {
			observables = append(observables, ins)
		}
	}
	_, err = meter.RegisterCallback(o.collect, observables...)
	errs = append(errs, err)
	o.wait, err = meter.Float64Histogram("sqllock.lock.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a lock call to its outcome."), metric.WithExplicitBucketBoundaries(waitBuckets...))
	errs = append(errs, err)
	o.hold, err = meter.Float64Histogram("sqllock.lock.hold.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a lock was held, until released or lost."), metric.WithExplicitBucketBoundaries(holdBuckets...))
	errs = append(errs, err)
	return o, errors.Join(errs...)
}

// labelsFor returns the measurement options of a lock called name.
func (o *Observer) labelsFor(name string, shared bool) *labels {
	k := labelKey{name: o.nameAttr(name), shared: shared}
	if l, ok := o.labels.Load(k); ok {
		return l.(*labels)
	}
	attrs := make([]attribute.KeyValue, 0, 3)
	attrs = append(attrs, AttrLockMode.String(mode(shared)))
	if k.name != "" {
		attrs = append(attrs, AttrLockName.String(k.name))
	}
	base := metric.WithAttributeSet(attribute.NewSet(attrs...))
	l := &labels{o: o, observe: []metric.ObserveOption{base}, hold: []metric.RecordOption{base}}
	for i, oc := range outcomes {
		l.wait[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(attrs, AttrLockOutcome.String(oc))...))}
	}
	v, _ := o.labels.LoadOrStore(k, l)
	return v.(*labels)
}

// collect reports the counts of every labels.
func (o *Observer) collect(_ context.Context, obs metric.Observer) error {
	o.labels.Range(func(_, v any) bool {
		l := v.(*labels)
		for i, ins := range o.counters {
			if ins != nil {
				obs.ObserveInt64(ins, l.counts[i].Load(), l.observe...)
			}
		}
		return true
	})
	return nil
}

// keyString is k.String() in one allocation, not three.
func keyString(k keyspace.Key) string {
	var buf [48]byte
	b := buf[:0]
	if x, y, ok := k.Pair(); ok {
		b = strconv.AppendInt(append(b, "pair("...), int64(x), 10)
		b = strconv.AppendInt(append(b, ','), int64(y), 10)
	} else if n, ok := k.Int64(); ok {
		b = strconv.AppendInt(append(b, "int64("...), n, 10)
	} else {
		return k.String()
	}
	return string(append(b, ')'))
}

func mode(shared bool) string {
	if shared {
		return "shared"
	}
	return "exclusive"
}

// ObserveAttempt counts the attempt and returns the observer of its
// outcome and hold, which makes its spans, children of ctx's span, and
// records its metrics. sqllock calls it (see [sqllock.AttemptObserver]).
func (o *Observer) ObserveAttempt(ctx context.Context, a sqllock.Attempt) sqllock.Observer {
	l := o.labelsFor(a.Name, a.Shared)
	l.counts[countAttempts].Add(1)
	if o.tracer == nil {
		return l // the metrics alone: nothing of the attempt's own to keep
	}
	return &attempt{l: l, caller: ctx, try: a.Try}
}

// Observe records the metrics of e: sqllock sends it the events of
// attempts that made no attempt observer, which an Observer always makes,
// so it is called only by an Observer used as a plain [sqllock.Observer]
// (within another one, say). It makes no span.
func (o *Observer) Observe(e sqllock.Event) {
	l := o.labelsFor(e.Name, e.Shared)
	if e.Kind == sqllock.EventAcquired || e.Kind == sqllock.EventContended || e.Kind == sqllock.EventFailed {
		l.counts[countAttempts].Add(1)
	}
	l.Observe(e)
}

// Observe records the metrics of e, an event of a lock of l's: l is the
// attempt observer of an Observer without spans.
func (l *labels) Observe(e sqllock.Event) {
	ctx := context.Background()
	switch e.Kind {
	case sqllock.EventAcquired:
		l.counts[countAcquired].Add(1)
		l.counts[countHeld].Add(1)
		l.o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeAcquired]...)
	case sqllock.EventContended:
		l.counts[countContended].Add(1)
		l.o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeContended]...)
	case sqllock.EventFailed:
		l.counts[countFailed].Add(1)
		l.o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeFailed]...)
	case sqllock.EventReleased, sqllock.EventLost:
		if e.Kind == sqllock.EventLost {
			l.counts[countLost].Add(1)
		}
		l.counts[countHeld].Add(-1)
		l.o.hold.Record(ctx, e.Held.Seconds(), l.hold...)
	}
}

// attempt observes one lock attempt of an Observer with spans: its
// outcome, then its hold. sqllock sends it one event at a time, and asks
// for WithLock's context after the outcome (HoldContext).
type attempt struct {
	l      *labels
	caller context.Context // the caller's, until the outcome
	try    bool
	hold   trace.Span // from the grant to the end; set at the grant, then only read
}

// Observe records the metrics of e and the spans: at the outcome, the
// hold span of a lock acquired, and the acquire span of an attempt that
// took no lock or waited at least the Observer's waitSpan; at the hold's
// end, the hold span's end.
func (a *attempt) Observe(e sqllock.Event) {
	a.l.Observe(e)
	o := a.l.o
	switch e.Kind {
	case sqllock.EventAcquired:
		var at time.Time // the grant, as both spans show it, if there are two
		if e.Wait >= o.waitSpan {
			at = time.Now()
			a.acquireSpan(e, outcomeAcquired, at)
		}
		a.hold = a.holdSpan(e, at)
		a.caller = nil // a hold may be long: keep nothing of the caller's
	case sqllock.EventContended:
		a.acquireSpan(e, outcomeContended, time.Now())
		a.caller = nil
	case sqllock.EventFailed:
		a.acquireSpan(e, outcomeFailed, time.Now())
		a.caller = nil
	case sqllock.EventReleased, sqllock.EventLost:
		if a.hold == nil || !a.hold.IsRecording() {
			return
		}
		if e.Kind == sqllock.EventLost {
			a.hold.AddEvent("sqllock.lock.lost", trace.WithAttributes(
				attribute.String("exception.message", e.Err.Error()),
				AttrSessionLocks.Int(e.SessionLocks),
			))
		}
		if e.Err != nil {
			a.hold.SetStatus(codes.Error, e.Err.Error())
		}
		a.hold.End()
	}
}

// HoldContext returns ctx with the hold span: the context of WithLock's
// function, whose spans are then the hold span's children. sqllock calls
// it (see [sqllock.HoldObserver]).
func (a *attempt) HoldContext(ctx context.Context) context.Context {
	if a.hold == nil {
		return ctx
	}
	return trace.ContextWithSpan(ctx, a.hold)
}

// holdSpan starts the hold span of the lock acquired in e, at the grant
// (at, or now if zero). Its attributes are set once it is known to record:
// an unsampled span costs then no attribute work (a sampler sees the
// span's name and parent, not them).
func (a *attempt) holdSpan(e sqllock.Event, at time.Time) trace.Span {
	var span trace.Span
	// A sibling of the acquire span, if any: a child of the caller's.
	if at.IsZero() {
		_, span = a.l.o.tracer.Start(a.caller, "sqllock.hold")
	} else {
		_, span = a.l.o.tracer.Start(a.caller, "sqllock.hold", trace.WithTimestamp(at))
	}
	if span.IsRecording() {
		span.SetAttributes(
			AttrLockName.String(e.Name),
			AttrLockKey.String(keyString(e.Key)),
			AttrLockMode.String(mode(e.Shared)),
			AttrLockWait.Float64(e.Wait.Seconds()),
		)
	}
	return span
}

// acquireSpan makes the span of the attempt's wait, which ended at end
// with outcome.
func (a *attempt) acquireSpan(e sqllock.Event, outcome int, end time.Time) {
	_, span := a.l.o.tracer.Start(a.caller, "sqllock.acquire", trace.WithTimestamp(end.Add(-e.Wait)))
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(
		AttrLockName.String(e.Name),
		AttrLockKey.String(keyString(e.Key)),
		AttrLockMode.String(mode(e.Shared)),
		AttrLockTry.Bool(a.try),
		AttrLockOutcome.String(outcomes[outcome]),
	)
	if outcome == outcomeFailed {
		span.RecordError(e.Err)
		span.SetStatus(codes.Error, e.Err.Error())
	}
	span.End(trace.WithTimestamp(end))
}

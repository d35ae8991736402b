package otelsqllock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

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
}

// WithTracerProvider makes the Observer's spans with tp instead of the
// global provider (otel.GetTracerProvider). A nil tp is ignored.
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

// An Observer records the locks of the Lockers it is given to (with
// [sqllock.WithObserver]) as spans and metrics. It is an
// [sqllock.AttemptObserver], and safe for concurrent use: one Observer
// can serve every Locker of a process.
type Observer struct {
	tracer   trace.Tracer
	nameAttr func(string) string

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
	c := config{nameAttr: func(name string) string { return name }}
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
	o := &Observer{tracer: c.tp.Tracer(ScopeName), nameAttr: c.nameAttr}
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
	l := &labels{observe: []metric.ObserveOption{base}, hold: []metric.RecordOption{base}}
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

// ObserveAttempt starts the attempt's span, a child of ctx's span, counts
// the attempt, and returns the observer of its outcome and hold. sqllock
// calls it (see [sqllock.AttemptObserver]).
func (o *Observer) ObserveAttempt(ctx context.Context, a sqllock.Attempt) sqllock.Observer {
	l := o.labelsFor(a.Name, a.Shared)
	l.counts[countAttempts].Add(1)
	key := keyString(a.Key)
	actx, span := o.tracer.Start(ctx, "sqllock.acquire", trace.WithAttributes(
		AttrLockName.String(a.Name),
		AttrLockKey.String(key),
		AttrLockMode.String(mode(a.Shared)),
		AttrLockTry.Bool(a.Try),
	))
	return &attempt{o: o, caller: ctx, ctx: actx, labels: l, key: key, acquire: span}
}

// Observe records the metrics of e: sqllock sends it the events of
// attempts that made no attempt observer, which an Observer always makes,
// so it is called only by an Observer used as a plain [sqllock.Observer]
// (within another one, say). It makes no span.
func (o *Observer) Observe(e sqllock.Event) {
	ctx := context.Background()
	l := o.labelsFor(e.Name, e.Shared)
	if e.Kind == sqllock.EventAcquired || e.Kind == sqllock.EventContended || e.Kind == sqllock.EventFailed {
		l.counts[countAttempts].Add(1)
	}
	o.record(ctx, l, e)
}

// record records the metrics of e, on the lock of labels l.
func (o *Observer) record(ctx context.Context, l *labels, e sqllock.Event) {
	switch e.Kind {
	case sqllock.EventAcquired:
		l.counts[countAcquired].Add(1)
		l.counts[countHeld].Add(1)
		o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeAcquired]...)
	case sqllock.EventContended:
		l.counts[countContended].Add(1)
		o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeContended]...)
	case sqllock.EventFailed:
		l.counts[countFailed].Add(1)
		o.wait.Record(ctx, e.Wait.Seconds(), l.wait[outcomeFailed]...)
	case sqllock.EventReleased, sqllock.EventLost:
		if e.Kind == sqllock.EventLost {
			l.counts[countLost].Add(1)
		}
		l.counts[countHeld].Add(-1)
		o.hold.Record(ctx, e.Held.Seconds(), l.hold...)
	}
}

// attempt observes one lock attempt: its outcome, then its hold. sqllock
// sends it one event at a time.
type attempt struct {
	o       *Observer
	caller  context.Context // the caller's, until the outcome
	ctx     context.Context // the acquire span's, until the outcome
	labels  *labels
	key     string // the key as spans show it
	acquire trace.Span
	hold    trace.Span // from the grant to the end
}

// Observe ends the acquire span at the attempt's outcome, starts the hold
// span at a grant and ends it at the hold's end, and records the metrics.
func (a *attempt) Observe(e sqllock.Event) {
	switch e.Kind {
	case sqllock.EventAcquired, sqllock.EventContended, sqllock.EventFailed:
		a.o.record(a.ctx, a.labels, e)
		outcome := outcomeAcquired
		switch e.Kind {
		case sqllock.EventContended:
			outcome = outcomeContended
		case sqllock.EventFailed:
			outcome = outcomeFailed
			a.acquire.RecordError(e.Err)
			a.acquire.SetStatus(codes.Error, e.Err.Error())
		}
		a.acquire.SetAttributes(AttrLockOutcome.String(outcomes[outcome]))
		a.acquire.End()
		if e.Kind == sqllock.EventAcquired {
			// A sibling of the acquire span: a child of the caller's.
			_, a.hold = a.o.tracer.Start(a.caller, "sqllock.hold", trace.WithAttributes(
				AttrLockName.String(e.Name),
				AttrLockKey.String(a.key),
				AttrLockMode.String(mode(e.Shared)),
			))
		}
		a.caller, a.ctx = nil, nil // a hold may be long: keep nothing of the caller's
	case sqllock.EventReleased, sqllock.EventLost:
		a.o.record(context.Background(), a.labels, e)
		if a.hold == nil {
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

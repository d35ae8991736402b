// Package otelsqllock records sqllock's locks as OpenTelemetry spans and
// metrics. It is a module of its own, so that sqllock's module needs only
// the standard library.
//
//	obs, err := otelsqllock.New() // the global providers, or WithTracerProvider, WithMeterProvider
//	if err != nil { ... }
//	locker := sqllock.New(db, sqllock.WithObserver(obs))
//
// # Spans
//
// Each lock acquired makes a span "sqllock.hold", from the grant to the
// release or the loss, a child of the span in the caller's context (the
// context given to Lock or WithLock). The function that WithLock runs
// (and WithLockShared, TryWithLock and their forms) runs under it: its
// context carries the hold span, so the spans of the work done under the
// lock are the hold span's children (the Observer's attempts are
// [sqllock.HoldObserver]s). Lock runs no function: after it returns, the
// caller's context is as it was.
//
// The wait for the lock is the hold span's attribute sqllock.lock.wait.
// A wait of 1ms or more ([WithWaitSpan]) also gets a span of its own,
// "sqllock.acquire", from the call to the grant, where the hold span
// starts; so does every attempt that takes no lock (a try that found it
// held, a wait that ended in an error), from the call to its outcome. Both
// are children of the caller's span. A lock taken at once thus makes one
// span, and a lock waited for two. Their attributes:
//
//	sqllock.lock.name     the lock's name (empty for MutexKey's locks)
//	sqllock.lock.key      the advisory-lock key, as keyspace.Key.String prints it
//	sqllock.lock.mode     "exclusive" or "shared"
//	sqllock.lock.wait     seconds from the call to the grant (hold only)
//	sqllock.lock.try      true for TryLock and TryWithLock (acquire only)
//	sqllock.lock.outcome  "acquired", "contended" or "failed" (acquire only)
//
// They are set once the span is known to record (it was sampled), so
// that a span that does not costs no attribute work: a sampler sees a
// span's name and parent, not these.
//
// A failed attempt's span records the error and has status Error. A lost
// lock's hold span gets an event "sqllock.lock.lost", with the error and
// the number of locks its session carried (sqllock.session.locks, more
// than one with sqllock.WithSessions), and status Error; so does a release
// that could not be confirmed (sqllock.ErrNotReleased).
//
// # Metrics
//
// The set ShedLock ships for Micrometer:
//
//	sqllock.lock.attempts       counter         {attempt}  every attempt
//	sqllock.lock.acquired       counter         {lock}     locks granted
//	sqllock.lock.contended      counter         {attempt}  tries that found the lock taken
//	sqllock.lock.failed         counter         {attempt}  attempts that ended in an error (a context ended, a refused server)
//	sqllock.lock.lost           counter         {lock}     held locks lost (their session died)
//	sqllock.lock.held           up-down counter {lock}     locks held now
//	sqllock.lock.wait.duration  histogram       s          time from the call to the outcome, by sqllock.lock.outcome
//	sqllock.lock.hold.duration  histogram       s          time from the grant to the release or loss
//
// Every metric carries sqllock.lock.mode and sqllock.lock.name. The
// counters and the up-down counter are asynchronous: atomics that a
// callback reports at each collection, cheaper per lock than the SDK's
// synchronous instruments; every series they report includes its zeros.
//
// # Cardinality
//
// A metric makes one time series per distinct set of attribute values,
// and a lock name is an attribute value: a few fixed names ("billing",
// "migrations") make a few series, but names made per tenant, per job or
// per row make a series each, without bound, in the SDK's memory, in the
// Observer's (a few hundred bytes per series) and in your metrics
// backend. For such names, map them to a few values with
// [WithMetricLockName] (a name's prefix, say), or leave the attribute out.
// The key is never a metric attribute. Spans carry the full name and key
// whatever the mapping: a span's attributes cost nothing per series.
//
// # Cost
//
// With no Observer, sqllock does no observing work at all. With this
// one, a lock taken at once and released costs the process, on top of
// sqllock's own observing (about 0.3µs, one allocation), about 0.4µs of
// CPU with the metrics alone (a no-op tracer provider, no allocation);
// 0.9–1.1µs with spans where the trace is not sampled (parent-based
// sampling under a request that was not sampled, or a ratio sampler's
// drops: the SDK makes a span that records nothing, and no attribute is
// set); and 3–4.5µs where it is, most of it the SDK's work for the one
// span it records (BenchmarkHooks; docs/benchmarks.md). An uncontended
// Lock+Unlock on a server on the same host takes about 100µs: the
// metrics cost it under 1% and unsampled traces about 1%, while every
// trace sampled costs it 3–5%, and 2% or less only where a Lock+Unlock
// takes 250µs or more (a server across a network). A wait of 1ms or more
// makes a second span, worth a few microseconds of that wait.
package otelsqllock

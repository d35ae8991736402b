// Package drivers is the driver matrix of docs/drivers.md as live tests:
// every database/sql setup the matrix lists (drivers, connection modes,
// instrumentation wrappers, ORMs, PgBouncer), each run through the
// conformance suite (conntest.Run), a concurrent cancellation torture,
// and two-process exclusion against a live server, plus benchmarks of
// the wrapped drivers against the plain ones.
//
// It is a module of its own, so that the library's go.mod keeps only
// what users of sqllock, keyspace and conntest need. make test runs it.
package drivers

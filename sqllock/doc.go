// Package sqllock provides distributed mutexes built on PostgreSQL
// advisory locks, over any [database/sql] driver for PostgreSQL.
//
// Several processes that share a database can make sure only one of them
// runs a migration, a clock process or a periodic job at a time, with
// nothing new to deploy:
//
//	l := sqllock.New(db) // db is your *sql.DB (lib/pq, pgx stdlib, gorm's db.DB(), …)
//	mu := l.Mutex("billing/nightly")
//	err := mu.WithLock(ctx, func(ctx context.Context) error {
//		return runNightlyBilling(ctx) // ctx is cancelled if the lock is lost
//	})
//
// # Holding a lock
//
// A lock is a session-level advisory lock (pg_advisory_lock) taken on a
// [sql.Conn] of its own, taken from the caller's pool and pinned until the
// lock is released. Because each lock has its own session, locks exclude each
// other inside one process exactly as they do across processes. Each held lock
// costs one pooled connection: leave room for them in SetMaxOpenConns.
//
// [Mutex.WithLock] is the primary form: it waits for the lock, runs a
// function and releases the lock however the function ends, including a
// panic. [Mutex.Lock] and [Mutex.Unlock] are there for locks whose lifetime
// does not fit one function; [Mutex.TryLock] never waits. Shared mode
// ([Mutex.LockShared] and friends) lets many holders in at once while
// excluding exclusive holders, both ways.
//
// Every method takes a context. For Lock it bounds only the wait: cancelling
// it later does not release the lock. If the context ends while waiting,
// Lock returns an error wrapping the context's error and no lock survives on
// any connection, even when the grant races the cancel: a connection whose
// lock state is unknown is never returned to the pool, and its session is
// ended on the server if it still holds or waits for the lock, whatever the
// driver's Close does. A call that cannot confirm that (the server out of
// reach) says so with an error wrapping [ErrNotReleased].
//
// # Losing a lock
//
// A lock lives exactly as long as its database session. Sessions die: a
// backend terminated by an administrator, a server restart, a network that
// goes silent. While a lock is held, a keep-alive runs one cheap query on its
// connection every two seconds (see [WithKeepAlive]); a failed or unanswered
// probe, or one answered by a different backend, counts as a loss. The
// holder learns of it: WithLock cancels its function's context with a cause
// wrapping [ErrLockLost] and returns an error wrapping it; Lock users watch
// [Mutex.Done] and [Mutex.Err]; Unlock of a lost lock returns an error
// wrapping ErrLockLost.
//
// # Fencing
//
// No lock can stop a holder whose whole process stalls (a GC pause, a
// frozen VM) past the moment the server gives its lock to another. With
// [WithFencing], every exclusive grant carries a token larger than every
// earlier grant's, durable across server crashes: pass [Token] (inside
// WithLock's fn) or [Mutex.Token] with each write the lock protects, and
// let the resource refuse tokens older than one it has seen.
//
// # Drivers and poolers
//
// sqllock imports no driver. It works with github.com/lib/pq,
// github.com/jackc/pgx/v5/stdlib (with its default context handling or with
// pgconn.CancelRequestContextWatcherHandler, and behind its pool bridge
// stdlib.OpenDBFromPool), behind instrumentation wrappers such as otelsql,
// with bun's pgdriver, and under any ORM that exposes its *sql.DB, such as
// gorm's db.DB(); docs/drivers.md lists the setups proven live. Each lock,
// try-lock and unlock is one round trip on both drivers: keys are integers,
// bound as parameters of statements that pgx caches and that sqllock
// prepares per connection for lib/pq (written into the text behind a
// pooler).
//
// Session locks need a session: a pooler in transaction mode (PgBouncer's
// pool_mode=transaction) hands consecutive statements to different server
// sessions, and the locks then neither exclude nor release. sqllock marks
// each server session with a token of the client connection that first
// locked on it (a custom setting, set by a verify statement that runs once
// per session before its first lock); a lock that lands on a session marked
// by another connection takes nothing and fails with [ErrSharedSession]. Once a connection's session is
// checked, later locks on that connection take the lock only if they reach
// the same backend, and check again where they do not. The keep-alive also
// notices a change of backend. Behind such a pooler, use transaction-scoped
// locks: [Mutex.LockTx] and friends, released at commit or rollback. A hot
// standby grants advisory locks that exclude nobody on the primary; sqllock
// refuses them with [ErrStandby] unless [WithAllowStandby] says otherwise.
//
// With pgx, pgconn.CancelRequestContextWatcherHandler makes a cancelled wait
// leave the server's lock queue at once; with pgx's default handler the
// cancel request is sent asynchronously as the connection closes.
//
// # Keys
//
// PostgreSQL locks integers, not names. A [keyspace.Strategy] turns names
// into keys; the default, [keyspace.Default], is byte-compatible with the
// Node package advisory-lock, so Go and Node processes contend for the same
// names. [Locker.MutexKey] takes an explicit [keyspace.Key]. Names never
// reach SQL text.
//
// # Checking your setup
//
// The package github.com/advisorylock/go-advisory-lock/conntest runs a
// conformance suite against your own driver, pooler and database, proving
// that they give sqllock the session semantics it relies on.
package sqllock

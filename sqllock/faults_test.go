package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// The fault tests break a held lock's session the ways deployments do (a
// terminated backend, a server restart, a network gone silent, a lock-order
// inversion), on every driver, and check that the loss is never silent and
// nothing is leaked. They measure how long each step takes and log it in
// one parseable form (see faultFigure), which docs/reliability.md quotes:
//
//	detected: driver=pgx fault=restart after=61ms
//
// "detected": the holder learns of the loss (Done closes), or the server
// reports a deadlock; "acquired": a waiter gets the lock; "failed": a
// waiter's Lock returns an error; "bounded": a call returns because its
// context ended the wait; "freed": the server shows the key free. Durations
// are measured from the fault (or the step the message names) and parse
// with time.ParseDuration:
//
//	go test -v -run TestFault ./sqllock | grep -E ': [a-z]+: driver=.* fault=.* after='

// faultSetup is a driver configuration of setups (helpers_test.go) that can
// be opened on any connection string: a dedicated cluster, a proxy, or a
// DSN with session settings.
type faultSetup struct {
	name string
	open func(t *testing.T, dsn string) *sql.DB
}

var faultSetups = []faultSetup{
	{"pq", func(t *testing.T, dsn string) *sql.DB { return faultOpen(t, "postgres", dsn) }},
	{"pgx", func(t *testing.T, dsn string) *sql.DB { return faultOpen(t, "pgx", dsn) }},
	{"pgx-cancelrequest", faultOpenPgxCancelRequest},
}

// eachFaultSetup runs f as a parallel subtest on every driver setup.
func eachFaultSetup(t *testing.T, f func(t *testing.T, s faultSetup)) {
	t.Helper()
	for _, s := range faultSetups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			f(t, s)
		})
	}
}

// faultOpen opens dsn with the named driver and checks that it answers. A
// server refusing a session setting for lack of privilege (SQLSTATE 42501)
// skips the test.
func faultOpen(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	faultPing(t, db)
	return db
}

// faultOpenPgxCancelRequest is faultOpen for pgtest.PgxCancelRequest.
func faultOpenPgxCancelRequest(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db := pgtest.OpenPgxCancelRequest(t, dsn)
	faultPing(t, db)
	return db
}

func faultPing(t *testing.T, db *sql.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := db.PingContext(ctx)
	if faultSQLState(err) == "42501" {
		t.Skipf("the server refuses a session setting this test needs: %v", err)
	}
	require.NoError(t, err)
}

// faultSQLState returns the SQLSTATE of the server error err wraps, if any,
// the way sqllock classifies errors: through interface{ SQLState() string },
// which both lib/pq and pgx errors satisfy.
func faultSQLState(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// faultDSN returns dsn, a URL-form connection string, with its host:port
// replaced by hostPort (unless empty) and settings ("name=value") added as
// session settings through the options parameter, which lib/pq and pgx both
// pass to the server. It also returns dsn's own host:port.
func faultDSN(t *testing.T, dsn, hostPort string, settings ...string) (newDSN, target string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Port() == "" {
		t.Skipf("needs a URL-form connection string with host and port (postgres://host:port/...); got %q", dsn)
	}
	target = u.Host
	if hostPort != "" {
		u.Host = hostPort
	}
	if len(settings) > 0 {
		q := u.Query()
		opts := q.Get("options")
		for _, s := range settings {
			opts = strings.TrimSpace(opts + " -c " + s)
		}
		q.Set("options", opts)
		// pgx does not decode "+" as a space in the query: use %20, which
		// both drivers decode. Encode writes a literal "+" as %2B.
		u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	}
	return u.String(), target
}

// faultProxy starts a proxy to the server of dsn and returns it with a DSN
// that connects through it, with settings added. The proxy is closed when
// the test ends, so that no driver stays stuck on it.
func faultProxy(t *testing.T, dsn string, settings ...string) (*tcpproxy.Proxy, string) {
	t.Helper()
	_, target := faultDSN(t, dsn, "")
	p, err := tcpproxy.Listen(target)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	proxied, _ := faultDSN(t, dsn, p.Addr(), settings...)
	return p, proxied
}

// faultFigure logs a measured duration in the one form the fault tests use.
func faultFigure(t *testing.T, what, driver, fault string, d time.Duration) {
	t.Helper()
	t.Logf("%s: driver=%s fault=%s after=%v", what, driver, fault, d.Round(time.Millisecond))
}

// faultResult is what a call running in its own goroutine returned, and
// when.
type faultResult struct {
	err error
	at  time.Time
}

// faultGo runs f in a goroutine and delivers its result.
func faultGo(f func() error) <-chan faultResult {
	ch := make(chan faultResult, 1)
	go func() {
		err := f()
		ch <- faultResult{err, time.Now()}
	}()
	return ch
}

// faultStamp delivers the time done closes (or nothing, if the test ends
// first).
func faultStamp(t *testing.T, done <-chan struct{}) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		select {
		case <-done:
			ch <- time.Now()
		case <-t.Context().Done():
		}
	}()
	return ch
}

// faultWithin returns the first value from ch, failing the test if none comes
// within bound.
func faultWithin[T any](t *testing.T, ch <-chan T, bound time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s: nothing within %v", what, bound)
	}
	panic("unreachable")
}

// faultNoConnsInUse waits until db has no connection in use: every pinned
// connection has been returned or discarded.
func faultNoConnsInUse(t *testing.T, db *sql.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for inUse(db) != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("connections in use: got %d, want 0", inUse(db))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Known sqllock defects these tests have found, not fixed yet; see "Known
// issues" in docs/reliability.md.
const (
	// Lock, Unlock and WithLock's release leave the bound of a silent
	// network to the driver, and lib/pq, whose cancel request cannot get
	// through either, keeps reading until the connection closes. Only the
	// keep-alive is bounded by sqllock's own timer.
	faultIssueSilentCall = "silent-network-outlasts-context"
	// A pooled connection whose session the server ended (a restart,
	// idle_session_timeout) fails the next Lock that gets it: the lock
	// statement runs on a *sql.Conn, where database/sql does not retry
	// driver.ErrBadConn (lib/pq), and pgx reports the server's FATAL
	// (57P01, 57P05) unless its last checkout was over 1s ago (then its
	// ResetSession pings the connection and database/sql takes another).
	faultIssueStaleConn = "stale-pooled-conn-fails-lock"
)

// faultKnownIssues lists, for each known issue, the driver setups it shows
// on.
var faultKnownIssues = map[string][]string{
	// Both fixed: lock and unlock statements are bounded by sqllock on
	// drivers that do not bound them, and a dead pooled session is retried.
}

// faultIssues tracks the known issues one subtest meets. A subtest that
// meets one still checks everything else, then skips (faultIssues.done),
// naming it, so the figures stay visible and the defect stays in sight; one
// that meets an issue not known for its setup fails.
type faultIssues struct {
	t     *testing.T
	setup string
	seen  []string
}

// check records whether issue showed.
func (f *faultIssues) check(issue string, showed bool, detail string) {
	f.t.Helper()
	known := slices.Contains(faultKnownIssues[issue], f.setup)
	switch {
	case showed && known:
		f.t.Logf("known issue %s: %s", issue, detail)
		f.seen = append(f.seen, issue)
	case showed:
		f.t.Errorf("issue %s, not known on %s: %s", issue, f.setup, detail)
	case known:
		f.t.Logf("known issue %s did not show on %s; if it is fixed, remove it from faultKnownIssues", issue, f.setup)
	}
}

// done skips the subtest if it met a known issue. Call it last.
func (f *faultIssues) done() {
	f.t.Helper()
	if len(f.seen) > 0 && !f.t.Failed() {
		f.t.Skipf("all other checks passed; known issues showed: %s (docs/reliability.md)", strings.Join(f.seen, ", "))
	}
}

// TestFaultTerminatedBackend times TestLossDetected's fault: an
// administrator ends the holder's backend (pg_terminate_backend) while
// another session waits for the lock.
func TestFaultTerminatedBackend(t *testing.T) {
	const interval, timeout = 50 * time.Millisecond, time.Second
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		db := s.open(t, pgtest.DSN(t))
		l := sqllock.New(db, sqllock.WithKeepAlive(interval, timeout))
		holder, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		lost := faultStamp(t, holder.Done())
		waited := faultGo(func() error { return waiter.Lock(t.Context()) })
		waitRows(t, db, holder.Key(), 1, 1)

		start := time.Now()
		terminate(t, db, backendOf(t, db, holder.Key()))
		at := faultWithin(t, lost, 10*time.Second, "holder's Done")
		faultFigure(t, "detected", s.name, "terminate", at.Sub(start))
		assert.LessOrEqual(t, at.Sub(start), interval+timeout, "a dead session shows at the next probe")
		err := holder.Err()
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		t.Logf("holder's Err: %v", err)

		r := faultWithin(t, waited, 10*time.Second, "waiter's Lock")
		require.NoError(t, r.err)
		faultFigure(t, "acquired", s.name, "terminate", r.at.Sub(start))

		require.ErrorIs(t, holder.Unlock(t.Context()), sqllock.ErrLockLost)
		require.NoError(t, waiter.Unlock(t.Context()))
		waitRows(t, db, holder.Key(), 0, 0)
		faultNoConnsInUse(t, db)
	})
}

// TestFaultServerRestart restarts a dedicated server while, on every driver
// at once, a Lock holder, a WithLock holder and a waiter use it: the holders
// are told, the waiter gets an error (or a lock whose loss it is told of),
// and once the server is back a new Lock succeeds.
func TestFaultServerRestart(t *testing.T) {
	t.Parallel()
	const interval, timeout = 50 * time.Millisecond, time.Second
	c := pgtest.NewCluster(t)
	admin := faultOpen(t, "pgx", c.DSN())

	type scene struct {
		s        faultSetup
		db       *sql.DB
		l        *sqllock.Locker
		holder   *sqllock.Mutex
		waiter   *sqllock.Mutex
		lost     <-chan time.Time   // the holder's Done
		waited   <-chan faultResult // the waiter's Lock
		fnEnded  <-chan faultResult // WithLock's fn context: its cause
		withLock <-chan faultResult // WithLock's result
	}
	var scenes []*scene
	for _, s := range faultSetups {
		db := s.open(t, c.DSN())
		l := sqllock.New(db, sqllock.WithKeepAlive(interval, timeout))
		name := t.Name() + "/" + s.name
		sc := &scene{s: s, db: db, l: l, holder: l.Mutex(name), waiter: l.Mutex(name)}
		require.NoError(t, sc.holder.Lock(t.Context()))
		sc.lost = faultStamp(t, sc.holder.Done())
		sc.waited = faultGo(func() error { return sc.waiter.Lock(t.Context()) })

		started := make(chan struct{})
		fnEnded := make(chan faultResult, 1)
		sc.fnEnded = fnEnded
		sc.withLock = faultGo(func() error {
			return l.Mutex(name+"/withlock").WithLock(t.Context(), func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				fnEnded <- faultResult{context.Cause(ctx), time.Now()}
				return nil
			})
		})
		faultWithin(t, (<-chan struct{})(started), 10*time.Second, s.name+": WithLock's fn to start")
		waitRows(t, admin, sc.holder.Key(), 1, 1)
		// An idle pooled connection, as every application has: after the
		// restart it is stale.
		for range 2 { // pgx pings a connection idle for over 1s: use it twice
			_, err := db.ExecContext(t.Context(), "SELECT 1")
			require.NoError(t, err)
		}
		require.NotZero(t, db.Stats().Idle)
		scenes = append(scenes, sc)
	}

	start := time.Now()
	c.Restart(t)
	faultFigure(t, "restarted", "all", "restart", time.Since(start))
	admin = faultOpen(t, "pgx", c.DSN()) // the old pool's idle connection is stale

	for _, sc := range scenes {
		t.Run(sc.s.name, func(t *testing.T) {
			at := faultWithin(t, sc.lost, 10*time.Second, "holder's Done")
			faultFigure(t, "detected", sc.s.name, "restart", at.Sub(start))
			err := sc.holder.Err()
			require.ErrorIs(t, err, sqllock.ErrLockLost)
			t.Logf("holder's Err: %v", err)
			require.ErrorIs(t, sc.holder.Unlock(t.Context()), sqllock.ErrLockLost)

			r := faultWithin(t, sc.fnEnded, 10*time.Second, "WithLock's fn context")
			require.ErrorIs(t, r.err, sqllock.ErrLockLost, "context.Cause of fn's context")
			faultFigure(t, "detected", sc.s.name, "restart-withlock", r.at.Sub(start))
			r = faultWithin(t, sc.withLock, 10*time.Second, "WithLock")
			require.ErrorIs(t, r.err, sqllock.ErrLockLost)

			r = faultWithin(t, sc.waited, 10*time.Second, "waiter's Lock")
			if r.err == nil {
				// The grant beat the waiter's own termination: then the
				// keep-alive must report the loss.
				at := faultWithin(t, faultStamp(t, sc.waiter.Done()), 10*time.Second, "waiter's Done")
				require.ErrorIs(t, sc.waiter.Err(), sqllock.ErrLockLost)
				faultFigure(t, "detected", sc.s.name, "restart-waiter-granted", at.Sub(start))
				require.ErrorIs(t, sc.waiter.Unlock(t.Context()), sqllock.ErrLockLost)
			} else {
				var e *sqllock.Error
				require.ErrorAs(t, r.err, &e)
				assert.Equal(t, "lock", e.Op)
				faultFigure(t, "failed", sc.s.name, "restart-waiter", r.at.Sub(start))
				t.Logf("waiter's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
				require.ErrorIs(t, sc.waiter.Unlock(t.Context()), sqllock.ErrNotHeld)
			}

			// The server is back: a new lock works, even though the pool
			// still has a connection to the old server.
			issues := &faultIssues{t: t, setup: sc.s.name}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			again := sc.l.Mutex(sc.holder.Name())
			err = again.Lock(ctx)
			issues.check(faultIssueStaleConn, err != nil, fmt.Sprintf("first Lock after the restart: %v", err))
			if err != nil { // the stale connection is discarded now
				require.NoError(t, again.Lock(ctx), "second Lock after the restart")
			}
			waitRows(t, admin, again.Key(), 1, 0)
			require.NoError(t, again.Unlock(ctx))
			waitRows(t, admin, again.Key(), 0, 0)
			faultNoConnsInUse(t, sc.db)
			issues.done()
		})
	}
}

// TestFaultSilentNetwork cuts the holder's network path without closing it
// (a tcpproxy blackhole), as a dead router or a frozen VM does. Nothing
// tells the client; the keep-alive's own timer must. The server frees the
// lock only when it ends the silent session itself, here through
// idle_session_timeout, set on the holder's sessions only.
func TestFaultSilentNetwork(t *testing.T) {
	const (
		interval, timeout  = 100 * time.Millisecond, 500 * time.Millisecond
		idleSessionTimeout = time.Second
		slack              = 500 * time.Millisecond // scheduling on a busy machine, -race
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		direct := s.open(t, pgtest.DSN(t))
		p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
		viaProxy := s.open(t, proxied)

		l := sqllock.New(viaProxy, sqllock.WithKeepAlive(interval, timeout))
		holder := l.Mutex(t.Name())
		require.NoError(t, holder.Lock(t.Context()))
		lost := faultStamp(t, holder.Done())
		waiter := sqllock.New(direct).Mutex(t.Name())
		waited := faultGo(func() error { return waiter.Lock(t.Context()) })
		waitRows(t, direct, holder.Key(), 1, 1)
		pid := backendOf(t, direct, holder.Key())

		// idle_session_timeout spares healthy holders: the keep-alive keeps
		// the session from ever being idle that long.
		select {
		case <-lost:
			t.Fatalf("a healthy holder lost its lock to idle_session_timeout: %v", holder.Err())
		case <-time.After(idleSessionTimeout + 3*interval):
		}
		require.Equal(t, pid, backendOf(t, direct, holder.Key()), "the holder's session survives")

		start := time.Now()
		p.Blackhole()
		at := faultWithin(t, lost, interval+timeout+10*time.Second, "holder's Done")
		faultFigure(t, "detected", s.name, "silent-network", at.Sub(start))
		assert.LessOrEqual(t, at.Sub(start), interval+timeout+slack, "the loss is declared within interval + timeout")
		err := holder.Err()
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		notBlamingContext(t, err)
		t.Logf("holder's Err: %v", err)
		r := faultWithin(t, faultGo(func() error { return holder.Unlock(t.Context()) }), 5*time.Second, "Unlock of the lost lock")
		require.ErrorIs(t, r.err, sqllock.ErrLockLost)

		// The server still sees the holder's session, idle, holding the
		// lock, until idle_session_timeout ends it.
		r = faultWithin(t, waited, idleSessionTimeout+10*time.Second, "waiter's Lock")
		require.NoError(t, r.err)
		faultFigure(t, "acquired", s.name, "silent-network", r.at.Sub(start))
		assert.LessOrEqual(t, r.at.Sub(start), idleSessionTimeout+slack, "the server frees the lock after idle_session_timeout")

		// The network comes back broken: a driver stuck in a read returns,
		// and the abandoned keep-alive probe then discards the connection.
		require.NoError(t, p.Close())
		faultNoConnsInUse(t, viaProxy)
		require.NoError(t, waiter.Unlock(t.Context()))
		waitRows(t, direct, holder.Key(), 0, 0)
	})
}

// TestFaultSilentNetworkBoundsCalls checks that a context bounds Unlock,
// WithLock's release and Lock's wait even when the network goes silent
// under them, and that the lock does not outlive the silent session.
func TestFaultSilentNetworkBoundsCalls(t *testing.T) {
	const (
		// The keep-alive stays out of the way: these calls meet the silence
		// first.
		interval, timeout = time.Minute, 500 * time.Millisecond
		deadline          = 300 * time.Millisecond
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		// A call whose driver does not return gets abandonGrace (250ms)
		// after its context ends, then up to settleBound (500ms) to end
		// its session on the server, which the silence also swallows.
		slack := 1000 * time.Millisecond
		if s.name == "pgx-cancelrequest" {
			// The cancel request gets DeadlineDelay (1s) before pgx closes
			// the connection.
			slack += time.Second
		}
		direct := s.open(t, pgtest.DSN(t))
		// open returns a Mutex whose sessions go through a new proxy, its
		// pool and the proxy.
		open := func(t *testing.T) (*sqllock.Mutex, *sql.DB, *tcpproxy.Proxy) {
			p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
			db := s.open(t, proxied)
			return sqllock.New(db, sqllock.WithKeepAlive(interval, timeout)).Mutex(t.Name()), db, p
		}
		// returns waits up to bound for a call that the silence may have
		// stuck in the driver. If the call is stuck, it closes the proxy,
		// which unsticks it, and records the issue.
		returns := func(t *testing.T, issues *faultIssues, ch <-chan faultResult, bound time.Duration, p *tcpproxy.Proxy, what string) faultResult {
			t.Helper()
			select {
			case r := <-ch:
				issues.check(faultIssueSilentCall, false, "")
				return r
			case <-time.After(bound):
			}
			p.Close()
			r := faultWithin(t, ch, 10*time.Second, what+" after the proxy closed")
			issues.check(faultIssueSilentCall, true, fmt.Sprintf(
				"%s did not return within %v of a silent network; it returned (%v) only when the proxy closed the connection", what, bound, r.err))
			return r
		}

		t.Run("Unlock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			mu, db, p := open(t)
			require.NoError(t, mu.Lock(t.Context()))
			p.Blackhole()
			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			r := returns(t, issues, faultGo(func() error { return mu.Unlock(ctx) }), deadline+slack, p, "Unlock")
			faultFigure(t, "bounded", s.name, "silent-network-unlock", r.at.Sub(start))
			t.Logf("Unlock returned: %v", r.err)
			assert.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
			// The unlock never reached the server: the lock is freed when
			// the server ends the idle session.
			waitRows(t, direct, mu.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-unlock", time.Since(start))
			p.Close()
			faultNoConnsInUse(t, db)
			issues.done()
		})

		t.Run("WithLock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			mu, db, p := open(t)
			var start time.Time
			r := returns(t, issues, faultGo(func() error {
				return mu.WithLock(t.Context(), func(context.Context) error {
					p.Blackhole()
					start = time.Now()
					return nil
				})
			}), timeout+slack, p, "WithLock's release")
			faultFigure(t, "bounded", s.name, "silent-network-withlock", r.at.Sub(start))
			t.Logf("WithLock returned: %v", r.err)
			assert.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
			waitRows(t, direct, mu.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-withlock", time.Since(start))
			p.Close()
			faultNoConnsInUse(t, db)
			issues.done()
		})

		t.Run("Lock", func(t *testing.T) {
			t.Parallel()
			issues := &faultIssues{t: t, setup: s.name}
			holder := sqllock.New(direct).Mutex(t.Name())
			require.NoError(t, holder.Lock(t.Context()))
			mu, db, p := open(t)
			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), 2*deadline)
			defer cancel()
			waited := faultGo(func() error { return mu.Lock(ctx) })
			waitRows(t, direct, holder.Key(), 1, 1)
			p.Blackhole()
			r := returns(t, issues, waited, 2*deadline+slack, p, "Lock")
			faultFigure(t, "bounded", s.name, "silent-network-lock", r.at.Sub(start))
			t.Logf("Lock returned: %v", r.err)
			require.ErrorIs(t, r.err, context.DeadlineExceeded)
			// The waiting backend does not learn that its client gave up:
			// when the holder lets go it is granted the lock, answers into
			// the void, and holds it, idle, until idle_session_timeout.
			released := time.Now()
			require.NoError(t, holder.Unlock(t.Context()))
			waitRows(t, direct, holder.Key(), 0, 0)
			faultFigure(t, "freed", s.name, "silent-network-lock", time.Since(released))
			p.Close()
			faultNoConnsInUse(t, db)
			issues.done()
		})
	})
}

// TestFaultSilentNetworkSharedSession cuts the network under a shared
// session (WithSessions) that carries two locks, a and b, then runs a call
// that needs the session: an Unlock of a, or a Lock of a third key, each
// with a context that never ends. The library bounds statements on a
// shared session, so the call returns within the keep-alive timeout plus
// the time to try to end the session (it cannot, through the silent
// network: ErrNotReleased says so), b is reported lost, and the server
// frees both locks when it ends the silent session (idle_session_timeout).
// FirstLock is the Lock on a session that carries nothing yet: the first
// lock after the Locker was idle, on a pooled connection whose backend is
// known. That backend may have granted the lock, so it is ended too, or
// the call says it could not be.
func TestFaultSilentNetworkSharedSession(t *testing.T) {
	const (
		interval, timeout = time.Minute, 500 * time.Millisecond // the keep-alive stays out of the way
		slack             = time.Second                         // scheduling on a busy machine, -race
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		direct := s.open(t, pgtest.DSN(t))
		for _, call := range []string{"Unlock", "Lock", "FirstLock"} {
			t.Run(call, func(t *testing.T) {
				t.Parallel()
				p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
				db := s.open(t, proxied)
				l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
				a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
				require.NoError(t, a.Lock(t.Context()))
				if call == "FirstLock" {
					require.NoError(t, a.Unlock(t.Context()))
					require.Zero(t, inUse(db), "the session went back to the pool")
					p.Blackhole()
					start := time.Now()
					r := faultWithin(t, faultGo(func() error { return b.Lock(context.Background()) }), 2*timeout+slack, "Lock")
					faultFigure(t, "bounded", s.name, "silent-network-shared-firstlock", r.at.Sub(start))
					t.Logf("Lock returned: %v", r.err)
					require.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the backend that may hold the lock could not be ended")
					waitRows(t, direct, b.Key(), 0, 0)
					require.NoError(t, p.Close())
					faultNoConnsInUse(t, db)
					return
				}
				require.NoError(t, b.Lock(t.Context()))
				require.Equal(t, backendOf(t, direct, a.Key()), backendOf(t, direct, b.Key()), "one session carries both")
				lost := faultStamp(t, b.Done())
				f := func() error { return a.Unlock(context.Background()) }
				if call == "Lock" {
					c := l.Mutex(t.Name() + "/c")
					f = func() error { return c.Lock(context.Background()) }
				}

				p.Blackhole()
				start := time.Now()
				ch := faultGo(f)
				var r faultResult
				select {
				case r = <-ch:
				case <-time.After(2*timeout + slack):
					p.Close() // unsticks the driver
					t.Fatalf("%s on a silent shared session did not return within %v", call, 2*timeout+slack)
				}
				faultFigure(t, "bounded", s.name, "silent-network-shared-"+strings.ToLower(call), r.at.Sub(start))
				t.Logf("%s returned: %v", call, r.err)
				require.ErrorIs(t, r.err, sqllock.ErrNotReleased, "the silent network keeps the session's end from being confirmed")
				at := faultWithin(t, lost, 2*timeout+slack, "b's Done")
				faultFigure(t, "detected", s.name, "silent-network-shared", at.Sub(start))
				require.ErrorIs(t, b.Err(), sqllock.ErrLockLost)
				require.ErrorIs(t, b.Unlock(t.Context()), sqllock.ErrLockLost)

				// The server ends the silent session, and both locks with it.
				waitRows(t, direct, a.Key(), 0, 0)
				waitRows(t, direct, b.Key(), 0, 0)
				faultFigure(t, "freed", s.name, "silent-network-shared", time.Since(start))
				require.NoError(t, p.Close())
				faultNoConnsInUse(t, db)
			})
		}
	})
}

// TestFaultLockOrderInversion runs the classic lock-order inversion: A
// holds k1 and waits for k2 while B holds k2 and waits for k1.
//
// With sqllock, every lock is a session of its own, so the server's wait-for
// graph has no cycle: A's k1 session and B's k2 session are idle, not
// waiting, and PostgreSQL's deadlock detector never fires, however long
// deadlock_timeout runs. The deadlock lives in the application; only a
// context deadline ends it. For contrast, the server does detect the same
// inversion (SQLSTATE 40P01) when each side holds and waits in one session:
// with transaction-scoped locks (Transactions: the victim gets ErrDeadlock,
// and the server's abort frees its locks), and with hand-written session
// locks in one session (OneSession: the victim keeps what it held).
func TestFaultLockOrderInversion(t *testing.T) {
	// The server looks for deadlocks after 100ms of waiting, ten times
	// sooner than by default: the waits below give it many chances.
	const deadlockTimeout = 100 * time.Millisecond
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		dsn, _ := faultDSN(t, pgtest.DSN(t), "", "deadlock_timeout=100")
		db := s.open(t, dsn)

		t.Run("Mutexes", func(t *testing.T) {
			const deadline = 5 * deadlockTimeout
			l := sqllock.New(db)
			a1, a2 := l.Mutex(t.Name()+"/k1"), l.Mutex(t.Name()+"/k2")
			b2, b1 := l.Mutex(t.Name()+"/k2"), l.Mutex(t.Name()+"/k1")
			require.NoError(t, a1.Lock(t.Context()))
			require.NoError(t, b2.Lock(t.Context()))

			start := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			aWaited := faultGo(func() error { return a2.Lock(ctx) })
			bWaited := faultGo(func() error { return b1.Lock(t.Context()) }) // no deadline of its own
			waitRows(t, db, a1.Key(), 1, 1)
			waitRows(t, db, b2.Key(), 1, 1)

			r := faultWithin(t, aWaited, deadline+10*time.Second, "A's Lock")
			faultFigure(t, "bounded", s.name, "inversion", r.at.Sub(start))
			t.Logf("A's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
			require.ErrorIs(t, r.err, context.DeadlineExceeded, "the deadline, not the server, ends the wait")
			assert.NotEqual(t, "40P01", faultSQLState(r.err), "no deadlock is reported")
			select {
			case r := <-bWaited:
				t.Fatalf("B's Lock returned while A holds k1: %v", r.err)
			default: // B waited as long, deadlock_timeout 5 times over, unreported
			}

			// A backs off: B gets k1.
			released := time.Now()
			require.NoError(t, a1.Unlock(t.Context()))
			r = faultWithin(t, bWaited, 10*time.Second, "B's Lock")
			require.NoError(t, r.err)
			faultFigure(t, "acquired", s.name, "inversion", r.at.Sub(released))
			require.NoError(t, b1.Unlock(t.Context()))
			require.NoError(t, b2.Unlock(t.Context()))
			require.ErrorIs(t, a2.Unlock(t.Context()), sqllock.ErrNotHeld)
			// A's abandoned wait for k2 may linger in the server (pgx closes
			// the connection without a cancel request) until it is granted
			// and finds its client gone.
			waitRows(t, db, a1.Key(), 0, 0)
			waitRows(t, db, b2.Key(), 0, 0)
			faultNoConnsInUse(t, db)
		})

		t.Run("Transactions", func(t *testing.T) {
			l := sqllock.New(db)
			m1, m2 := l.Mutex(t.Name()+"/k1"), l.Mutex(t.Name()+"/k2")
			begin := func() *sql.Tx {
				tx, err := db.BeginTx(t.Context(), nil)
				require.NoError(t, err)
				t.Cleanup(func() { _ = tx.Rollback() })
				return tx
			}
			txA, txB := begin(), begin()
			require.NoError(t, m1.LockTx(t.Context(), txA))
			require.NoError(t, m2.LockTx(t.Context(), txB))

			start := time.Now()
			aWaited := faultGo(func() error { return m2.LockTx(t.Context(), txA) })
			bWaited := faultGo(func() error { return m1.LockTx(t.Context(), txB) })
			// The server aborts the victim's transaction and frees its locks
			// at once: the survivor gets in before the victim rolls back,
			// and may hear first.
			ra := faultWithin(t, aWaited, 10*time.Second, "A's LockTx")
			rb := faultWithin(t, bWaited, 10*time.Second, "B's LockTx")
			victim, survivor, rv, rs := txA, txB, ra, rb
			if ra.err == nil {
				victim, survivor, rv, rs = txB, txA, rb, ra
			}
			faultFigure(t, "detected", s.name, "deadlock-tx", rv.at.Sub(start))
			t.Logf("victim's error (SQLSTATE %q): %v", faultSQLState(rv.err), rv.err)
			require.ErrorIs(t, rv.err, sqllock.ErrDeadlock)
			require.Equal(t, "40P01", faultSQLState(rv.err))
			require.NoError(t, rs.err, "exactly one victim")
			faultFigure(t, "acquired", s.name, "deadlock-tx", rs.at.Sub(start))
			require.NoError(t, victim.Rollback())
			require.NoError(t, survivor.Commit())
			waitRows(t, db, m1.Key(), 0, 0)
			waitRows(t, db, m2.Key(), 0, 0)
		})

		t.Run("OneSession", func(t *testing.T) {
			k1 := keyspace.SHA256Int64.Key(t.Name() + "/k1")
			k2 := keyspace.SHA256Int64.Key(t.Name() + "/k2")
			n1, _ := k1.Int64()
			n2, _ := k2.Int64()
			lock := func(c *sql.Conn, n int64) error {
				_, err := c.ExecContext(t.Context(), "SELECT pg_advisory_lock($1)", n)
				return err
			}
			unlock := func(c *sql.Conn, n int64) {
				t.Helper()
				var ok bool
				require.NoError(t, c.QueryRowContext(t.Context(), "SELECT pg_advisory_unlock($1)", n).Scan(&ok))
				require.True(t, ok, "pg_advisory_unlock(%d)", n)
			}
			conn := func() *sql.Conn {
				c, err := db.Conn(t.Context())
				require.NoError(t, err)
				t.Cleanup(func() { c.Close() })
				return c
			}
			a, b := conn(), conn()
			require.NoError(t, lock(a, n1))
			require.NoError(t, lock(b, n2))

			start := time.Now()
			aWaited := faultGo(func() error { return lock(a, n2) })
			bWaited := faultGo(func() error { return lock(b, n1) })
			var victim, survivor *sql.Conn
			var victimFirst, survivorFirst, survivorSecond int64
			var r faultResult
			var survivorWaited <-chan faultResult
			select {
			case r = <-aWaited:
				victim, survivor, survivorWaited = a, b, bWaited
				victimFirst, survivorFirst, survivorSecond = n1, n2, n1
			case r = <-bWaited:
				victim, survivor, survivorWaited = b, a, aWaited
				victimFirst, survivorFirst, survivorSecond = n2, n1, n2
			case <-time.After(10 * time.Second):
				t.Fatal("the server reported no deadlock within 10s")
			}
			faultFigure(t, "detected", s.name, "deadlock-one-session", r.at.Sub(start))
			t.Logf("victim's error (SQLSTATE %q): %v", faultSQLState(r.err), r.err)
			require.Equal(t, "40P01", faultSQLState(r.err), "deadlock detected")

			// The error ends the victim's wait, not its session: it still
			// holds its first lock, and the survivor still waits for it.
			key := keyspace.Int64(victimFirst)
			waitRows(t, db, key, 1, 1)
			unlock(victim, victimFirst)
			r = faultWithin(t, survivorWaited, 10*time.Second, "survivor's lock")
			require.NoError(t, r.err)
			unlock(survivor, survivorFirst)
			unlock(survivor, survivorSecond)
			waitRows(t, db, k1, 0, 0)
			waitRows(t, db, k2, 0, 0)
		})
	})
}

// TestFaultDeadPooledSharedSession: with WithSessions, a pooled connection
// whose session the server ended while it sat idle (a restart, or
// idle_session_timeout) is retried on another, as in the default mode,
// instead of failing the Lock that gets it.
func TestFaultDeadPooledSharedSession(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	for _, fault := range []string{"restart", "idle_session_timeout"} {
		t.Run(fault, func(t *testing.T) {
			for _, s := range faultSetups {
				t.Run(s.name, func(t *testing.T) {
					dsn := c.DSN()
					if fault == "idle_session_timeout" {
						dsn, _ = faultDSN(t, dsn, "", "idle_session_timeout=300")
					}
					db := s.open(t, dsn)
					admin := faultOpen(t, "pgx", c.DSN())
					l := sqllock.New(db, sqllock.WithSessions(2), fastLoss)
					for round := range 3 {
						m := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), round))
						require.NoError(t, m.Lock(t.Context()))
						pid := backendOf(t, admin, m.Key())
						require.NoError(t, m.Unlock(t.Context()))
						require.Zero(t, inUse(db), "the session went back to the pool")
						if fault == "restart" {
							c.Restart(t)
						}
						// The pooled session is gone from the server.
						waitGone(t, admin, pid)
						ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
						err := m.Lock(ctx)
						cancel()
						require.NoError(t, err, "round %d: a dead pooled session is retried", round)
						require.NoError(t, m.Unlock(t.Context()))
						waitRows(t, admin, m.Key(), 0, 0)
					}
				})
			}
		})
	}
}

// waitGone waits until backend pid has exited.
func waitGone(t *testing.T, db *sql.DB, pid int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for {
		var n int
		err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n)
		if err == nil && n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("backend %d still there (%v)", pid, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestFaultBusySharedSessionHonoursContext: while a statement on a shared
// session gets no answer (a silent network; equally a stopped backend),
// other callers that queue for the session return when their own context
// ends, not when the stuck statement's bound passes.
func TestFaultBusySharedSessionHonoursContext(t *testing.T) {
	const (
		interval, timeout = 200 * time.Millisecond, 3 * time.Second
		wait, slack       = 300 * time.Millisecond, 700 * time.Millisecond
	)
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		p, proxied := faultProxy(t, pgtest.DSN(t), "idle_session_timeout=1000")
		direct := s.open(t, pgtest.DSN(t))
		db := s.open(t, proxied)
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
		a := l.Mutex(t.Name() + "/a")
		require.NoError(t, a.Lock(t.Context()))
		p.Blackhole()
		stuck := faultGo(func() error { return l.Mutex(t.Name() + "/stuck").Lock(context.Background()) })
		for !sqllock.StatementRunning(l) {
			time.Sleep(time.Millisecond)
		}
		var chs []<-chan faultResult
		start := time.Now()
		for i := range 4 {
			m := l.Mutex(fmt.Sprintf("%s/%d", t.Name(), i))
			chs = append(chs, faultGo(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				defer cancel()
				return m.Lock(ctx)
			}))
		}
		for i, ch := range chs {
			r := faultWithin(t, ch, timeout+slack, "a queued Lock")
			faultFigure(t, "bounded", s.name, "busy-shared-session", r.at.Sub(start))
			require.ErrorIs(t, r.err, context.DeadlineExceeded, "Lock %d", i)
			assert.LessOrEqual(t, r.at.Sub(start), wait+slack, "Lock %d returns when its context ends", i)
		}
		r := faultWithin(t, stuck, 2*timeout+slack, "the stuck Lock")
		t.Logf("the stuck Lock: %v", r.err)
		notBlamingContext(t, r.err)
		require.NoError(t, p.Close())
		faultWithin(t, faultStamp(t, a.Done()), 2*timeout+slack, "a's Done")
		t.Logf("a's loss: %v", a.Err())
		notBlamingContext(t, a.Err())
		require.ErrorIs(t, a.Unlock(t.Context()), sqllock.ErrLockLost)
		waitRows(t, direct, a.Key(), 0, 0)
		faultNoConnsInUse(t, db)
	})
}

// TestFaultSlowServerOpensSharedSession: a server slow to accept a new
// shared session's connection is waited for as long as the caller's
// context allows, not cut off by the keep-alive timeout with an error
// that blames a context the caller never ended.
func TestFaultSlowServerOpensSharedSession(t *testing.T) {
	const interval, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	eachFaultSetup(t, func(t *testing.T, s faultSetup) {
		p, proxied := faultProxy(t, pgtest.DSN(t))
		direct := s.open(t, pgtest.DSN(t))
		db := s.open(t, proxied)
		require.NoError(t, db.PingContext(t.Context()))
		db.SetMaxIdleConns(0) // the session's connection is a new one
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithKeepAlive(interval, timeout))
		m := l.Mutex(t.Name())

		p.Blackhole()
		resume := time.AfterFunc(4*timeout, p.Resume)
		defer resume.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		require.NoError(t, m.Lock(ctx), "a slow server is not a lost one")
		require.NoError(t, m.Unlock(t.Context()))
		waitRows(t, direct, m.Key(), 0, 0)

		// A caller whose own context ends while the server stays silent
		// is told so.
		p.Blackhole()
		ctx, cancel = context.WithTimeout(t.Context(), 2*timeout)
		defer cancel()
		m2 := l.Mutex(t.Name() + "/2")
		err := m2.Lock(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NoError(t, p.Close())
		faultNoConnsInUse(t, db)
		waitRows(t, direct, m2.Key(), 0, 0)
	})
}

// notBlamingContext checks that err, which a bound of sqllock's own caused,
// says so with ErrNoAnswer and blames no context: the caller ended none.
func notBlamingContext(t *testing.T, err error) {
	t.Helper()
	require.ErrorIs(t, err, sqllock.ErrNoAnswer)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, context.Canceled)
}

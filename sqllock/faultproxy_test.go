package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/require"
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

// notBlamingContext checks that err, which a bound of sqllock's own caused,
// says so with ErrNoAnswer and blames no context: the caller ended none.
func notBlamingContext(t *testing.T, err error) {
	t.Helper()
	require.ErrorIs(t, err, sqllock.ErrNoAnswer)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, context.Canceled)
}

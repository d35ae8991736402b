// Package pgtest finds or starts a PostgreSQL server for tests that need a
// live database.
//
// Every test in this repository that talks to a real PostgreSQL server gets
// its connection string from this package. A package using it should call
// [Main] from its TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// and then use [DSN] or [DB] in its tests. The server is found once per test
// process, in this order:
//
//  1. the connection string in the PG_CONNECTION_STRING environment variable,
//     used as is;
//  2. a local server on 127.0.0.1:5432 (user postgres, database postgres, no
//     password), if it answers a query within a few seconds;
//  3. a throwaway cluster started from the installed PostgreSQL binaries
//     (initdb and pg_ctl on PATH, or in /usr/lib/postgresql/*/bin), which
//     [Main] stops and deletes when the tests are done.
//
// If none of these works, tests are skipped, or fail when the environment
// variable CI is true.
//
// Tests that need a server of their own, for example to restart or kill it,
// use [NewCluster], which always starts a fresh dedicated cluster.
package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib" // also registers the "pgx" database/sql driver
	_ "github.com/lib/pq"            // registers the "postgres" database/sql driver
)

// EnvConnectionString is the environment variable that, when set, holds the
// connection string of the server to test against. It is used as is.
const EnvConnectionString = "PG_CONNECTION_STRING"

// localDSN is the well-known local server tried when EnvConnectionString is
// not set.
const localDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const (
	localProbeTimeout = 3 * time.Second  // how long the local server has to answer
	pingTimeout       = 10 * time.Second // how long DB waits for its first ping
)

// discovery caches the result of finding a server. It is the only global
// mutable state in this package; once guards every access to res.
var discovery struct {
	once sync.Once
	res  discoveryResult
}

type discoveryResult struct {
	dsn     string
	cluster *Cluster // throwaway cluster started by this process, if any
	err     error    // why no server could be found or started
	done    bool     // discovery really ran (Main may complete once with a no-op)
}

// discover finds or starts a server, in the documented order.
func discover() discoveryResult {
	if dsn, ok := os.LookupEnv(EnvConnectionString); ok && dsn != "" {
		return discoveryResult{dsn: dsn, done: true}
	}
	tried := []string{EnvConnectionString + " is not set"}

	if err := probe(localDSN, localProbeTimeout); err == nil {
		return discoveryResult{dsn: localDSN, done: true}
	} else {
		tried = append(tried, fmt.Sprintf("local server 127.0.0.1:5432: %v", err))
	}

	c, err := startCluster(nil)
	if err == nil {
		return discoveryResult{dsn: c.DSN(), cluster: c, done: true}
	}
	tried = append(tried, fmt.Sprintf("throwaway cluster: %v", err))

	msg := "no PostgreSQL server available; tried:"
	for _, t := range tried {
		msg += "\n  - " + t
	}
	msg += "\nset " + EnvConnectionString + ", start a server on 127.0.0.1:5432 " +
		"(user postgres, trust auth), or install the PostgreSQL server binaries (initdb, pg_ctl)"
	return discoveryResult{err: fmt.Errorf("%s", msg), done: true}
}

// probe opens dsn with the pgx driver and runs SELECT 1, all within timeout.
func probe(dsn string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return fmt.Errorf("SELECT 1 returned %d", one)
	}
	return nil
}

// Main runs the tests of m and exits with their status. Call it from
// TestMain. Before exiting it stops and deletes the throwaway cluster that
// [DSN] or [DB] may have started in this process.
//
// A package whose tests use DSN or DB without calling Main may leave a
// throwaway PostgreSQL server running after the tests end.
//
// Each check runs after the tests pass, for example a goroutine-leak check;
// a check's error is printed and fails the run.
func Main(m *testing.M, checks ...func() error) {
	os.Exit(runMain(m, checks...))
}

func runMain(m *testing.M, checks ...func() error) int {
	defer stopDiscovered()
	code := m.Run()
	if code != 0 {
		return code
	}
	for _, check := range checks {
		if err := check(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: check after tests: %v\n", err)
			return 1
		}
	}
	return 0
}

// stopDiscovered stops the throwaway cluster found by discovery, if any. It
// completes the Once with a no-op if discovery never ran, so that no cluster
// can be started after it.
func stopDiscovered() {
	discovery.once.Do(func() {})
	if c := discovery.res.cluster; c != nil {
		if err := c.destroy(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stopping throwaway cluster: %v\n", err)
		}
	}
}

// DSN returns the URL-form connection string
// (postgres://user@host:port/db?sslmode=disable) of the server to test
// against, usable with both the "pgx" and "postgres" (lib/pq) drivers. When
// the server comes from PG_CONNECTION_STRING, that string is returned
// unchanged.
//
// The server is looked for on the first call in the process; later calls
// return the same answer. If no server can be found or started, DSN skips the
// test, or fails it when the environment variable CI is true, with a message
// saying everything that was tried.
func DSN(tb testing.TB) string {
	tb.Helper()
	discovery.once.Do(func() { discovery.res = discover() })
	res := discovery.res
	switch {
	case res.err != nil:
		skipOrFatal(tb, "pgtest: %v", res.err)
	case !res.done:
		tb.Fatalf("pgtest: DSN called after pgtest.Main finished the tests")
	}
	return res.dsn
}

// Drivers returns the names of the database/sql drivers the tests should be
// run with: "pgx" (github.com/jackc/pgx/v5/stdlib) and "postgres"
// (github.com/lib/pq). It returns a new slice on each call.
func Drivers() []string {
	return []string{"pgx", "postgres"}
}

// DB opens a connection pool to the server of [DSN] with the named
// database/sql driver, "pgx" or "postgres" (lib/pq), and checks that it
// answers. The pool is closed when the test ends. An unknown driver name,
// or a server that does not answer within 10 seconds, fails the test; no
// server at all skips it as DSN does.
func DB(tb testing.TB, driver string) *sql.DB {
	tb.Helper()
	var db *sql.DB
	switch driver {
	case PgxCancelRequest:
		db = OpenPgxCancelRequest(tb, DSN(tb))
	case PgxPoolBridge:
		db = OpenPgxPoolBridge(tb, DSN(tb))
	case "pgx", "postgres":
		var err error
		if db, err = sql.Open(driver, DSN(tb)); err != nil {
			tb.Fatalf("pgtest: sql.Open(%q): %v", driver, err)
		}
		tb.Cleanup(func() { _ = db.Close() })
	default:
		tb.Fatalf("pgtest: unknown driver %q; want one of %q, %q or %q", driver, Drivers(), PgxCancelRequest, PgxPoolBridge)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		tb.Fatalf("pgtest: ping with driver %q: %v", driver, err)
	}
	return db
}

// PgxCancelRequest names, for [DB], pgx's stdlib configured with
// pgconn.CancelRequestContextWatcherHandler: a cancelled context sends the
// server a cancel request and keeps the connection, instead of closing it.
const PgxCancelRequest = "pgx-cancelrequest"

// OpenPgxCancelRequest opens dsn as [PgxCancelRequest] describes, closed
// when the test ends. It does not ping.
func OpenPgxCancelRequest(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("pgtest: parsing %q: %v", dsn, err)
	}
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: time.Second}
	}
	db := stdlib.OpenDB(*cfg)
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

// PgxPoolBridge names, for [DB], pgx's pool bridge: a pgxpool.Pool handed
// to database/sql with stdlib.OpenDBFromPool, as applications built on
// pgxpool do for libraries that want a *sql.DB. Closing a database/sql
// connection hands the pgx connection back to pgxpool: its server session,
// and anything it holds, lives on.
const PgxPoolBridge = "pgx-poolbridge"

// OpenPgxPoolBridge opens dsn as [PgxPoolBridge] describes; the pool and
// the *sql.DB are closed when the test ends. It does not ping. Unless dsn
// sets pool_max_conns, the pool may open 20 connections: pgxpool's default
// (four on this machine) is fewer than a test holding three locks, waiting
// for a fourth and querying pg_locks needs, and database/sql's own limits
// do not apply to the connections behind the bridge.
func OpenPgxPoolBridge(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("pgtest: pgxpool.ParseConfig(%q): %v", dsn, err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = 20
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("pgtest: pgxpool.NewWithConfig(%q): %v", dsn, err)
	}
	db := stdlib.OpenDBFromPool(pool)
	tb.Cleanup(func() {
		_ = db.Close()
		pool.Close()
	})
	return db
}

// skipOrFatal skips the test, or fails it if CI is true.
func skipOrFatal(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if inCI() {
		tb.Fatalf(format, args...)
	}
	tb.Skipf(format, args...)
}

// inCI reports whether the environment variable CI is set to a true value
// ("true", "1", ...).
func inCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// ExportEnv finds the server as [DSN] does and sets PG_CONNECTION_STRING to
// it for this process, so that Example functions and child processes (such
// as a withlock binary under test) reach the same server. Call it from
// TestMain before [Main]. It returns why no server could be found, if so.
func ExportEnv() error {
	discovery.once.Do(func() { discovery.res = discover() })
	if discovery.res.err != nil {
		return discovery.res.err
	}
	return os.Setenv(EnvConnectionString, discovery.res.dsn)
}

// Find finds or starts a server the way the tests do, for programs outside
// tests (make demo): PG_CONNECTION_STRING, the local server, or a throwaway
// cluster. stop stops and deletes the throwaway cluster, if one was started;
// call it when done.
func Find() (dsn string, stop func() error, err error) {
	res := discover()
	if res.err != nil {
		return "", nil, res.err
	}
	stop = func() error { return nil }
	if res.cluster != nil {
		stop = res.cluster.destroy
	}
	return res.dsn, stop, nil
}

package conntest_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/advisorylock/go-advisory-lock/conntest"
	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func TestMain(m *testing.M) { pgtest.Main(m, func() error { return goleak.Find() }) }

// TestRun runs the suite on every setup sqllock supports; all must pass.
func TestRun(t *testing.T) {
	t.Parallel()
	for _, s := range []struct {
		name string
		open func(t *testing.T) *sql.DB
		opts []sqllock.Option
	}{
		{"libpq", func(t *testing.T) *sql.DB { return pgtest.DB(t, "postgres") }, nil},
		{"pgx", func(t *testing.T) *sql.DB { return pgtest.DB(t, "pgx") }, nil},
		{"pgxCancelRequest", func(t *testing.T) *sql.DB { return pgtest.DB(t, pgtest.PgxCancelRequest) }, nil},
		{"pgbouncerSession", func(t *testing.T) *sql.DB { return openBouncer(t, "pgx", "session") }, nil},
		// lib/pq sends a query with parameters in two round trips, which a
		// transaction pooler may send to two server sessions, unless its
		// parameters go in binary: the suite's own queries have some.
		{"pgbouncerTransactionLibpq", func(t *testing.T) *sql.DB {
			return openBouncerDSN(t, "postgres", "transaction", "&binary_parameters=yes")
		}, nil},
		{"pgbouncerTransaction", func(t *testing.T) *sql.DB {
			return openBouncerDSN(t, "pgx", "transaction", "&default_query_exec_mode=simple_protocol")
		}, nil},
		{"pgbouncerTransactionExec", func(t *testing.T) *sql.DB {
			return openBouncerDSN(t, "pgx", "transaction", "&default_query_exec_mode=exec")
		}, nil},
		// WithSessions behind a transaction pooler: each session carries its
		// locks in a transaction it holds open while it carries any.
		{"pgbouncerTransactionSessions", func(t *testing.T) *sql.DB {
			return openBouncerDSN(t, "pgx", "transaction", "&default_query_exec_mode=exec")
		}, []sqllock.Option{sqllock.WithSessions(2)}},
		{"pgbouncerTransactionLibpqSessions", func(t *testing.T) *sql.DB {
			return openBouncerDSN(t, "postgres", "transaction", "&binary_parameters=yes")
		}, []sqllock.Option{sqllock.WithSessions(2)}},
		{"libpqSessions", func(t *testing.T) *sql.DB { return pgtest.DB(t, "postgres") }, []sqllock.Option{sqllock.WithSessions(2)}},
		{"pgxSessions", func(t *testing.T) *sql.DB { return pgtest.DB(t, "pgx") }, []sqllock.Option{sqllock.WithSessions(2)}},
		{"pgxSmallPool", func(t *testing.T) *sql.DB {
			db := pgtest.DB(t, "pgx")
			db.SetMaxOpenConns(3) // the least the suite needs
			return db
		}, nil},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			conntest.Run(t, s.open(t), s.opts...)
			t.Logf("suite took %v", time.Since(start))
		})
	}
}

// openBouncer opens driver through a real PgBouncer in the given pool mode.
// The session-mode row uses pgx, not lib/pq: Debian 12's PgBouncer (1.18) exits on a cancel request that
// races the end of its query ("server_proto: server in bad state: 11",
// pgbouncer/pgbouncer#822, fixed in 1.21.0), which CancelStorm provokes
// within a few runs; pgx, by default, closes the connection instead of
// sending a cancel request.
func openBouncer(t *testing.T, driver, mode string) *sql.DB {
	return openBouncerDSN(t, driver, mode, "")
}

// openBouncerDSN is openBouncer with params added to the pooler's DSN.
// The pooler has 8 server connections: the Semaphore check holds 5 at
// once, and in session mode database/sql's idle connections keep theirs.
func openBouncerDSN(t *testing.T, driver, mode, params string) *sql.DB {
	b := pgtest.NewBouncer(t, mode, 8)
	db, err := sql.Open(driver, b.DSN()+params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// brokenChildEnv marks the child process of TestBrokenSetupFails and names
// the broken setup it runs.
const brokenChildEnv = "CONNTEST_BROKEN_SETUP_CHILD"

// brokenSetups must each fail the suite, naming these checks.
var brokenSetups = []struct {
	name   string
	open   func(t *testing.T) *sql.DB
	failed []string
	cause  string // the failures name it
}{
	{"simulatedStatementPooler", openStatementPooler, []string{"SessionPinned", "Exclusion"}, "statement"},
	{"pgbouncerStatement", func(t *testing.T) *sql.DB { return openBouncer(t, "postgres", "statement") }, []string{"SessionPinned", "Exclusion"}, "statement"},
	{"stubAdvisoryLocks", openStubLocks, []string{"Exclusion"}, "CockroachDB"},
}

// TestBrokenSetupFails runs the suite against transaction poolers and a
// server whose advisory locks are stubs, which must fail it. A failing suite would fail this test, so the suite runs in a
// child process (this test binary again) and this test checks that the
// child failed, and which checks it names.
func TestBrokenSetupFails(t *testing.T) {
	t.Parallel()
	if child := os.Getenv(brokenChildEnv); child != "" {
		for _, s := range brokenSetups {
			if s.name == child {
				conntest.Run(t, s.open(t))
				return
			}
		}
		t.Fatalf("unknown broken setup %q", child)
	}
	dsn := pgtest.DSN(t) // the child uses the same server, even a throwaway one
	for _, s := range brokenSetups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBrokenSetupFails$", "-test.count=1", "-test.v", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), brokenChildEnv+"="+s.name, pgtest.EnvConnectionString+"="+dsn)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("child ran %v; its output:\n%s", time.Since(start), out)
			if err == nil && strings.Contains(string(out), "--- SKIP: TestBrokenSetupFails ") {
				// The child could not build the setup (no PgBouncer: make
				// test provisions it): not a pass, and under CI a failure.
				if os.Getenv("CI") == "true" {
					t.Fatalf("child skipped the suite against %s; CI must run it", s.name)
				}
				t.Skipf("child skipped the suite against %s (see its output)", s.name)
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("child running the suite against %s: exit error %v, want exit status 1 (tests failed)", s.name, err)
			}
			for _, bad := range []string{"panic:", "test timed out", "still running", "[no tests to run]", "--- SKIP: TestBrokenSetupFails "} {
				if strings.Contains(string(out), bad) {
					t.Errorf("child output contains %q, want the checks to fail cleanly", bad)
				}
			}
			for _, name := range s.failed {
				if want := "--- FAIL: TestBrokenSetupFails/" + name + " "; !strings.Contains(string(out), want) {
					t.Errorf("child output lacks %q, want %s to fail %s", want, s.name, name)
				}
			}
			if want := s.cause; !strings.Contains(string(out), want) {
				t.Errorf("child output lacks %q, want the failures to name the likely cause", want)
			}
		})
	}
}

// openStatementPooler returns a *sql.DB that behaves like a client of
// PgBouncer in pool_mode=statement (worse: it lets transactions begin, and
// selects servers round-robin): every statement of every client
// connection, in a transaction or not, runs on another server connection
// of an inner pool, and closing a client connection leaves the server
// sessions (and whatever locks they hold) open.
func openStatementPooler(t *testing.T) *sql.DB {
	inner := pgtest.DB(t, "pgx")
	inner.SetMaxIdleConns(32) // server sessions outlive their statements
	p := &fakedriver.Pooler{Inner: inner}
	db := sql.OpenDB(p)
	t.Cleanup(func() {
		_ = db.Close()
		p.Close()
	})
	return db
}

// openStubLocks returns a *sql.DB whose server's advisory-lock functions
// are stubs, as CockroachDB's are: each lock and try answers as granted and
// takes nothing. Statements reach a session of their own connection, as
// without a pooler; the server still calls itself PostgreSQL, so only what
// the locks do (not version()) can tell.
func openStubLocks(t *testing.T) *sql.DB {
	inner := pgtest.DB(t, "pgx")
	stub := regexp.MustCompile(`\bpg_(try_)?advisory_(un)?lock(_shared)?\(([^()]*)\)`)
	p := &fakedriver.Pooler{Inner: inner, Pin: true, Rewrite: func(q string) string {
		return stub.ReplaceAllStringFunc(q, func(call string) string {
			m := stub.FindStringSubmatch(call)
			args := strings.Split(m[4], ",")
			for i := range args {
				args[i] += "::int8"
			}
			some := "num_nulls(" + strings.Join(args, ",") + ")"
			if m[1] == "" && m[2] == "" {
				return "pg_sleep(0*" + some + ")" // void, as pg_advisory_lock: "granted"
			}
			return "(" + some + " = 0)" // true: "granted", or "released"
		})
	}}
	db := sql.OpenDB(p)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

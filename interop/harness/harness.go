// Package harness runs the interop tests: it builds withlock from this
// repository, gives the test binary a database of its own, and drives
// withlock and other ecosystems' lock clients against it.
//
// Advisory locks belong to one database, so the tests' locks never meet
// those of other tests on the same server, even for goose's one fixed key.
package harness

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	_ "github.com/jackc/pgx/v5/stdlib" // the pgx database/sql driver
)

// localDSN is the server the tests use when PG_CONNECTION_STRING is unset,
// as in the main module's internal/pgtest.
const localDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Timeout bounds every wait of the harness: a hang fails instead of stalling.
const Timeout = 30 * time.Second

var withlockBin string // set by Main

// Main builds withlock from the repository around the working directory,
// runs the tests and removes the build.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "interop-withlock-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		return 1
	}
	withlockBin = filepath.Join(dir, "withlock")
	build := exec.Command("go", "build", "-o", withlockBin, "./cmd/withlock")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "harness: building withlock:", err)
		return 1
	}
	code := m.Run()
	if shared.drop != nil {
		if err := shared.drop(); err != nil {
			fmt.Fprintln(os.Stderr, "harness: dropping the test database:", err)
			return 1
		}
	}
	return code
}

// repoRoot finds the directory holding cmd/withlock, above the working
// directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "cmd", "withlock", "main.go")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no cmd/withlock/main.go above the working directory")
		}
		dir = parent
	}
}

// Require stops the test when a dependency is missing: it fails under
// CI=true, where scripts/provision should have installed it, and skips
// elsewhere, saying how to install it.
func Require(t testing.TB, ok bool, what, install string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing (CI=true): %s", what, install)
	}
	t.Skipf("%s is missing: %s", what, install)
}

// RequireCommand requires that cmd runs and exits 0, as a probe that an
// interpreter and its libraries are installed.
func RequireCommand(t testing.TB, what, install string, cmd ...string) {
	t.Helper()
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil {
		t.Logf("%q: %v\n%s", cmd, err, out)
	}
	Require(t, err == nil, what, install)
}

// DB is the test binary's own database, created on first use and dropped
// when the tests end. Tests that use it run one at a time and release every
// lock they take, even when they fail (see [DB.Open]).
type DB struct {
	Name string  // the database name
	DSN  string  // a postgres:// URL for it, with sslmode=disable
	SQL  *sql.DB // open on it (pgx)
}

var shared struct {
	once sync.Once
	db   *DB
	err  error // why the server could not be reached
	drop func() error
}

// NewDB returns the test binary's database, on the server named by
// PG_CONNECTION_STRING (a postgres:// URL), else the local server. A server
// that cannot be reached fails the test under CI=true and skips it elsewhere.
func NewDB(t testing.TB) *DB {
	t.Helper()
	shared.once.Do(func() { shared.db, shared.drop, shared.err = createDB() })
	if shared.err != nil {
		Require(t, false, "PostgreSQL", shared.err.Error())
	}
	if shared.db == nil {
		t.Fatal("harness: no database")
	}
	return shared.db
}

func createDB() (*DB, func() error, error) {
	base := os.Getenv("PG_CONNECTION_STRING")
	if base == "" {
		base = localDSN
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, nil, fmt.Errorf("PG_CONNECTION_STRING %q: the interop tests need a postgres:// URL", base)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		return nil, nil, fmt.Errorf("%s: %w: start it or set PG_CONNECTION_STRING", u.Redacted(), err)
	}
	name := fmt.Sprintf("interop_%d", os.Getpid())
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		admin.Close()
		return nil, nil, fmt.Errorf("CREATE DATABASE %s: %w", name, err)
	}
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	u.Path, u.RawQuery = "/"+name, q.Encode()
	db := &DB{Name: name, DSN: u.String()}
	db.SQL, _ = sql.Open("pgx", db.DSN) // sql.Open of a registered driver does not fail
	drop := func() error {
		db.SQL.Close()
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		_, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`)
		return err
	}
	return db, drop, nil
}

// Open returns a pool of its own on db, closed when the test ends. Give
// each lock client its own pool: closing it ends the client's sessions, so
// a test that fails while a client holds a lock cannot leave the lock to the
// next test.
func (db *DB) Open(t testing.TB) *sql.DB {
	t.Helper()
	pool, err := sql.Open("pgx", db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool
}

// TryWithlock runs `withlock -n --keyspace ks name -- true` on db and
// returns its exit status: 75 when the lock is held elsewhere, 0 when it
// was free.
func (db *DB) TryWithlock(t testing.TB, ks, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, withlockBin, "-n", "--db", db.DSN, "--keyspace", ks, name, "--", "true")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		t.Logf("withlock -n --keyspace %s %s: exit %d: %s", ks, name, exit.ExitCode(), strings.TrimSpace(string(out)))
		return exit.ExitCode()
	}
	t.Fatalf("withlock: %v: %s", err, out)
	return -1
}

// HoldWithlock starts `withlock --keyspace ks name -- cat` on db and
// returns once withlock runs cat, that is, once it holds the lock. release
// closes cat's input, so withlock releases the lock, and checks that it
// exited 0. The test's cleanup releases it too.
func (db *DB) HoldWithlock(t testing.TB, ks, name string) (release func()) {
	t.Helper()
	return Hold(t, withlockBin, "--db", db.DSN, "--keyspace", ks, name, "--", "sh", "-c", "echo held; exec cat >/dev/null")
}

// Hold starts a command that prints the line "held" once it holds a lock
// and releases it and exits 0 when its standard input ends. Hold returns
// once the line arrives; release ends the input and waits for the exit.
func Hold(t testing.TB, name string, args ...string) (release func()) {
	t.Helper()
	cmd := exec.Command(name, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	held := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if sc.Text() == "held" && !ok {
				ok = true
				held <- true
			}
		}
		if !ok {
			held <- false
		}
		io.Copy(io.Discard, stdout)
	}()
	done := false
	release = func() {
		t.Helper()
		if done {
			return
		}
		done = true
		stdin.Close()
		errc := make(chan error, 1)
		go func() { errc <- cmd.Wait() }()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("%s %q: %v\n%s", filepath.Base(name), args, err, stderr.String())
			}
		case <-time.After(Timeout):
			cmd.Process.Kill()
			t.Errorf("%s %q: still running %v after its input ended", filepath.Base(name), args, Timeout)
		}
	}
	t.Cleanup(release)
	select {
	case ok := <-held:
		if !ok {
			release()
			t.Fatalf("%s %q ended without printing held:\n%s", filepath.Base(name), args, stderr.String())
		}
	case <-time.After(Timeout):
		cmd.Process.Kill()
		t.Fatalf("%s %q: no held line within %v:\n%s", filepath.Base(name), args, Timeout, stderr.String())
	}
	return release
}

// Run runs a command to its end and returns its standard output, trimmed.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", filepath.Base(name), args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// lockRows counts the advisory locks on key in db's database, granted or
// waiting.
func (db *DB) lockRows(t testing.TB, key keyspace.Key, granted bool) int {
	t.Helper()
	classid, objid, objsubid := key.LockTag()
	var n int
	err := db.SQL.QueryRow(`SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = $1 AND objid = $2 AND objsubid = $3 AND granted = $4`,
		int64(classid), int64(objid), objsubid, granted).Scan(&n)
	if err != nil {
		t.Fatalf("pg_locks: %v", err)
	}
	return n
}

// WantHeld checks that some session holds key in db's database, as
// pg_locks shows it: the other client locked exactly the key the keyspace
// computes.
func (db *DB) WantHeld(t testing.TB, key keyspace.Key) {
	t.Helper()
	if n := db.lockRows(t, key, true); n != 1 {
		t.Fatalf("pg_locks: %d granted advisory locks on %v, want 1", n, key)
	}
}

// WaitForWaiter returns once pg_locks shows a session waiting for key in
// db's database; it fails the test after Timeout.
func (db *DB) WaitForWaiter(t testing.TB, key keyspace.Key) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for db.lockRows(t, key, false) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pg_locks: no session waiting for %v after %v", key, Timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Key returns the key that the keyspace registry name ks gives name.
func Key(t testing.TB, ks, name string) keyspace.Key {
	t.Helper()
	s, err := keyspace.Lookup(ks)
	if err != nil {
		t.Fatal(err)
	}
	return s.Key(name)
}

// SessionLocker is the lock interface of pressly/goose's lock package, the
// same in every version these tests use.
type SessionLocker interface {
	SessionLock(ctx context.Context, conn *sql.Conn) error
	SessionUnlock(ctx context.Context, conn *sql.Conn) error
}

// CheckSessionLocker proves that goose's session locker and
// `withlock --keyspace ks` contend, both ways. holder is the locker as goose
// builds it by default; quick gives up after one retry, so that it reports
// the lock taken instead of waiting out goose's five minutes.
func CheckSessionLocker(t *testing.T, ks string, holder, quick SessionLocker) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	key := Key(t, ks, "migrations")

	t.Run("GooseHolds", func(t *testing.T) {
		db := NewDB(t)
		conn, err := db.Open(t).Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := holder.SessionLock(ctx, conn); err != nil {
			t.Fatalf("goose SessionLock: %v", err)
		}
		db.WantHeld(t, key)
		if got := db.TryWithlock(t, ks, "migrations"); got != 75 {
			t.Errorf("withlock -n while goose holds its lock: exit %d, want 75", got)
		}
		if err := holder.SessionUnlock(ctx, conn); err != nil {
			t.Fatalf("goose SessionUnlock: %v", err)
		}
		if got := db.TryWithlock(t, ks, "migrations"); got != 0 {
			t.Errorf("withlock -n after goose unlocked: exit %d, want 0", got)
		}
	})

	t.Run("WithlockHolds", func(t *testing.T) {
		db := NewDB(t)
		release := db.HoldWithlock(t, ks, "any name")
		db.WantHeld(t, key)
		conn, err := db.Open(t).Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := quick.SessionLock(ctx, conn); err == nil {
			t.Fatal("goose SessionLock succeeded while withlock held the lock")
		} else {
			t.Logf("goose SessionLock while withlock holds: %v", err)
		}
		release()
		if err := quick.SessionLock(ctx, conn); err != nil {
			t.Fatalf("goose SessionLock after withlock released: %v", err)
		}
		if err := quick.SessionUnlock(ctx, conn); err != nil {
			t.Fatalf("goose SessionUnlock: %v", err)
		}
	})
}

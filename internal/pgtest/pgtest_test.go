package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// queryInt runs a query returning one integer, failing the test on error.
func queryInt(t *testing.T, db *sql.DB, query string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	if err := db.QueryRowContext(ctx, query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// open opens dsn with driver, closed when the test ends.
func open(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("sql.Open(%q): %v", driver, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestDrivers(t *testing.T) {
	want := []string{"pgx", "postgres"}
	if got := Drivers(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Drivers() = %q, want %q", got, want)
	}
	Drivers()[0] = "changed"
	if got := Drivers(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Drivers() after changing a result = %q, want %q", got, want)
	}
	for _, d := range want {
		found := false
		for _, r := range sql.Drivers() {
			found = found || r == d
		}
		if !found {
			t.Errorf("driver %q not registered; have %q", d, sql.Drivers())
		}
	}
}

func TestDSN(t *testing.T) {
	dsn := DSN(t)
	if _, set := os.LookupEnv(EnvConnectionString); !set {
		u, err := url.Parse(dsn)
		if err != nil || u.Scheme != "postgres" || u.Query().Get("sslmode") != "disable" {
			t.Errorf("DSN() = %q, want a postgres:// URL with sslmode=disable (parse error: %v)", dsn, err)
		}
	}
	if again := DSN(t); again != dsn {
		t.Errorf("second DSN() = %q, want %q as the first", again, dsn)
	}
	for _, driver := range Drivers() {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			db := DB(t, driver)
			if n := queryInt(t, db, "SELECT 1"); n != 1 {
				t.Fatalf("SELECT 1 = %d", n)
			}
		})
	}
}

// fakeTB records Fatalf and Skipf instead of stopping the test; they panic
// with errStopped to end the function under test, as the real ones would.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

var errStopped = errors.New("test stopped")

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	panic(errStopped)
}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skip = fmt.Sprintf(format, args...)
	panic(errStopped)
}

// call runs fn with a fakeTB and returns it once fn returns or stops.
func call(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != errStopped {
				panic(r)
			}
		}()
		fn(f)
	}()
	return f
}

func TestDBUnknownDriver(t *testing.T) {
	f := call(t, func(tb testing.TB) { DB(tb, "mysql") })
	if !strings.Contains(f.fatal, `unknown driver "mysql"`) {
		t.Fatalf("DB with an unknown driver: Fatalf %q, Skipf %q; want Fatalf about the driver", f.fatal, f.skip)
	}
}

func TestSkipOrFatal(t *testing.T) {
	for _, tc := range []struct {
		ci        string
		wantFatal bool
	}{
		{"true", true},
		{"1", true},
		{"", false},
		{"false", false},
	} {
		t.Setenv("CI", tc.ci)
		f := call(t, func(tb testing.TB) { skipOrFatal(tb, "no server: %s", "tried x") })
		got := f.skip
		if tc.wantFatal {
			got = f.fatal
		}
		if got != "no server: tried x" {
			t.Errorf("CI=%q: Fatalf %q, Skipf %q; want the message in %s", tc.ci, f.fatal, f.skip,
				map[bool]string{true: "Fatalf", false: "Skipf"}[tc.wantFatal])
		}
	}
}

func TestParseSettings(t *testing.T) {
	got, err := parseSettings([]string{"wal_level=replica", "-c max_connections = 20", `cluster_name=it's a \ test`, "a.b="})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"wal_level = 'replica'", "max_connections = '20'", `cluster_name = 'it''s a \\ test'`, "a.b = ''"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseSettings = %q, want %q", got, want)
	}
	for _, bad := range []string{"wal_level", "=x", "bad key=1", "k=a\nb=c", "1x=2"} {
		if _, err := parseSettings([]string{bad}); err == nil {
			t.Errorf("parseSettings(%q) succeeded, want an error", bad)
		}
	}
}

func TestDirVersion(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/15/bin", "/usr/pgsql-10/bin", "/usr/lib/postgresql/16/bin"}
	if got := dirVersion(dirs[0]); !reflect.DeepEqual(got, []int{9, 6}) {
		t.Errorf("dirVersion(%q) = %v", dirs[0], got)
	}
	best := dirs[0]
	for _, d := range dirs[1:] {
		if versionLess(dirVersion(best), dirVersion(d)) {
			best = d
		}
	}
	if best != "/usr/lib/postgresql/16/bin" {
		t.Errorf("highest version is %q, want 16", best)
	}
}

func TestFindBinaries(t *testing.T) {
	root := t.TempDir()
	t.Setenv("PATH", filepath.Join(root, "empty"))
	globs := []string{filepath.Join(root, "pg", "*", "bin"), filepath.Join(root, "pgsql-*", "bin")}
	if _, _, err := findBinaries(globs); !errors.Is(err, errUnavailable) {
		t.Fatalf("findBinaries with nothing installed: %v, want errUnavailable", err)
	}
	install := func(dir string, names ...string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(filepath.Join(root, "pg", "9.6", "bin"), "initdb", "pg_ctl")
	install(filepath.Join(root, "pg", "15", "bin"), "initdb", "pg_ctl")
	install(filepath.Join(root, "pg", "16", "bin"), "initdb") // incomplete
	install(filepath.Join(root, "pgsql-10", "bin"), "initdb", "pg_ctl")
	initdb, pgCtl, err := findBinaries(globs)
	want := filepath.Join(root, "pg", "15", "bin")
	if err != nil || initdb != filepath.Join(want, "initdb") || pgCtl != filepath.Join(want, "pg_ctl") {
		t.Errorf("findBinaries = %q, %q, %v; want those in %s", initdb, pgCtl, err, want)
	}

	// PATH comes first.
	onPath := filepath.Join(root, "path")
	install(onPath, "initdb", "pg_ctl")
	t.Setenv("PATH", onPath)
	if initdb, pgCtl, err := findBinaries(globs); err != nil || filepath.Dir(initdb) != onPath || filepath.Dir(pgCtl) != onPath {
		t.Errorf("findBinaries = %q, %q, %v; want those on PATH in %s", initdb, pgCtl, err, onPath)
	}
}

// requireCluster skips or fails like NewCluster when no cluster can be
// started here.
func requireCluster(t *testing.T) {
	t.Helper()
	if _, _, err := findBinaries(binGlobs); err != nil {
		skipOrFatal(t, "%v", err)
	}
	if _, err := serverUser(); err != nil {
		skipOrFatal(t, "%v", err)
	}
}

// TestStartThrowaway tests the throwaway cluster that discovery starts when
// no other server is available.
func TestStartThrowaway(t *testing.T) {
	t.Parallel()
	requireCluster(t)
	start := time.Now()
	c, err := startCluster(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("throwaway cluster started in %v", time.Since(start))
	defer func() {
		if err := c.destroy(); err != nil {
			t.Error(err)
		}
	}()
	for _, driver := range Drivers() {
		if n := queryInt(t, open(t, driver, c.DSN()), "SELECT 1"); n != 1 {
			t.Errorf("%s: SELECT 1 = %d", driver, n)
		}
	}

	if err := c.destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.base); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s still there after destroy: %v", c.base, err)
	}
	if err := probe(c.DSN(), 3*time.Second); err == nil {
		t.Errorf("server still answers after destroy")
	}
}

func TestNewCluster(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, `cluster_name=it's a \ test`, "-c work_mem=7MB")
	if c.Port() <= 0 || !strings.Contains(c.DSN(), fmt.Sprintf(":%d/", c.Port())) {
		t.Errorf("Port() = %d, DSN() = %q", c.Port(), c.DSN())
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "PG_VERSION")); err != nil {
		t.Errorf("Dir() = %q is not a data directory: %v", c.Dir(), err)
	}

	dbs := map[string]*sql.DB{}
	for _, driver := range Drivers() {
		dbs[driver] = open(t, driver, c.DSN())
		if n := queryInt(t, dbs[driver], "SELECT 1"); n != 1 {
			t.Errorf("%s: SELECT 1 = %d", driver, n)
		}
	}
	db := dbs["pgx"]
	ctx := context.Background()
	var name, workMem string
	if err := db.QueryRowContext(ctx, "SELECT current_setting('cluster_name'), current_setting('work_mem')").Scan(&name, &workMem); err != nil {
		t.Fatal(err)
	}
	if name != `it's a \ test` || workMem != "7MB" {
		t.Errorf("cluster_name = %q, work_mem = %q; want the settings given to NewCluster", name, workMem)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	startTime := func(db *sql.DB) int64 {
		return queryInt(t, db, "SELECT (extract(epoch FROM pg_postmaster_start_time()) * 1e6)::bigint")
	}
	before := startTime(db)

	c.Restart(t)
	for _, driver := range Drivers() {
		// New pools: connections from before the restart are closed.
		db := open(t, driver, c.DSN())
		if after := startTime(db); after == before {
			t.Errorf("%s: server start time unchanged by Restart", driver)
		}
		if n := queryInt(t, db, "SELECT n FROM kept"); n != 42 {
			t.Errorf("%s: after Restart, kept.n = %d, want 42", driver, n)
		}
	}

	c.Stop(t)
	for _, driver := range Drivers() {
		if err := probe(c.DSN(), 3*time.Second); err == nil {
			t.Errorf("%s: query succeeds after Stop", driver)
		}
	}
	if out, err := c.PGCtl(t, "status"); err == nil {
		t.Errorf("pg_ctl status after Stop succeeded: %s", out)
	}

	c.Start(t)
	if n := queryInt(t, open(t, "postgres", c.DSN()), "SELECT n FROM kept"); n != 42 {
		t.Errorf("after Stop and Start, kept.n = %d, want 42", n)
	}
	if out, err := c.PGCtl(t, "status"); err != nil || !strings.Contains(out, "server is running") {
		t.Errorf("pg_ctl status after Start: %v\n%s", err, out)
	}
}

// TestNewClusterKill checks that a cluster whose server was killed is still
// cleaned up.
func TestNewClusterKill(t *testing.T) {
	t.Parallel()
	var dir string
	t.Run("kill", func(t *testing.T) {
		c := NewCluster(t)
		dir = c.base
		queryInt(t, open(t, "pgx", c.DSN()), "SELECT 1")
		b, err := os.ReadFile(filepath.Join(c.Dir(), "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		postmaster, _, _ := strings.Cut(string(b), "\n")
		if out, err := c.PGCtl(t, "kill", "KILL", postmaster); err != nil {
			t.Fatalf("pg_ctl kill: %v\n%s", err, out)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := c.pgctl("status"); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("server still running 10s after kill")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s still there after the test: %v", dir, err)
	}
}

func TestNewClusterBadSetting(t *testing.T) {
	f := call(t, func(tb testing.TB) { NewCluster(tb, "no_equals_sign") })
	if !strings.Contains(f.fatal, "bad setting") {
		t.Errorf("NewCluster with a bad setting: Fatalf %q, Skipf %q", f.fatal, f.skip)
	}
}

// StartCluster is NewCluster for programs: the caller destroys it. PID is
// the parent of its backends.
func TestStartCluster(t *testing.T) {
	requireCluster(t)
	t.Parallel()
	c, err := StartCluster("autovacuum=off")
	if err != nil {
		t.Fatal(err)
	}
	db := open(t, "pgx", c.DSN())
	backend := queryInt(t, db, "SELECT pg_backend_pid()")
	pid, err := c.PID()
	if err != nil {
		t.Fatal(err)
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", backend)); err == nil {
		// pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
		if f := strings.Fields(rest); len(f) < 2 || f[1] != strconv.Itoa(pid) {
			t.Errorf("PID() = %d, but backend %d has parent %v", pid, backend, f[1:2])
		}
	}
	db.Close()
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Errorf("Destroy left %s: %v", c.Dir(), err)
	}
}

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Timeouts of the steps of running a cluster. Every step is bounded.
const (
	initdbTimeout = 90 * time.Second // initdb on a slow, busy machine
	pgctlWaitSecs = 30               // pg_ctl -t: start, stop and restart
	pgctlTimeout  = 45 * time.Second // hard limit on one pg_ctl run
	readyTimeout  = 30 * time.Second // server answering a query after pg_ctl returns
	readyPoll     = 50 * time.Millisecond
	startAttempts = 3 // tries with a new port when the chosen one was taken
)

// superuser is the database superuser of every throwaway cluster, and the OS
// user clusters run as when the tests run as root.
const superuser = "postgres"

// errUnavailable marks errors meaning a cluster cannot be started on this
// machine at all (no binaries, no OS user to run them as), as opposed to a
// cluster that failed to start.
var errUnavailable = errors.New("cannot start a PostgreSQL cluster on this machine")

// Cluster is a throwaway PostgreSQL cluster run from the installed server
// binaries, listening on a loopback TCP port with trust authentication for
// the superuser "postgres". Create one with [NewCluster].
//
// It runs with fsync=off: its data survive a crash or kill of the server,
// not of the machine.
type Cluster struct {
	pgCtl   string  // path of pg_ctl
	base    string  // temporary directory holding everything below
	dataDir string  // base/data
	logFile string  // base/postgres.log
	port    int     // TCP port on 127.0.0.1
	runAs   *osUser // OS user running the server, nil for the current one
}

// NewCluster starts a new, dedicated throwaway cluster for the test and
// returns it once it answers queries; it is stopped and its files deleted
// when the test ends. Unlike [DSN] it never reuses an existing server, so the
// test may stop, restart or kill it.
//
// Each setting is a server configuration parameter as "key=value" (a leading
// "-c " is allowed), for example NewCluster(tb, "wal_level=logical"); the
// settings are written to the cluster's configuration, so they also apply
// after Stop and Start or Restart.
//
// If the PostgreSQL server binaries are not installed, NewCluster skips the
// test, or fails it when the environment variable CI is true. Any other
// failure to start fails the test.
func NewCluster(tb testing.TB, settings ...string) *Cluster {
	tb.Helper()
	conf, err := parseSettings(settings)
	if err != nil {
		tb.Fatalf("pgtest: NewCluster: %v", err)
	}
	start := time.Now()
	c, err := startCluster(conf)
	if err != nil {
		if errors.Is(err, errUnavailable) {
			skipOrFatal(tb, "pgtest: NewCluster: %v", err)
		}
		tb.Fatalf("pgtest: NewCluster: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.destroy(); err != nil {
			tb.Errorf("pgtest: cleaning up cluster: %v", err)
		}
	})
	tb.Logf("pgtest: cluster on port %d started in %v (data dir %s)",
		c.port, time.Since(start).Round(time.Millisecond), c.dataDir)
	return c
}

// StartCluster starts a dedicated throwaway cluster, as [NewCluster] does,
// for programs outside tests (make bench). The caller must call Destroy.
func StartCluster(settings ...string) (*Cluster, error) {
	conf, err := parseSettings(settings)
	if err != nil {
		return nil, err
	}
	return startCluster(conf)
}

// Destroy stops the server at once and removes the cluster's files.
func (c *Cluster) Destroy() error { return c.destroy() }

// PID returns the process ID of the cluster's postmaster, the parent of
// every backend, read from its postmaster.pid file.
func (c *Cluster) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// DSN returns the URL-form connection string of the cluster's "postgres"
// database as the "postgres" superuser, usable with both the "pgx" and
// "postgres" (lib/pq) drivers.
func (c *Cluster) DSN() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, c.port)
}

// Port returns the TCP port the cluster listens on at 127.0.0.1. It stays
// the same across Stop, Start and Restart.
func (c *Cluster) Port() int { return c.port }

// Dir returns the cluster's data directory.
func (c *Cluster) Dir() string { return c.dataDir }

// Stop shuts the server down (pg_ctl stop -m fast) and waits until it has
// exited. Connections to it fail until Start. Stopping a stopped cluster
// fails the test.
func (c *Cluster) Stop(tb testing.TB) {
	tb.Helper()
	if out, err := c.pgctl("stop", "-m", "fast", "-w", "-t", strconv.Itoa(pgctlWaitSecs)); err != nil {
		tb.Fatalf("pgtest: stopping cluster: %v\n%s", err, out)
	}
}

// Start starts the server again after Stop, on the same port and data
// directory, and waits until it answers queries.
func (c *Cluster) Start(tb testing.TB) {
	tb.Helper()
	if err := c.start(); err != nil {
		tb.Fatalf("pgtest: starting cluster: %v", err)
	}
}

// Restart restarts the server (pg_ctl restart -m fast) and waits until it
// answers queries again. Existing connections are closed by the server.
func (c *Cluster) Restart(tb testing.TB) {
	tb.Helper()
	off := c.logSize()
	out, err := c.pgctl("restart", "-m", "fast", "-w", "-t", strconv.Itoa(pgctlWaitSecs), "-l", c.logFile)
	if err == nil {
		err = waitReady(c.DSN())
	}
	if err != nil {
		tb.Fatalf("pgtest: restarting cluster: %v\n%s\nserver log:\n%s", err, out, c.logSince(off))
	}
}

// PGCtl runs pg_ctl with args for the cluster's data directory (PGDATA is
// set; args need no -D) and returns its combined output. It runs as the OS
// user the server runs as and is killed after 45 seconds. A failure is
// returned, not reported to tb; tb is only used to log the command.
//
// Give "-l", with a file name, to commands that start the server, so that
// its log is not written to the returned output.
func (c *Cluster) PGCtl(tb testing.TB, args ...string) (string, error) {
	tb.Helper()
	tb.Logf("pgtest: pg_ctl %s", strings.Join(args, " "))
	return c.pgctl(args...)
}

// startCluster creates and starts a throwaway cluster with the extra
// configuration conf (lines for postgresql.conf).
func startCluster(conf []string) (_ *Cluster, err error) {
	initdb, pgCtl, err := findBinaries(binGlobs)
	if err != nil {
		return nil, err
	}
	runAs, err := serverUser()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp(tempRoot(runAs != nil), "pgtest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		pgCtl:   pgCtl,
		base:    base,
		dataDir: filepath.Join(base, "data"),
		logFile: filepath.Join(base, "postgres.log"),
		runAs:   runAs,
	}
	defer func() {
		if err != nil {
			if derr := c.destroy(); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
		}
	}()
	if err := c.chown(base); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	out, err := c.run(ctx, initdb, "-D", c.dataDir, "-U", superuser, "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if err := c.configure(conf); err != nil {
		return nil, err
	}

	// The port is chosen free, but another process may take it before the
	// server binds it: try again with a new one.
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return nil, err
		}
		if err := c.writePortConf(); err != nil {
			return nil, err
		}
		off := c.logSize()
		err = c.start()
		if err == nil {
			return c, nil
		}
		if attempt == startAttempts || !strings.Contains(c.logSince(off), "already in use") {
			return nil, err
		}
	}
}

// configure makes postgresql.conf include pgtest.conf, holding the settings
// of throwaway clusters and conf, and pgtest-port.conf, holding the port.
func (c *Cluster) configure(conf []string) error {
	lines := []string{
		"# Written by pgtest.",
		"listen_addresses = '127.0.0.1'",
		"fsync = off",
	}
	// A Unix socket path is limited to about 100 bytes; use TCP only if the
	// temporary directory's path is too long.
	socketDir := c.base
	if len(filepath.Join(socketDir, ".s.PGSQL.65535.lock")) > 100 {
		socketDir = ""
	}
	lines = append(lines, "unix_socket_directories = "+quoteConf(socketDir))
	lines = append(lines, conf...)
	if err := c.writeConf("pgtest.conf", lines); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, "\ninclude 'pgtest.conf'\ninclude 'pgtest-port.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *Cluster) writePortConf() error {
	return c.writeConf("pgtest-port.conf", []string{"port = " + strconv.Itoa(c.port)})
}

func (c *Cluster) writeConf(name string, lines []string) error {
	path := filepath.Join(c.dataDir, name)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return c.chown(path)
}

// start starts the server and waits until it answers a query.
func (c *Cluster) start() error {
	off := c.logSize()
	out, err := c.pgctl("start", "-w", "-t", strconv.Itoa(pgctlWaitSecs), "-l", c.logFile)
	if err == nil {
		err = waitReady(c.DSN())
	}
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s\nserver log:\n%s", err, out, c.logSince(off))
	}
	return nil
}

// destroy stops the server at once (pg_ctl stop -m immediate) if it runs and
// removes the cluster's files. If the server cannot be stopped, its files are
// left in place.
func (c *Cluster) destroy() error {
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil {
		out, err := c.pgctl("stop", "-m", "immediate", "-w", "-t", strconv.Itoa(pgctlWaitSecs))
		if err != nil {
			// pg_ctl status exits with 3 when the server is not running,
			// as after a kill that left a stale postmaster.pid.
			var exitErr *exec.ExitError
			if _, serr := c.pgctl("status"); !errors.As(serr, &exitErr) || exitErr.ExitCode() != 3 {
				return fmt.Errorf("pg_ctl stop: %v\n%s\nfiles left in %s", err, out, c.base)
			}
		}
	}
	return os.RemoveAll(c.base)
}

// pgctl runs pg_ctl on the cluster, bounded by pgctlTimeout.
func (c *Cluster) pgctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgctlTimeout)
	defer cancel()
	return c.run(ctx, c.pgCtl, args...)
}

// run runs a PostgreSQL program as the cluster's OS user, with PGDATA set to
// the data directory, and returns its combined output.
//
// The output goes to a file rather than a pipe: a server started by pg_ctl
// without -l inherits it, and would keep a pipe open long after pg_ctl exits.
func (c *Cluster) run(ctx context.Context, exe string, args ...string) (string, error) {
	outFile, err := os.CreateTemp("", "pgtest-*.out")
	if err != nil {
		return "", err
	}
	defer os.Remove(outFile.Name())
	defer outFile.Close()

	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Dir = c.base
	cmd.Env = append(os.Environ(), "PGDATA="+c.dataDir)
	cmd.Stdout = outFile
	cmd.Stderr = outFile
	cmd.WaitDelay = 5 * time.Second
	c.runAs.setCredential(cmd)
	err = cmd.Run()
	out, _ := os.ReadFile(outFile.Name())
	if ctx.Err() != nil {
		err = fmt.Errorf("%v (%v)", err, ctx.Err())
	}
	return strings.TrimSpace(string(out)), err
}

// chown gives path to the cluster's OS user, if it is not the current one.
func (c *Cluster) chown(path string) error {
	if c.runAs == nil {
		return nil
	}
	return os.Chown(path, c.runAs.uid, c.runAs.gid)
}

// logSize returns the current size of the server log, to read what a step
// adds to it with logSince.
func (c *Cluster) logSize() int64 {
	fi, err := os.Stat(c.logFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns what the server log gained after offset off, at most its
// last 4000 bytes.
func (c *Cluster) logSince(off int64) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	b = b[off:]
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return strings.TrimSpace(string(b))
}

// waitReady polls until the server at dsn answers a query, for at most
// readyTimeout.
func waitReady(dsn string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		err := probe(dsn, 2*time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not answering after %v: %w", readyTimeout, err)
		}
		time.Sleep(readyPoll)
	}
}

// freePort returns a TCP port on 127.0.0.1 that is free right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// binGlobs are where distributions install versioned PostgreSQL binaries
// (Debian/Ubuntu, then the PGDG RPMs).
var binGlobs = []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"}

// findBinaries returns the paths of initdb and pg_ctl: from PATH, else from
// the directory of the highest PostgreSQL version matching globs.
func findBinaries(globs []string) (initdb, pgCtl string, err error) {
	if initdb, err := exec.LookPath("initdb"); err == nil {
		// Prefer the pg_ctl of the same installation.
		if pgCtl, err := exec.LookPath(filepath.Join(filepath.Dir(initdb), "pg_ctl")); err == nil {
			return initdb, pgCtl, nil
		}
		if pgCtl, err := exec.LookPath("pg_ctl"); err == nil {
			return initdb, pgCtl, nil
		}
	}
	var dirs []string
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		dirs = append(dirs, m...)
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		return versionLess(dirVersion(dirs[j]), dirVersion(dirs[i]))
	})
	for _, d := range dirs {
		initdb, err1 := exec.LookPath(filepath.Join(d, "initdb"))
		pgCtl, err2 := exec.LookPath(filepath.Join(d, "pg_ctl"))
		if err1 == nil && err2 == nil {
			return initdb, pgCtl, nil
		}
	}
	return "", "", fmt.Errorf("%w: initdb and pg_ctl not found on PATH or in %s",
		errUnavailable, strings.Join(globs, " or "))
}

var versionRE = regexp.MustCompile(`[0-9]+(\.[0-9]+)*`)

// dirVersion returns the version numbers in a binary directory's path (the
// last ones before /bin), as [15] for /usr/lib/postgresql/15/bin or [9 6] for
// /usr/pgsql-9.6/bin.
func dirVersion(dir string) []int {
	var v []int
	found := versionRE.FindAllString(filepath.Dir(dir), -1)
	if len(found) == 0 {
		return nil
	}
	for _, s := range strings.Split(found[len(found)-1], ".") {
		n, err := strconv.Atoi(s)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}

// tempRoot returns the directory to create cluster directories in. When the
// server runs as another OS user, that user must be able to reach it: if the
// usual temporary directory is not reachable by others, /tmp is used.
func tempRoot(otherUser bool) string {
	dir := os.TempDir()
	if !otherUser {
		return dir
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

var settingKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// parseSettings turns "key=value" settings into postgresql.conf lines.
func parseSettings(settings []string) ([]string, error) {
	var lines []string
	for _, s := range settings {
		kv := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "-c "))
		key, value, ok := strings.Cut(kv, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || !settingKeyRE.MatchString(key) || strings.ContainsAny(value, "\n\r\x00") {
			return nil, fmt.Errorf("bad setting %q: want key=value", s)
		}
		lines = append(lines, key+" = "+quoteConf(value))
	}
	return lines, nil
}

// quoteConf quotes a value for postgresql.conf.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `''`)
	return "'" + v + "'"
}

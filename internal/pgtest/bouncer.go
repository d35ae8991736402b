package pgtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A Bouncer is a PgBouncer started for one test, on a free loopback port,
// in front of the server of [DSN]. It is stopped when the test ends.
type Bouncer struct {
	dsn string
	log string
	pid int
}

// NewBouncer starts PgBouncer with the given pool_mode ("session",
// "transaction" or "statement") and default_pool_size in front of the test
// server. The pgbouncer binary must be installed (Debian's pgbouncer
// package); if it is not, the test is skipped, or fails when CI=true.
func NewBouncer(tb testing.TB, poolMode string, poolSize int) *Bouncer {
	tb.Helper()
	return NewBouncerFor(tb, DSN(tb), poolMode, poolSize)
}

// NewBouncerFor is NewBouncer in front of the server of dsn, a URL-form
// connection string (a [Cluster]'s, say).
func NewBouncerFor(tb testing.TB, dsn, poolMode string, poolSize int) *Bouncer {
	tb.Helper()
	exe, err := exec.LookPath("pgbouncer")
	if err != nil {
		exe = "/usr/sbin/pgbouncer"
		if _, serr := os.Stat(exe); serr != nil {
			skipOrFatal(tb, "pgtest: pgbouncer is not installed (make provision, or apt-get install pgbouncer): %v", err)
		}
	}
	target, err := url.Parse(dsn)
	if err != nil || target.Scheme == "" {
		tb.Fatalf("pgtest: NewBouncer needs a URL-form DSN, got %q: %v", dsn, err)
	}
	host, port := target.Hostname(), target.Port()
	if port == "" {
		port = "5432"
	}
	user := target.User.Username()
	if user == "" {
		user = superuser
	}
	dbname := strings.TrimPrefix(target.Path, "/")
	if dbname == "" {
		dbname = user
	}

	runAs, err := serverUser()
	if err != nil {
		skipOrFatal(tb, "pgtest: %v", err)
	}
	dir, err := os.MkdirTemp(tempRoot(runAs != nil), "pgbouncer-*")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if runAs != nil {
		if err := os.Chown(dir, runAs.uid, runAs.gid); err != nil {
			tb.Fatal(err)
		}
	}
	listen, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	conf := fmt.Sprintf(`[databases]
* = host=%s port=%s user=%s dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options
server_reset_query = DISCARD ALL
logfile = %s
`, host, port, user, dbname, listen, filepath.Join(dir, "users.txt"), poolMode, poolSize, filepath.Join(dir, "pgbouncer.log"))
	files := map[string]string{
		"pgbouncer.ini": conf,
		"users.txt":     fmt.Sprintf("%q \"\"\n", user),
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
	}

	cmd := exec.Command(exe, "-q", filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	runAs.setCredential(cmd)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("pgtest: starting pgbouncer: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			tb.Errorf("pgtest: pgbouncer exited while the test ran: %v\n%s", err, log)
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	b := &Bouncer{
		dsn: fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", url.User(user).String(), listen, dbname),
		log: filepath.Join(dir, "pgbouncer.log"),
		pid: cmd.Process.Pid,
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(listen), time.Second)
		if err == nil {
			c.Close()
			return b
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(b.log)
			tb.Fatalf("pgtest: pgbouncer exited: %v\n%s", err, log)
		case <-ctx.Done():
			tb.Fatalf("pgtest: pgbouncer not listening after %v", readyTimeout)
		case <-time.After(readyPoll):
		}
	}
}

// DSN returns the URL-form connection string of the pooler.
func (b *Bouncer) DSN() string { return b.dsn }

// PID returns the pooler's process id.
func (b *Bouncer) PID() int { return b.pid }

package pgtest

import (
	"context"
	"errors"
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

// A Bouncer is a PgBouncer on a free loopback port, in front of one
// server: started for one test ([NewBouncer], [NewBouncerFor]), stopped
// when it ends, or by a program ([StartBouncer]), which stops it.
type Bouncer struct {
	dsn    string
	log    string
	pid    int
	dir    string
	cfg    BouncerConfig
	listen int
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited
	err    error         // how it exited, once done is closed
}

// A BouncerConfig says how [StartBouncer] runs PgBouncer.
type BouncerConfig struct {
	Target   string // the URL-form connection string of the server behind it
	PoolMode string // "session", "transaction" or "statement"
	PoolSize int    // default_pool_size
	// Users are the roles clients sign in as, passed on to the server as
	// themselves; none: every client is Target's user on the server.
	Users []string
	// Settings are more "key = value" lines of its [pgbouncer] section.
	Settings []string
}

// errNoBouncer says that PgBouncer is not installed.
var errNoBouncer = errors.New("pgtest: pgbouncer is not installed (make provision, or apt-get install pgbouncer)")

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
	b, err := StartBouncer(BouncerConfig{Target: dsn, PoolMode: poolMode, PoolSize: poolSize})
	switch {
	case errors.Is(err, errNoBouncer) || errors.Is(err, errUnavailable):
		skipOrFatal(tb, "%v", err)
	case err != nil:
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if exited, err := b.Exited(); exited {
			log, _ := os.ReadFile(b.log)
			tb.Errorf("pgtest: pgbouncer exited while the test ran: %v\n%s", err, log)
		}
		_ = b.Stop()
	})
	return b
}

// StartBouncer starts PgBouncer as cfg says and waits until it listens.
// Stop it with [Bouncer.Stop].
func StartBouncer(cfg BouncerConfig) (*Bouncer, error) {
	exe, err := exec.LookPath("pgbouncer")
	if err != nil {
		exe = "/usr/sbin/pgbouncer"
		if _, serr := os.Stat(exe); serr != nil {
			return nil, fmt.Errorf("%w: %v", errNoBouncer, err)
		}
	}
	runAs, err := serverUser()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	dir, err := os.MkdirTemp(tempRoot(runAs != nil), "pgbouncer-*")
	if err != nil {
		return nil, err
	}
	b := &Bouncer{dir: dir, cfg: cfg, log: filepath.Join(dir, "pgbouncer.log"), done: make(chan struct{})}
	fail := func(err error) (*Bouncer, error) {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if runAs != nil {
		if err := os.Chown(dir, runAs.uid, runAs.gid); err != nil {
			return fail(err)
		}
	}
	if b.listen, err = freePort(); err != nil {
		return fail(err)
	}
	_, _, user, dbname, err := parseTarget(cfg.Target)
	if err != nil {
		return fail(err)
	}
	if err := b.writeConf(cfg.Target); err != nil {
		return fail(err)
	}
	b.cmd = exec.Command(exe, "-q", filepath.Join(dir, "pgbouncer.ini"))
	b.cmd.Dir = dir
	runAs.setCredential(b.cmd)
	if err := b.cmd.Start(); err != nil {
		return fail(fmt.Errorf("pgtest: starting pgbouncer: %w", err))
	}
	b.pid = b.cmd.Process.Pid
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	b.dsn = fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", url.User(user).String(), b.listen, dbname)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(b.listen), time.Second)
		if err == nil {
			c.Close()
			return b, nil
		}
		select {
		case <-b.done:
			log, _ := os.ReadFile(b.log)
			return fail(fmt.Errorf("pgtest: pgbouncer exited: %v\n%s", b.err, log))
		case <-ctx.Done():
			_ = b.cmd.Process.Kill()
			<-b.done
			return fail(fmt.Errorf("pgtest: pgbouncer not listening after %v", readyTimeout))
		case <-time.After(readyPoll):
		}
	}
}

// parseTarget reads the server a pooler stands in front of from dsn, a
// URL-form connection string: its host and port (5432 if none), user (the
// superuser if none) and database (the user's if none).
func parseTarget(dsn string) (host, port, user, dbname string, err error) {
	target, err := url.Parse(dsn)
	if err != nil || target.Scheme == "" {
		return "", "", "", "", fmt.Errorf("pgtest: a pooler needs a URL-form DSN, got %q: %v", dsn, err)
	}
	host, port = target.Hostname(), target.Port()
	if port == "" {
		port = "5432"
	}
	user = target.User.Username()
	if user == "" {
		user = superuser
	}
	dbname = strings.TrimPrefix(target.Path, "/")
	if dbname == "" {
		dbname = user
	}
	return host, port, user, dbname, nil
}

// writeConf writes the pooler's configuration, in front of the server of
// dsn, and its users.
func (b *Bouncer) writeConf(dsn string) error {
	host, port, user, dbname, err := parseTarget(dsn)
	if err != nil {
		return err
	}
	db := fmt.Sprintf("host=%s port=%s user=%s dbname=%s", host, port, user, dbname)
	users := fmt.Sprintf("%q \"\"\n", user)
	if len(b.cfg.Users) > 0 {
		db = fmt.Sprintf("host=%s port=%s dbname=%s", host, port, dbname)
		for _, u := range b.cfg.Users {
			users += fmt.Sprintf("%q \"\"\n", u)
		}
	}
	// The target's database by name, which a reload (Retarget) changes; any
	// other through the fallback.
	conf := fmt.Sprintf(`[databases]
%s = %s
* = %s

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
%s`, dbname, db, db, b.listen, filepath.Join(b.dir, "users.txt"), b.cfg.PoolMode, b.cfg.PoolSize, b.log, strings.Join(append(b.cfg.Settings, ""), "\n"))
	for name, text := range map[string]string{"pgbouncer.ini": conf, "users.txt": users} {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// LogFile returns the path of the pooler's log, which Stop removes.
func (b *Bouncer) LogFile() string { return b.log }

// Retarget points the pooler at the server of dsn (a URL-form connection
// string, as BouncerConfig.Target) and makes it reload its configuration:
// it closes its server connections to the old server as they are
// released, and opens new ones to the new.
func (b *Bouncer) Retarget(dsn string) error {
	if err := b.writeConf(dsn); err != nil {
		return err
	}
	if err := b.cmd.Process.Signal(reloadSignal); err != nil {
		log, _ := os.ReadFile(b.log)
		return fmt.Errorf("pgtest: reloading pgbouncer: %w\n%s", err, log)
	}
	return nil
}

// Exited reports whether the pooler has exited, and how, other than by
// Stop.
func (b *Bouncer) Exited() (bool, error) {
	select {
	case <-b.done:
		return true, b.err
	default:
		return false, nil
	}
}

// Stop stops the pooler and removes its files.
func (b *Bouncer) Stop() error {
	select {
	case <-b.done:
	default:
		_ = b.cmd.Process.Kill()
		<-b.done
	}
	return os.RemoveAll(b.dir)
}

// DSN returns the URL-form connection string of the pooler.
func (b *Bouncer) DSN() string { return b.dsn }

// PID returns the pooler's process id.
func (b *Bouncer) PID() int { return b.pid }

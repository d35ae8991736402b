package drivers_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "github.com/lib/pq"              // registers "postgres"

	"github.com/advisorylock/go-advisory-lock/conntest"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// Environment of a child process (this test binary again) that holds a
// lock for TwoProcesses: the setup it opens, the DSN and the lock name.
const (
	childSetupEnv = "DRIVERS_CHILD_SETUP"
	childDSNEnv   = "DRIVERS_CHILD_DSN"
	childNameEnv  = "DRIVERS_CHILD_LOCK"
)

func TestMain(m *testing.M) {
	if name := os.Getenv(childSetupEnv); name != "" {
		os.Exit(child(name, os.Getenv(childDSNEnv), os.Getenv(childNameEnv)))
	}
	pgtest.Main(m)
}

// TestMatrix proves each row of docs/drivers.md against the live server.
func TestMatrix(t *testing.T) {
	t.Parallel()
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			db, dsn := openSetup(t, s)
			t.Run("Conformance", func(t *testing.T) { conntest.Run(t, db, s.opts()...) })
			t.Run("CancelTorture", func(t *testing.T) { cancelTorture(t, db, s.opts()...) })
			t.Run("TwoProcesses", func(t *testing.T) { twoProcesses(t, s, dsn) })
		})
	}
}

// torturers is how many Locks the torture runs at once; tortureAttempts
// how many it runs in all.
const (
	torturers       = 6
	tortureAttempts = 48
)

// cancelTorture runs Locks and LockShareds with random deadlines (most
// too short to be granted, a quarter long enough to be granted once the
// first holder lets go, so that cancellations race grants) and Unlocks
// with random deadlines, then checks that pg_locks shows nothing at once.
func cancelTorture(t *testing.T, db *sql.DB, opts ...sqllock.Option) {
	l := sqllock.New(db, opts...)
	key := keyspace.SHA256Int64.Key(t.Name())
	holder := l.MutexKey(key)
	if err := holder.Lock(t.Context()); err != nil {
		t.Fatalf("Lock of a free lock: %v", err)
	}
	var (
		wg                   sync.WaitGroup
		mu                   sync.Mutex
		granted, interrupted int
		unexpected           []error
	)
	sem := make(chan struct{}, torturers)
	for i := range tortureAttempts {
		if i == tortureAttempts/2 {
			if err := holder.Unlock(t.Context()); err != nil {
				t.Fatalf("Unlock of the first holder: %v", err)
			}
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m := l.MutexKey(key)
			wait := time.Duration(1+rand.IntN(30_000)) * time.Microsecond
			if i%4 == 1 {
				wait += 500 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			lock, unlock := m.Lock, m.Unlock
			if i%3 == 0 {
				lock, unlock = m.LockShared, m.UnlockShared
			}
			err := lock(ctx)
			if err == nil {
				uctx, ucancel := context.WithTimeout(t.Context(), time.Duration(rand.IntN(2_000))*time.Microsecond)
				err = unlock(uctx)
				ucancel()
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				granted++
			case errors.Is(err, context.DeadlineExceeded):
				interrupted++
			default:
				unexpected = append(unexpected, err)
			}
		})
	}
	wg.Wait()
	for _, err := range unexpected {
		t.Errorf("Lock or Unlock under a deadline: %v, want nil or an error wrapping %v", err, context.DeadlineExceeded)
	}
	if rows := lockRows(t, db, key); len(rows) > 0 {
		t.Fatalf("pg_locks for %v right after every Lock and Unlock returned: %v, want none", key, rows)
	}
	t.Logf("%d attempts: %d granted and unlocked, %d cut short by their deadline", tortureAttempts, granted, interrupted)
}

// twoProcesses holds the lock in a child process that opens the same
// setup, and checks that this process is excluded until the child
// unlocks, and again until a second child is killed with SIGKILL.
func twoProcesses(t *testing.T, s setup, dsn string) {
	name := "drivers/" + t.Name()
	db, _ := openSetup(t, s)
	m := sqllock.New(db, s.opts()...).Mutex(name)

	for _, end := range []string{"unlock", "SIGKILL"} {
		c := startChild(t, s.name, dsn, name)
		ok, err := m.TryLock(t.Context())
		if err != nil || ok {
			t.Fatalf("TryLock while another process holds the lock = %v, %v; want false, nil", ok, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		err = m.Lock(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock for 100ms while another process holds the lock: %v, want an error wrapping %v", err, context.DeadlineExceeded)
		}
		if end == "unlock" {
			c.release(t)
		} else {
			c.kill(t)
		}
		ctx, cancel = context.WithTimeout(t.Context(), 20*time.Second)
		err = m.Lock(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Lock after the other process ended its hold (%s): %v", end, err)
		}
		if err := m.Unlock(t.Context()); err != nil {
			t.Fatalf("Unlock: %v", err)
		}
	}
}

// A holder is a child process that holds a lock.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startChild starts this test binary as a child that opens setup on dsn,
// locks name, says "locked" and holds the lock until its standard input
// closes.
func startChild(t *testing.T, setup, dsn, name string) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childSetupEnv+"="+setup, childDSNEnv+"="+dsn, childNameEnv+"="+name)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := h.out.ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "locked" {
			t.Fatalf("child holding %q said %q, want \"locked\"", name, s)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child holding %q said nothing for 30s", name)
	}
	return h
}

// release asks the child to unlock and waits for it to exit cleanly.
func (h *holder) release(t *testing.T) {
	t.Helper()
	_ = h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("child releasing its lock: %v", err)
	}
}

// kill ends the child with SIGKILL, lock held.
func (h *holder) kill(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = h.cmd.Wait()
}

// child is the child process of twoProcesses; it returns its exit code.
func child(setupName, dsn, name string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "drivers child (%s): %s\n", setupName, fmt.Sprintf(format, args...))
		return 1
	}
	s, err := setupNamed(setupName)
	if err != nil {
		return fail("%v", err)
	}
	db, closeMore, err := s.open(dsn)
	if err != nil {
		return fail("opening: %v", err)
	}
	defer func() {
		_ = db.Close()
		if closeMore != nil {
			closeMore()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := sqllock.New(db, s.opts()...).Mutex(name)
	if err := m.Lock(ctx); err != nil {
		return fail("Lock: %v", err)
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := m.Unlock(ctx); err != nil {
		return fail("Unlock: %v", err)
	}
	return 0
}

// A lockRow is one session holding or waiting for a key.
type lockRow struct {
	pid     int64
	granted bool
}

// lockRows returns the sessions that hold or wait for k.
func lockRows(t *testing.T, db *sql.DB, k keyspace.Key) []lockRow {
	t.Helper()
	c, o, s := k.LockTag()
	rs, err := db.QueryContext(t.Context(), `SELECT pid, granted FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = $3`, int64(c), int64(o), int64(s))
	if err != nil {
		t.Fatalf("querying pg_locks: %v", err)
	}
	defer rs.Close()
	var rows []lockRow
	for rs.Next() {
		var r lockRow
		if err := rs.Scan(&r.pid, &r.granted); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

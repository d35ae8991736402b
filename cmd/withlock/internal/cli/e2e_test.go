package cli

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// patience bounds every wait of the end-to-end tests; nothing should come
// near it.
const patience = 30 * time.Second

// e2e is what the end-to-end tests share: the withlock binary, the server's
// connection string and a pool on it.
type e2e struct {
	bin string
	dsn string
	db  *sql.DB
}

// TestEndToEnd builds the real withlock binary once and runs it as a process
// against a live PostgreSQL server, one parallel subtest per behaviour.
func TestEndToEnd(t *testing.T) {
	e := &e2e{dsn: pgtest.DSN(t), db: pgtest.DB(t, "pgx")}
	e.bin = buildWithlock(t)
	for _, tc := range []struct {
		name string
		test func(*testing.T, *e2e)
	}{
		{"Serialise", testSerialise},
		{"TryConflict", testTryConflict},
		{"Timeout", testTimeout},
		{"Shared", testShared},
		{"ExitStatus", testExitStatus},
		{"SignalForwarded", testSignalForwarded},
		{"SignalWhileWaiting", testSignalWhileWaiting},
		{"LossStopsCommand", testLossStopsCommand},
		{"WaiterTerminated", testWaiterTerminated},
		{"BadUsage", testBadUsage},
		{"Unreachable", testUnreachable},
		{"VerboseHidesPassword", testVerboseHidesPassword},
		{"Environment", testEnvironment},
		{"Status", testStatus},
		{"Terminate", testTerminate},
		{"Keyspaces", testKeyspaces},
		{"Fencing", testFencing},
		{"KilledHolder", testKilledHolder},
		{"KilledHolderGrandchild", testKilledHolderGrandchild},
		{"FrozenHolder", testFrozenHolder},
		{"TransactionPooler", testTransactionPooler},
		{"SemaphoreAtMostN", testSemaphoreAtMostN},
		{"SemaphoreTry", testSemaphoreTry},
		{"SemaphoreHandOff", testSemaphoreHandOff},
		{"SemaphoreKilledHolder", testSemaphoreKilledHolder},
		{"SemaphoreFencing", testSemaphoreFencing},
		{"SemaphoreLoss", testSemaphoreLoss},
		{"SemaphoreTerminate", testSemaphoreTerminate},
		{"SemaphoreStatus", testSemaphoreStatus},
		{"SemaphoreTransactionPooler", testSemaphoreTransactionPooler},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.test(t, e)
		})
	}
}

// buildWithlock builds cmd/withlock into a temporary directory that lasts
// as long as t, with -race if the tests run with it.
func buildWithlock(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("cannot build withlock: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "withlock")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/advisorylock/go-advisory-lock/cmd/withlock")
	start := time.Now()
	if out, err := exec.Command(goTool, args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("built withlock in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// baseEnv is the environment of the process without any variable that
// could name a database, so that each test says which one it uses. A
// withlock built with -race exits at once instead of sleeping a second.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == envConnectionString || k == envDatabaseURL || k == "GORACE" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GORACE=atexit_sleep_ms=0")
	return append(env, extra...)
}

// output collects a stream of the process and lets a test wait for text in
// it without sleeping.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor waits until the output contains s.
func (o *output) waitFor(t *testing.T, what, s string) {
	t.Helper()
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		found, changed := strings.Contains(o.buf.String(), s), o.changed
		o.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%s: got %q after %v, want it to contain %q", what, o.String(), patience, s)
		}
	}
}

// proc is one withlock process.
type proc struct {
	cmd            *exec.Cmd
	stdin          io.WriteCloser
	stdout, stderr *output
	done           chan struct{}
	exited         time.Time
}

// start starts withlock with args; env nil means baseEnv(). The process is
// killed if it still runs when the test ends.
func (e *e2e) start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return e.startWith(t, env, nil, args...)
}

// startWith is start with the process attributes attr.
func (e *e2e) startWith(t *testing.T, env []string, attr *syscall.SysProcAttr, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(e.bin, args...), stdout: newOutput(), stderr: newOutput(), done: make(chan struct{})}
	p.cmd.SysProcAttr = attr
	if env == nil {
		env = baseEnv()
	}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.WaitDelay = 5 * time.Second // a stray grandchild must not hang the test
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.exited = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if strings.Contains(p.stderr.String(), "DATA RACE") {
			t.Errorf("withlock %q reported a data race:\n%s", p.cmd.Args[1:], p.stderr)
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit status as a
// shell shows it (128+N for signal N).
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(patience):
		t.Fatalf("withlock %q still running after %v\nstdout: %s\nstderr: %s", p.cmd.Args[1:], patience, p.stdout, p.stderr)
	}
	return exitStatus(p.cmd.ProcessState)
}

// expect waits for the process to exit with want.
func (p *proc) expect(t *testing.T, want int) {
	t.Helper()
	if got := p.wait(t); got != want {
		t.Fatalf("withlock %q: exit status %d, want %d\nstdout: %s\nstderr: %s", p.cmd.Args[1:], got, want, p.stdout, p.stderr)
	}
}

// release ends a command that waits on `read x`.
func (p *proc) release(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, "\n"); err != nil {
		t.Fatal(err)
	}
}

// signal sends sig to withlock.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// run runs withlock to the end and returns its exit status and output.
func (e *e2e) run(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := e.start(t, env, args...)
	code = p.wait(t)
	return code, p.stdout.String(), p.stderr.String()
}

// db returns a --db flag for the test server.
func (e *e2e) dbFlag() string { return "--db=" + e.dsn }

// session is a database session holding or waiting for an advisory lock.
type session struct {
	pid     int
	granted bool
	shared  bool
}

// sessions lists the advisory-lock rows of sessions whose application_name
// is withlock:<name>.
func (e *e2e) sessions(t *testing.T, name string) []session {
	t.Helper()
	rows, err := e.db.QueryContext(t.Context(), `SELECT l.pid, l.granted, l.mode = 'ShareLock'
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND a.application_name = $1 ORDER BY l.granted DESC, l.pid`, "withlock:"+name)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []session
	for rows.Next() {
		var s session
		if err := rows.Scan(&s.pid, &s.granted, &s.shared); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitSessions polls pg_locks until withlock:<name> has exactly the given
// numbers of holding and waiting sessions.
func (e *e2e) waitSessions(t *testing.T, name string, holding, waiting int, within time.Duration) []session {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ss := e.sessions(t, name)
		h, w := 0, 0
		for _, s := range ss {
			if s.granted {
				h++
			} else {
				w++
			}
		}
		if h == holding && w == waiting {
			return ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock %q: got %d holding and %d waiting sessions (%+v) after %v, want %d and %d", name, h, w, ss, within, holding, waiting)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hold takes name's lock in the test process, as withlock's default
// keyspace names it, until the returned function is called or the test ends.
func (e *e2e) hold(t *testing.T, name string) (release func()) {
	t.Helper()
	return e.holdKey(t, sqllock.New(e.db).Mutex(name))
}

func (e *e2e) holdKey(t *testing.T, mu *sqllock.Mutex) (release func()) {
	t.Helper()
	if err := mu.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := mu.Unlock(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// assertFree checks that name's lock can be taken at once.
func (e *e2e) assertFree(t *testing.T, name string) {
	t.Helper()
	mu := sqllock.New(e.db).Mutex(name)
	ok, err := mu.TryLock(t.Context())
	if err != nil || !ok {
		t.Fatalf("TryLock(%q) = %v, %v after withlock exited; want the lock released", name, ok, err)
	}
	if err := mu.Unlock(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// assertNotExist checks that the command did not run.
func assertNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the command ran (stat %s: %v), want it not to", path, err)
	}
}

// waitForRead is a command that prints "started", waits for a line on stdin
// and prints "done".
var waitForRead = []string{"sh", "-c", `echo started; read x; echo done`}

func args(a ...any) []string {
	var out []string
	for _, x := range a {
		switch x := x.(type) {
		case string:
			out = append(out, x)
		case []string:
			out = append(out, x...)
		default:
			panic(fmt.Sprintf("args: %T", x))
		}
	}
	return out
}

func testSerialise(t *testing.T, e *e2e) {
	name := t.Name()
	log := filepath.Join(t.TempDir(), "log")
	child := []string{"sh", "-c", `echo "start $0" >> "$1"; echo started; read x; echo "end $0" >> "$1"`}
	a := e.start(t, nil, args(e.dbFlag(), name, "--", child, "A", log)...)
	a.stdout.waitFor(t, "A's stdout", "started")
	b := e.start(t, nil, args(name, e.dbFlag(), "--", child, "B", log)...)
	e.waitSessions(t, name, 1, 1, patience) // B waits in the server
	if strings.Contains(b.stdout.String(), "started") {
		t.Fatalf("B started while A held the lock")
	}
	a.release(t)
	a.expect(t, 0)
	b.stdout.waitFor(t, "B's stdout", "started")
	b.release(t)
	b.expect(t, 0)
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if want := "start A\nend A\nstart B\nend B\n"; string(got) != want {
		t.Errorf("log: got %q, want %q", got, want)
	}
	e.assertFree(t, name)
}

func testTryConflict(t *testing.T, e *e2e) {
	name := t.Name()
	marker := filepath.Join(t.TempDir(), "ran")
	release := e.hold(t, name)
	for _, tc := range []struct {
		flags []string
		want  int
	}{
		{[]string{"-n"}, ExitConflict},
		{[]string{"--try"}, ExitConflict},
		{[]string{"-n", "-E", "3"}, 3},
		{[]string{"--try", "--conflict-exit-code=0"}, 0},
	} {
		start := time.Now()
		code, _, stderr := e.run(t, nil, args(tc.flags, e.dbFlag(), name, "--", "touch", marker)...)
		if code != tc.want {
			t.Errorf("withlock %s: exit status %d, want %d\nstderr: %s", tc.flags, code, tc.want, stderr)
		}
		if stderr != "" {
			t.Errorf("withlock %s: stderr %q, want silence without -v", tc.flags, stderr)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("withlock %s took %v, want it not to wait", tc.flags, d)
		}
		assertNotExist(t, marker)
	}
	for _, flags := range [][]string{{"-n", "-v"}, {"-nv"}} {
		code, _, stderr := e.run(t, nil, args(flags, e.dbFlag(), name, "--", "touch", marker)...)
		if code != ExitConflict || !strings.Contains(stderr, "is taken; not waiting (--try)") {
			t.Errorf("withlock %s: exit status %d, stderr %q; want %d and a reason", flags, code, stderr, ExitConflict)
		}
		// Who holds it, as status says.
		if !strings.Contains(stderr, "withlock:   held by pid ") || !strings.Contains(stderr, ", session since ") {
			t.Errorf("withlock %s: stderr %q, want the holder's pid and session start", flags, stderr)
		}
	}
	release()
	if code, _, stderr := e.run(t, nil, "-n", e.dbFlag(), name, "--", "touch", marker); code != 0 {
		t.Fatalf("withlock -n on a free lock: exit status %d, want 0\nstderr: %s", code, stderr)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("withlock -n on a free lock did not run the command: %v", err)
	}
}

func testTimeout(t *testing.T, e *e2e) {
	name := t.Name()
	marker := filepath.Join(t.TempDir(), "ran")
	e.hold(t, name)
	const timeout = 500 * time.Millisecond
	for _, flag := range []string{"-w", "--timeout"} {
		start := time.Now()
		code, _, stderr := e.run(t, nil, flag, timeout.String(), e.dbFlag(), name, "--", "touch", marker)
		took := time.Since(start)
		if code != ExitConflict {
			t.Errorf("withlock %s %v: exit status %d, want %d\nstderr: %s", flag, timeout, code, ExitConflict, stderr)
		}
		if took < timeout || took > timeout+5*time.Second {
			t.Errorf("withlock %s %v took %v, want about %v", flag, timeout, took, timeout)
		}
		assertNotExist(t, marker)
	}
	// With -v, and the timeout in seconds, it says who holds the lock.
	code, _, stderr := e.run(t, nil, "-vw", "0.5", e.dbFlag(), name, "--", "touch", marker)
	if code != ExitConflict || !strings.Contains(stderr, "gave up waiting") || !strings.Contains(stderr, "withlock:   held by pid ") {
		t.Errorf("withlock -vw 0.5: exit status %d, stderr %q; want %d, the reason and the holder", code, stderr, ExitConflict)
	}
	assertNotExist(t, marker)
	// The abandoned wait was cancelled in the server: no backend stays
	// queued for the lock.
	e.waitSessions(t, name, 0, 0, 5*time.Second)
}

func testShared(t *testing.T, e *e2e) {
	name := t.Name()
	a := e.start(t, nil, args("-s", e.dbFlag(), name, "--", waitForRead)...)
	b := e.start(t, nil, args(name, "--shared", e.dbFlag(), "--", waitForRead)...)
	a.stdout.waitFor(t, "A's stdout", "started")
	b.stdout.waitFor(t, "B's stdout", "started") // both run at once
	for _, s := range e.waitSessions(t, name, 2, 0, patience) {
		if !s.shared {
			t.Errorf("session %d holds the lock exclusively, want shared", s.pid)
		}
	}
	if code, _, stderr := e.run(t, nil, "-n", e.dbFlag(), name, "--", "true"); code != ExitConflict {
		t.Errorf("exclusive withlock -n while shared holders run: exit status %d, want %d\nstderr: %s", code, ExitConflict, stderr)
	}
	if code, _, stderr := e.run(t, nil, "-n", "-s", e.dbFlag(), name, "--", "true"); code != 0 {
		t.Errorf("shared withlock -n while shared holders run: exit status %d, want 0\nstderr: %s", code, stderr)
	}
	a.release(t)
	b.release(t)
	a.expect(t, 0)
	b.expect(t, 0)
	e.assertFree(t, name)
}

func testExitStatus(t *testing.T, e *e2e) {
	for _, tc := range []struct {
		name    string
		command []string
		want    int
	}{
		{"zero", []string{"true"}, 0},
		{"one", []string{"false"}, 1},
		{"seven", []string{"sh", "-c", "exit 7"}, 7},
		{"conflict code", []string{"sh", "-c", "exit 75"}, 75},
		{"SIGKILL", []string{"sh", "-c", "kill -KILL $$"}, ExitSignalBase + int(syscall.SIGKILL)},
		{"SIGUSR1", []string{"sh", "-c", "kill -USR1 $$"}, ExitSignalBase + int(syscall.SIGUSR1)},
		{"args passed", []string{"sh", "-c", `[ "$1" = "a b" ] && [ "$2" = "--" ] && [ $# = 2 ] && [ "$0" = zero ]`, "zero", "a b", "--"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := e.run(t, nil, args(e.dbFlag(), t.Name(), "--", tc.command)...)
			if code != tc.want {
				t.Errorf("exit status %d, want %d\nstderr: %s", code, tc.want, stderr)
			}
		})
	}
	t.Run("stdio", func(t *testing.T) {
		t.Parallel()
		p := e.start(t, baseEnv("WITHLOCK_TEST_VAR=kept"), args(e.dbFlag(), t.Name(), "--", "sh", "-c", `read line; echo "out $line $WITHLOCK_TEST_VAR"; echo err >&2`)...)
		if _, err := io.WriteString(p.stdin, "in\n"); err != nil {
			t.Fatal(err)
		}
		p.expect(t, 0)
		if got := p.stdout.String(); got != "out in kept\n" {
			t.Errorf("stdout %q, want the command's stdin and environment echoed", got)
		}
		if got := p.stderr.String(); got != "err\n" {
			t.Errorf("stderr %q, want the command's alone", got)
		}
	})
	// A descriptor given to withlock reaches the command as it was, not
	// replaced by the lock's socket, which the command inherits too.
	t.Run("descriptor 3", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "out")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(e.bin, e.dbFlag(), t.Name(), "--", "sh", "-c", "echo via-3 >&3")
		cmd.Env, cmd.ExtraFiles = baseEnv(), []*os.File{f}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("withlock: %v\n%s", err, out)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != "via-3\n" {
			t.Errorf("descriptor 3's file holds %q, %v; want what the command wrote to it", got, err)
		}
	})
}

// trapChild prints "started", waits, and on sig prints got-<sig> and exits 3.
func trapChild(sig string) []string {
	return []string{"sh", "-c", `trap 'kill $p; echo got-` + sig + `; exit 3' ` + sig + `
sleep 60 & p=$!
echo started
wait $p`}
}

func testSignalForwarded(t *testing.T, e *e2e) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"INT", syscall.SIGINT}, {"TERM", syscall.SIGTERM}, {"HUP", syscall.SIGHUP},
		{"QUIT", syscall.SIGQUIT}, {"USR1", syscall.SIGUSR1}, {"USR2", syscall.SIGUSR2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			p := e.start(t, nil, args(e.dbFlag(), name, "--", trapChild(tc.name))...)
			p.stdout.waitFor(t, "stdout", "started")
			p.signal(t, tc.sig)
			p.stdout.waitFor(t, "stdout", "got-"+tc.name)
			p.expect(t, 3) // the command's own status
			e.assertFree(t, name)
		})
	}
	t.Run("untrapped", func(t *testing.T) {
		t.Parallel()
		name := t.Name()
		p := e.start(t, nil, e.dbFlag(), name, "--", "sh", "-c", "echo started; exec sleep 60")
		p.stdout.waitFor(t, "stdout", "started")
		p.signal(t, syscall.SIGTERM)
		p.expect(t, ExitSignalBase+int(syscall.SIGTERM))
		e.assertFree(t, name)
	})
}

func testSignalWhileWaiting(t *testing.T, e *e2e) {
	name := t.Name()
	marker := filepath.Join(t.TempDir(), "ran")
	e.hold(t, name)
	p := e.start(t, nil, "-v", e.dbFlag(), name, "--", "touch", marker)
	p.stderr.waitFor(t, "stderr", "waiting for lock")
	e.waitSessions(t, name, 0, 1, patience)
	p.signal(t, syscall.SIGINT)
	p.expect(t, ExitSignalBase+int(syscall.SIGINT))
	assertNotExist(t, marker)
	if !strings.Contains(p.stderr.String(), "SIGINT while waiting") {
		t.Errorf("stderr %q, want it to say the signal stopped the wait", p.stderr)
	}
	e.waitSessions(t, name, 0, 0, 5*time.Second) // the wait was cancelled in the server
}

// terminateHolder ends the backend of the session that holds
// withlock:<name>'s lock, as an administrator or a failover would.
func (e *e2e) terminateHolder(t *testing.T, name string) {
	t.Helper()
	var n int
	err := e.db.QueryRowContext(t.Context(), `SELECT count(pg_terminate_backend(l.pid))
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1`, "withlock:"+name).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminating the holder of %q: %d backends, %v; want 1", name, n, err)
	}
}

func testLossStopsCommand(t *testing.T, e *e2e) {
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"wait", nil},
		{"try", []string{"-n"}},
		{"shared", []string{"-s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			a := e.start(t, nil, args(tc.flags, "--keepalive", "100ms", e.dbFlag(), name, "--", trapChild("TERM"))...)
			a.stdout.waitFor(t, "A's stdout", "started")
			b := e.start(t, nil, e.dbFlag(), name, "--", "sh", "-c", "echo b-ran")
			e.waitSessions(t, name, 1, 1, patience)

			e.terminateHolder(t, name)
			a.stdout.waitFor(t, "A's stdout", "got-TERM") // the command was told
			a.expect(t, ExitLockLost)
			if !strings.Contains(a.stderr.String(), `lost lock "`+name+`" while the command ran`) {
				t.Errorf("A's stderr %q, want it to say the lock was lost", a.stderr)
			}
			b.expect(t, 0) // the waiter gets the lock
			if got := b.stdout.String(); got != "b-ran\n" {
				t.Errorf("B's stdout %q, want b-ran", got)
			}
		})
	}
	t.Run("grace", func(t *testing.T) {
		t.Parallel()
		name := t.Name()
		a := e.start(t, nil, "--keepalive", "100ms", "--grace", "300ms", e.dbFlag(), name, "--", "sh", "-c", `trap "" TERM; echo started; exec sleep 60`)
		a.stdout.waitFor(t, "stdout", "started")
		e.waitSessions(t, name, 1, 0, patience)
		e.terminateHolder(t, name)
		start := time.Now()
		a.expect(t, ExitLockLost) // a command that ignores SIGTERM is killed
		if took := a.exited.Sub(start); took > 5*time.Second {
			t.Errorf("withlock exited %v after the loss, want about the 300ms grace period plus the keep-alive", took)
		}
		if !strings.Contains(a.stderr.String(), "SIGKILL after 300ms") {
			t.Errorf("stderr %q, want it to announce SIGTERM then SIGKILL", a.stderr)
		}
	})
}

// testWaiterTerminated checks that a waiting withlock whose session is
// terminated (an administrator, a server restart) keeps waiting on a new
// session, as sqllock's Lock does, runs nothing until it holds the lock, and
// then runs the command.
func testWaiterTerminated(t *testing.T, e *e2e) {
	name := t.Name()
	marker := filepath.Join(t.TempDir(), "ran")
	release := e.hold(t, name)
	p := e.start(t, nil, e.dbFlag(), name, "--", "touch", marker)
	ss := e.waitSessions(t, name, 0, 1, patience)
	if _, err := e.db.ExecContext(t.Context(), "SELECT pg_terminate_backend($1)", ss[0].pid); err != nil {
		t.Fatal(err)
	}
	// It waits again, on another session.
	deadline := time.Now().Add(patience)
	for {
		again := e.waitSessions(t, name, 0, 1, patience)
		if again[0].pid != ss[0].pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still waiting on backend %d, the terminated one, after %v", ss[0].pid, patience)
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertNotExist(t, marker)
	release()
	p.expect(t, ExitOK)
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the command did not run after the lock was released: %v", err)
	}
}

func testBadUsage(t *testing.T, e *e2e) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"name", "make"}, "missing -- before the command"},
		{[]string{"--bogus", "name", "--", "true"}, "unknown flag --bogus"},
		{[]string{"stat", "name"}, "did you mean withlock status name?"},
		{nil, "no lock name"},
	} {
		code, stdout, stderr := e.run(t, nil, tc.args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "withlock --help") || stdout != "" {
			t.Errorf("withlock %q: exit status %d, stdout %q, stderr %q; want %d and a message with %q", tc.args, code, stdout, stderr, ExitUsage, tc.want)
		}
	}
}

// fakePassword is never a real password: trust authentication ignores it,
// and it must never appear in withlock's output.
const fakePassword = "s3cretpw"

func testUnreachable(t *testing.T, e *e2e) {
	unreachable := "postgres://postgres:" + fakePassword + "@127.0.0.1:1/x"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"--db", baseEnv(), []string{"--db", unreachable}},
		{"PG_CONNECTION_STRING", baseEnv("PG_CONNECTION_STRING=" + unreachable), nil},
		{"DATABASE_URL", baseEnv("DATABASE_URL=" + unreachable), nil},
		{"libpq", baseEnv("PGHOST=127.0.0.1", "PGPORT=1", "PGUSER=postgres", "PGPASSWORD="+fakePassword), nil},
		{"status", baseEnv(), []string{"status", "--db", unreachable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			marker := filepath.Join(t.TempDir(), "ran")
			a := append(tc.args, "-v", t.Name(), "--", "touch", marker)
			if tc.name == "status" {
				a = append(tc.args, t.Name())
			}
			code, stdout, stderr := e.run(t, tc.env, a...)
			if code != ExitUnavailable || !strings.Contains(stderr, "cannot reach the database") {
				t.Errorf("exit status %d, stderr %q; want %d and the reason", code, stderr, ExitUnavailable)
			}
			if strings.Contains(stdout+stderr, fakePassword) {
				t.Errorf("the password shows in the output:\nstdout: %s\nstderr: %s", stdout, stderr)
			}
			assertNotExist(t, marker)
		})
	}
}

// withPassword returns the test server's URL with a password added, or
// skips the test if the connection string is not a URL.
func (e *e2e) withPassword(t *testing.T, pw string) string {
	t.Helper()
	u, err := url.Parse(e.dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Skipf("the test server's connection string is not a URL")
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String()
}

func testVerboseHidesPassword(t *testing.T, e *e2e) {
	name := t.Name()
	dsn := e.withPassword(t, fakePassword)
	release := e.hold(t, name)
	p := e.start(t, nil, "-v", "--db", dsn, name, "--", "sh", "-c", "echo ran")
	p.stderr.waitFor(t, "stderr", `waiting for lock "`+name+`" (exclusive)`)
	release()
	p.expect(t, 0)
	stderr := p.stderr.String()
	for _, want := range []string{
		"postgres:xxxxx@",         // the connection string, masked
		"acquired lock \"" + name, // with the wait time
		"released lock \"" + name,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q, want it to contain %q", stderr, want)
		}
	}
	if strings.Contains(p.stdout.String()+stderr, fakePassword) {
		t.Errorf("the password shows in the output:\nstdout: %s\nstderr: %s", p.stdout, stderr)
	}
	if p.stdout.String() != "ran\n" {
		t.Errorf("stdout %q, want only the command's", p.stdout)
	}
}

// testEnvironment checks the database sources other than --db, and the
// application_name that pg_stat_activity shows.
func testEnvironment(t *testing.T, e *e2e) {
	u, err := url.Parse(e.dsn)
	if err != nil || u.Scheme != "postgres" {
		t.Skipf("the test server's connection string is not a URL")
	}
	libpq := []string{"PGHOST=" + u.Hostname(), "PGPORT=" + u.Port(), "PGUSER=" + u.User.Username(),
		"PGDATABASE=" + strings.TrimPrefix(u.Path, "/"), "PGSSLMODE=" + u.Query().Get("sslmode")}
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"PG_CONNECTION_STRING", baseEnv("PG_CONNECTION_STRING="+e.dsn, "DATABASE_URL=postgres://nobody@127.0.0.1:1/x")},
		{"DATABASE_URL", baseEnv("DATABASE_URL=" + e.dsn)},
		{"libpq", baseEnv(libpq...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			p := e.start(t, tc.env, args(name, "--", waitForRead)...)
			p.stdout.waitFor(t, "stdout", "started")
			e.waitSessions(t, name, 1, 0, patience) // found by application_name withlock:<name>
			p.release(t)
			p.expect(t, 0)
		})
	}
}

func testStatus(t *testing.T, e *e2e) {
	name := t.Name()
	status := func(extra ...string) (int, string) {
		t.Helper()
		code, stdout, stderr := e.run(t, nil, args("status", name, e.dbFlag(), extra)...)
		if stderr != "" {
			t.Errorf("status %s: stderr %q", extra, stderr)
		}
		return code, stdout
	}
	parse := func(stdout string) lockStatus {
		t.Helper()
		var st lockStatus
		if err := json.Unmarshal([]byte(stdout), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, stdout)
		}
		return st
	}

	if code, out := status(); code != ExitOK || !strings.Contains(out, "): free\n") {
		t.Errorf("status of a free lock: exit status %d, output %q; want 0 and free", code, out)
	}
	code, out := status("--json")
	if st := parse(out); code != ExitOK || st.Held || st.Lock != name || st.Keyspace != "node" ||
		st.Key != keyspace.Node.Key(name).String() || len(st.Holders) != 0 || st.Waiting != 0 {
		t.Errorf("status --json of a free lock: exit status %d, %+v", code, st)
	}

	a := e.start(t, nil, args(e.dbFlag(), name, "--", waitForRead)...)
	a.stdout.waitFor(t, "A's stdout", "started")
	b := e.start(t, nil, e.dbFlag(), name, "--", "true")
	ss := e.waitSessions(t, name, 1, 1, patience)
	holder, waiter := ss[0].pid, ss[1].pid

	code, out = status()
	if code != ExitHeld {
		t.Errorf("status of a held lock: exit status %d, want %d", code, ExitHeld)
	}
	for _, want := range []string{
		"held exclusively",
		fmt.Sprintf("held by pid %d (exclusive, withlock:%s)", holder, name),
		", session since ",
		"1 session waiting",
		fmt.Sprintf("waiting pid %d", waiter),
		", waiting since ", // PostgreSQL 14+
		", active since ",  // the waiter's lock statement
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output %q, want it to contain %q", out, want)
		}
	}
	code, out = status("--json")
	st := parse(out)
	if code != ExitHeld || !st.Held || st.Mode != "exclusive" || len(st.Holders) != 1 || st.Waiting != 1 || len(st.Waiters) != 1 {
		t.Fatalf("status --json of a held lock: exit status %d, %+v", code, st)
	}
	if h := st.Holders[0]; h.PID != int64(holder) || h.ApplicationName != "withlock:"+name || h.Mode != "exclusive" || h.BackendStart == nil {
		t.Errorf("holder %+v, want pid %d and application_name withlock:%s", h, holder, name)
	}
	if h := st.Holders[0]; h.State == "" || h.StateChange == nil {
		t.Errorf("holder %+v, want its state and when it entered it", h)
	}
	if w := st.Waiters[0]; w.PID != int64(waiter) || w.WaitStart == nil || w.State != "active" || w.StateChange == nil {
		t.Errorf("waiter %+v, want pid %d, active, with a wait start and state change", w, waiter)
	}

	if st.ElectionState != "leading" {
		t.Errorf("status --json of a lock held by withlock: election_state %q, want leading", st.ElectionState)
	}

	a.release(t)
	a.expect(t, 0)
	b.expect(t, 0)
	if code, out := status(); code != ExitOK {
		t.Errorf("status after release: exit status %d, want 0\n%s", code, out)
	}

	// The lock as an election's: its winner waits out its takeover delay.
	ctx, stop := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() {
		el := sqllock.New(e.db).Election(name, sqllock.WithTakeoverDelay(time.Hour))
		ran <- el.Run(ctx, func(context.Context) error { return nil })
	}()
	defer func() {
		stop()
		<-ran
	}()
	deadline := time.Now().Add(patience)
	for {
		code, out = status("--json")
		if st := parse(out); code == ExitHeld && st.ElectionState == "waiting" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status --json of an election whose winner waits out its delay: exit status %d\n%s", code, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, out = status(); !strings.Contains(out, "waiting out its takeover delay: it does not lead yet") {
		t.Errorf("status of an election whose winner waits: %q, want it to say it does not lead yet", out)
	}
}

func testKeyspaces(t *testing.T, e *e2e) {
	for _, name := range keyspace.Names() {
		s, err := lookupScheme(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			switch s.name {
			case "int64":
				name = "7346509181223190001"
			case "pair":
				name = "734650918,-1223190002"
			}
			key, err := s.key(name)
			if err != nil {
				t.Fatal(err)
			}
			release := e.holdKey(t, sqllock.New(e.db).MutexKey(key))
			if code, _, stderr := e.run(t, nil, "-n", "--keyspace", s.name, e.dbFlag(), name, "--", "true"); code != ExitConflict {
				t.Errorf("withlock -n --keyspace %s while %v is held: exit status %d, want %d\nstderr: %s", s.name, key, code, ExitConflict, stderr)
			}
			code, stdout, stderr := e.run(t, nil, "status", "--keyspace", s.name, "--json", e.dbFlag(), name)
			var st lockStatus
			if err := json.Unmarshal([]byte(stdout), &st); err != nil || code != ExitHeld || st.Key != key.String() {
				t.Errorf("status --keyspace %s: exit status %d, %+v (%v), want held key %v\nstderr: %s", s.name, code, st, err, key, stderr)
			}
			release()
			if code, _, stderr := e.run(t, nil, "-n", "--keyspace", s.name, e.dbFlag(), name, "--", "true"); code != 0 {
				t.Errorf("withlock -n --keyspace %s on a free key: exit status %d, want 0\nstderr: %s", s.name, code, stderr)
			}
		})
	}
}

// testFencing: --fencing gives each run a token in WITHLOCK_TOKEN, larger
// than the one before; without it the variable is not set.
func testFencing(t *testing.T, e *e2e) {
	name := t.Name()
	show := []string{"sh", "-c", `echo "token=${WITHLOCK_TOKEN:-none}"`}
	var last uint64
	for range 3 {
		code, stdout, stderr := e.run(t, nil, args(e.dbFlag(), "--fencing", name, "--", show)...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		var tok uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(stdout), "token=%d", &tok); err != nil {
			t.Fatalf("stdout %q: %v", stdout, err)
		}
		if tok <= last {
			t.Errorf("token %d after %d: tokens must grow", tok, last)
		}
		last = tok
	}
	_, stdout, _ := e.run(t, nil, args(e.dbFlag(), name, "--", show)...)
	if got := strings.TrimSpace(stdout); got != "token=none" {
		t.Errorf("without --fencing: got %q, want token=none", got)
	}
	code, _, stderr := e.run(t, nil, args(e.dbFlag(), "--fencing", "-s", name, "--", show)...)
	if code != ExitUsage || !strings.Contains(stderr, "--fencing and --shared cannot be combined") {
		t.Errorf("--fencing -s: exit %d, stderr %q", code, stderr)
	}
	e.assertFree(t, name)
}

// testTerminate breaks a stuck lock: withlock terminate ends the session
// of a holder whose command hangs, says who it was, and exits 0; the holder
// learns of the loss (exit 74); with nobody holding, it says so and exits 0.
func testTerminate(t *testing.T, e *e2e) {
	name := t.Name()
	a := e.start(t, nil, "--keepalive", "100ms", e.dbFlag(), name, "--", "sh", "-c", "echo started; exec sleep 60")
	a.stdout.waitFor(t, "A's stdout", "started")
	e.waitSessions(t, name, 1, 0, patience)

	code, stdout, stderr := e.run(t, nil, "terminate", e.dbFlag(), name)
	if code != ExitOK || !strings.Contains(stdout, "ended backend ") || !strings.Contains(stdout, `application "withlock:`+name+`"`) {
		t.Fatalf("withlock terminate: exit %d, stdout %q, stderr %q; want 0 and the holder it ended", code, stdout, stderr)
	}
	a.expect(t, ExitLockLost)
	e.assertFree(t, name)

	code, stdout, _ = e.run(t, nil, "terminate", e.dbFlag(), name)
	if code != ExitOK || !strings.Contains(stdout, "is not held: nothing ended") {
		t.Errorf("withlock terminate of a free lock: exit %d, stdout %q; want 0 and that it is not held", code, stdout)
	}
}

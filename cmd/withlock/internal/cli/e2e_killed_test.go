package cli

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

// The tests here kill withlock with SIGKILL (kill -9, the OOM killer) while
// its command runs, with a second withlock waiting, and check that the
// second command never overlaps the first or anything it started (issue
// 24). Both commands append lines to one file; appends land in order, so
// the file's order is the order of the writes, with no clocks to compare.

// loopA appends "a" to $1/log every 50ms until $1/stop exists (or $1 is
// gone), printing "started" after the first line; it ends with "a-last".
const loopA = `echo a >> "$1/log"; echo started
while [ -d "$1" ] && ! [ -e "$1/stop" ]; do echo a >> "$1/log"; sleep 0.05; done
echo a-last >> "$1/log"`

// commandB logs its start and, 200ms later, its end.
var commandB = []string{"sh", "-c", `echo b-start >> "$1/log"; sleep 0.2; echo b-end >> "$1/log"`, "B"}

// testKilledHolder: the killed withlock's command is stopped with it where
// the platform can (deathSignal), and the lock passes on only once it has
// exited; elsewhere the command runs on, still holding the lock.
func testKilledHolder(t *testing.T, e *e2e) {
	for _, tc := range []struct {
		name   string
		dbFlag func(*testing.T) string
	}{
		{"tcp", func(*testing.T) string { return e.dbFlag() }},
		{"unix", e.unixDBFlag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name, dir, db := t.Name(), t.TempDir(), tc.dbFlag(t)
			a := e.start(t, nil, db, name, "--", "sh", "-c", loopA, "A", dir)
			t.Cleanup(func() { stopLoop(t, dir) }) // before withlock's cleanup
			a.stdout.waitFor(t, "A's stdout", "started")
			b := e.start(t, nil, args(db, name, "--", commandB, dir)...)
			e.waitSessions(t, name, 1, 1, patience)

			a.signal(t, syscall.SIGKILL)
			if deathSignal == 0 { // the command runs on, and keeps the lock
				waitLines(t, dir, "a", countLines(t, dir, "a")+3)
				e.waitSessions(t, name, 1, 1, 0)
				stopLoop(t, dir)
			}
			b.expect(t, 0)
			if got := a.wait(t); got != ExitSignalBase+int(syscall.SIGKILL) {
				t.Errorf("A: exit status %d, want %d (killed)", got, ExitSignalBase+int(syscall.SIGKILL))
			}
			assertNoOverlap(t, dir)
			if deathSignal != 0 && countLines(t, dir, "a-last") != 0 {
				t.Errorf("A's command ran to its end, want it killed with withlock")
			}
			e.waitSessions(t, name, 0, 0, 5*time.Second) // no lock left behind
		})
	}
}

// testKilledHolderGrandchild: a process the command started (here a
// background subshell; the command itself waits for it) dies with
// withlock where the command runs under a guard (Linux), and the lock
// passes on only once it has; elsewhere it keeps the lock until it exits.
// Either way the next command never overlaps it.
func testKilledHolderGrandchild(t *testing.T, e *e2e) {
	name, dir := t.Name(), t.TempDir()
	a := e.start(t, nil, e.dbFlag(), name, "--", "sh", "-c", "("+loopA+") & wait", "A", dir)
	t.Cleanup(func() { stopLoop(t, dir) })
	a.stdout.waitFor(t, "A's stdout", "started")
	b := e.start(t, nil, args(e.dbFlag(), name, "--", commandB, dir)...)
	e.waitSessions(t, name, 1, 1, patience)

	a.signal(t, syscall.SIGKILL)
	if !guardSupported {
		waitLines(t, dir, "a", countLines(t, dir, "a")+3) // the subshell writes on
		e.waitSessions(t, name, 1, 1, 0)                  // and B still waits
		stopLoop(t, dir)
	}
	killed := time.Now()
	b.expect(t, 0)
	assertNoOverlap(t, dir)
	if guardSupported {
		if countLines(t, dir, "a-last") != 0 {
			t.Errorf("the background subshell ran to its end, want it killed with withlock")
		}
		// B's command ran 200ms; it started at once, not after a lease.
		if took := time.Since(killed); took > 3*time.Second {
			t.Errorf("B finished %v after A was killed, want the lock passed on at once", took)
		}
	} else if countLines(t, dir, "a-last") != 1 {
		t.Errorf("the background subshell did not end as asked")
	}
	e.waitSessions(t, name, 0, 0, 5*time.Second)
}

// testFrozenHolder: withlock, its guard and its command all stopped at
// once (SIGSTOP to the process group: a paused container, a frozen VM),
// with no server setting. The lease ends the lock's session, so the next
// withlock gets the lock within it; resumed, the first withlock learns of
// the loss from its next probe, stops its command and exits 74.
func testFrozenHolder(t *testing.T, e *e2e) {
	if testing.Short() {
		t.Skip("waits out the default lease, 10s")
	}
	name, dir := t.Name(), t.TempDir()
	a := e.startGroup(t, e.dbFlag(), name, "--", "sh", "-c", loopA, "A", dir)
	t.Cleanup(func() { stopLoop(t, dir) })
	a.stdout.waitFor(t, "A's stdout", "started")
	b := e.start(t, nil, args(e.dbFlag(), name, "--", commandB, dir)...)
	e.waitSessions(t, name, 1, 1, patience)

	group := -a.cmd.Process.Pid
	if err := syscall.Kill(group, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	b.expect(t, 0)
	took := time.Since(frozen) - 200*time.Millisecond // B's command runs 200ms
	t.Logf("lease: the next withlock got the lock %v after the holder froze", took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("the next withlock got the lock %v after the holder froze, want at most 15s", took)
	}
	before := countLines(t, dir, "a")
	if err := syscall.Kill(group, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	a.expect(t, ExitLockLost)
	t.Logf("lease: the resumed withlock exited %v after it resumed; its command wrote %d lines meanwhile", a.exited.Sub(resumed).Round(time.Millisecond), countLines(t, dir, "a")-before)
	if d := a.exited.Sub(resumed); d > 3*time.Second {
		t.Errorf("the resumed withlock exited %v after it resumed, want within 3s", d)
	}
	if !strings.Contains(a.stderr.String(), "lost lock") {
		t.Errorf("A's stderr %q: want the loss reported", a.stderr)
	}
	if countLines(t, dir, "a-last") != 0 {
		t.Errorf("A's command ran to its end, want it stopped")
	}
	e.waitSessions(t, name, 0, 0, 5*time.Second)
}

// startGroup is start in a process group of its own, which a test can stop
// and resume as a whole.
func (e *e2e) startGroup(t *testing.T, args ...string) *proc {
	t.Helper()
	return e.startWith(t, nil, &syscall.SysProcAttr{Setpgid: true}, args...)
}

// unixDBFlag returns a --db flag that reaches the test server through its
// Unix socket, or skips the test if there is none to be found.
func (e *e2e) unixDBFlag(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(e.dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.User.Username() == "" {
		t.Skipf("the test server's connection string is not a URL with a user")
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	for _, dir := range []string{"/var/run/postgresql", "/tmp"} {
		if _, err := os.Stat(filepath.Join(dir, ".s.PGSQL."+port)); err == nil {
			return fmt.Sprintf("--db=host=%s port=%s user=%s dbname=%s", dir, port, u.User.Username(), strings.TrimPrefix(u.Path, "/"))
		}
	}
	t.Skipf("no Unix socket for port %s in /var/run/postgresql or /tmp", port)
	return ""
}

// stopLoop ends loopA.
func stopLoop(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644); err != nil && !os.IsNotExist(err) {
		t.Error(err)
	}
}

// logLines returns the lines of dir/log.
func logLines(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// countLines counts the lines of dir/log that are exactly s.
func countLines(t *testing.T, dir, s string) int {
	t.Helper()
	n := 0
	for _, l := range logLines(t, dir) {
		if l == s {
			n++
		}
	}
	return n
}

// waitLines polls dir/log until it has n lines that are exactly s.
func waitLines(t *testing.T, dir, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for countLines(t, dir, s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d lines %q in the log after %v, want %d", countLines(t, dir, s), s, patience, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertNoOverlap checks that every line A wrote comes before B's start,
// and that B ran to its end.
func assertNoOverlap(t *testing.T, dir string) {
	t.Helper()
	lines := logLines(t, dir)
	start := slices.Index(lines, "b-start")
	if start < 0 || !slices.Contains(lines[start:], "b-end") {
		t.Fatalf("log %q: want B's start and end", lines)
	}
	if start == 0 {
		t.Fatalf("log %q: want A's lines before B's", lines)
	}
	for i, l := range lines[start:] {
		if strings.HasPrefix(l, "a") {
			t.Fatalf("log %q...: A wrote %q after B started (line %d, B started at %d), want no overlap",
				lines[:min(len(lines), start+i+3)], l, start+i+1, start+1)
		}
	}
}

// testTransactionPooler: withlock with the user's plain connection string
// to PgBouncer in transaction mode. Its statements survive transaction
// pooling (no prepared statement of a session that the next statement does
// not reach: 42P05, 26000), and the lock, held in a transaction there,
// excludes another withlock, is released when the command ends, and when
// withlock is killed.
func testTransactionPooler(t *testing.T, e *e2e) {
	b := pgtest.NewBouncer(t, "transaction", 4)
	db := "--db=" + b.DSN()
	name := t.Name()
	holder := e.start(t, nil, db, name, "--", "sh", "-c", "read x")
	e.waitSessions(t, name, 1, 0, patience)
	code, _, stderr := e.run(t, nil, db, "-n", name, "--", "true")
	if code != ExitConflict {
		t.Fatalf("withlock -n through the pooler while another holds the lock: exit %d, want %d: %s", code, ExitConflict, stderr)
	}
	holder.release(t)
	holder.expect(t, 0)
	for i := range 3 {
		code, _, stderr := e.run(t, nil, db, name, "--", "true")
		for _, bad := range []string{"42P05", "26000", "prepared statement"} {
			if strings.Contains(stderr, bad) {
				t.Fatalf("withlock through the pooler: exit %d, %s", code, stderr)
			}
		}
		if code != 0 {
			t.Fatalf("withlock through the pooler, run %d: exit %d: %s", i, code, stderr)
		}
	}
	killed := e.start(t, nil, db, name, "--", "sh", "-c", "read x")
	e.waitSessions(t, name, 1, 0, patience)
	killed.signal(t, syscall.SIGKILL)
	start := time.Now()
	if code, _, stderr := e.run(t, nil, db, "-w", "5s", name, "--", "true"); code != 0 {
		t.Fatalf("withlock through the pooler after the holder was killed: exit %d: %s", code, stderr)
	}
	t.Logf("through PgBouncer in transaction mode: the next withlock ran %v after the holder was killed", time.Since(start).Round(time.Millisecond))
	e.waitSessions(t, name, 0, 0, patience)
}

package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// The tests here run withlock --slots N (issue 29): at most N commands at
// once across processes, each holding one slot, a lock of its own, which
// pg_locks shows.

// semKeysFor returns the keys of the n slots of semaphore name, and of its
// watch lock, in the default keyspace.
func semKeysFor(t *testing.T, name string, n int) semKeys {
	t.Helper()
	s, err := lookupScheme(defaultScheme)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := s.semaphoreKeys(name, n)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// keyRows lists the sessions that hold or wait for k, from pg_locks,
// holders first.
func (e *e2e) keyRows(t *testing.T, k keyspace.Key) []session {
	t.Helper()
	classid, objid, objsubid := k.LockTag()
	rows, err := e.db.QueryContext(t.Context(), `SELECT pid, granted, mode = 'ShareLock' FROM pg_locks
		WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid::bigint = $3 ORDER BY granted DESC, pid`,
		int64(classid), int64(objid), int64(objsubid))
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

// slotSessions is what pg_locks shows of a semaphore: the sessions on
// each slot, and on its watch lock.
type slotSessions struct {
	slots [][]session
	watch []session
}

// count returns the numbers of sessions holding and waiting for a slot.
func (ss slotSessions) count() (holding, waiting int) {
	for _, rows := range ss.slots {
		for _, r := range rows {
			if r.granted {
				holding++
			} else {
				waiting++
			}
		}
	}
	return holding, waiting
}

// holder returns the session holding slot i, or 0.
func (ss slotSessions) holder(i int) int {
	for _, r := range ss.slots[i] {
		if r.granted {
			return r.pid
		}
	}
	return 0
}

// waitingOn returns the slot that a session waits for, and its pid, or -1.
func (ss slotSessions) waitingOn() (slot, pid int) {
	for i, rows := range ss.slots {
		for _, r := range rows {
			if !r.granted {
				return i, r.pid
			}
		}
	}
	return -1, 0
}

func (e *e2e) slotSessions(t *testing.T, ks semKeys) slotSessions {
	t.Helper()
	var ss slotSessions
	for _, k := range ks.slots {
		ss.slots = append(ss.slots, e.keyRows(t, k))
	}
	ss.watch = e.keyRows(t, ks.watch)
	return ss
}

// waitSlots polls pg_locks until the semaphore's slots have exactly the
// given numbers of holding and waiting sessions, and no slot more than one
// holder.
func (e *e2e) waitSlots(t *testing.T, ks semKeys, holding, waiting int, within time.Duration) slotSessions {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ss := e.slotSessions(t, ks)
		for i, rows := range ss.slots {
			if n := len(granted(rows)); n > 1 {
				t.Fatalf("slot %d held by %d sessions at once (%+v), want at most 1", i, n, rows)
			}
		}
		h, w := ss.count()
		if h == holding && w == waiting {
			return ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d sessions holding slots and %d waiting (%+v) after %v, want %d and %d", h, w, ss, within, holding, waiting)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func granted(rows []session) []session {
	var out []session
	for _, r := range rows {
		if r.granted {
			out = append(out, r)
		}
	}
	return out
}

// holdSlot takes a slot of the n-slot semaphore name in the test process,
// as another process would, and returns the slot and a function that
// releases it (called at the latest when the test ends).
func (e *e2e) holdSlot(t *testing.T, name string, n int) (slot int, release func()) {
	t.Helper()
	sem := sqllock.New(e.db).Semaphore(name, n)
	if err := sem.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	slot, _ = sem.Slot()
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := sem.Release(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	return slot, release
}

// testSemaphoreAtMostN: four withlock --slots 2, each running a command
// that logs its start and end and waits to be let go. Two run, the others
// wait in the server, one slot each; let go, all four run, never more than
// two at once.
func testSemaphoreAtMostN(t *testing.T, e *e2e) {
	name, dir := t.Name(), t.TempDir()
	log := filepath.Join(dir, "log")
	ks := semKeysFor(t, name, 2)
	child := []string{"sh", "-c", `echo "start $0" >> "$1"; echo started; read x; echo "end $0" >> "$1"`}
	var ps []*proc
	for i := range 4 {
		ps = append(ps, e.start(t, nil, args("-v", "--slots", "2", e.dbFlag(), name, "--", child, fmt.Sprint("P", i), log)...))
	}
	ss := e.waitSlots(t, ks, 2, 2, patience) // two hold a slot each, two wait in the server
	if ss.holder(0) == ss.holder(1) {
		t.Errorf("one session %d holds both slots, want one each", ss.holder(0))
	}
	deadline := time.Now().Add(patience)
	for strings.Count(readLog(t, log), "start ") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("log %q after %v, want two commands started", readLog(t, log), patience)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := readLog(t, log); strings.Count(got, "start ") != 2 || strings.Contains(got, "end ") {
		t.Fatalf("log %q while two hold the slots, want two commands started and none ended", got)
	}
	for _, p := range ps {
		p.release(t) // the waiting ones' commands read it once they run
	}
	acquired := regexp.MustCompile(`withlock: acquired slot [01] of 2 of semaphore "` + regexp.QuoteMeta(name) + `" after \d`)
	for i, p := range ps {
		p.expect(t, 0)
		if !acquired.MatchString(p.stderr.String()) {
			t.Errorf("P%d's stderr %q, want it to say which slot it acquired", i, p.stderr)
		}
	}
	running, most := 0, 0
	lines := logLines(t, dir)
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "start "):
			running++
		case strings.HasPrefix(l, "end "):
			running--
		}
		most = max(most, running)
		if running > 2 {
			t.Fatalf("log %q: %d commands ran at once, want at most 2", lines, running)
		}
	}
	if most != 2 || len(lines) != 8 {
		t.Errorf("log %q: at most %d ran at once, want 2, and 4 starts and ends", lines, most)
	}
	e.waitSlots(t, ks, 0, 0, 5*time.Second)
	if rows := e.keyRows(t, ks.watch); len(rows) != 0 {
		t.Errorf("watch lock: %+v after every withlock exited, want none", rows)
	}
}

// readLog returns the text of path, "" if it does not exist yet.
func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// testSemaphoreTry: --try and --timeout on a full semaphore exit with the
// conflict code and run nothing; with -v they say who holds each slot.
func testSemaphoreTry(t *testing.T, e *e2e) {
	name := t.Name()
	marker := filepath.Join(t.TempDir(), "ran")
	ks := semKeysFor(t, name, 2)
	_, release := e.holdSlot(t, name, 2)
	e.holdSlot(t, name, 2)
	for _, tc := range []struct {
		flags []string
		want  int
	}{
		{[]string{"-n"}, ExitConflict},
		{[]string{"--try"}, ExitConflict},
		{[]string{"-n", "-E", "3"}, 3},
	} {
		start := time.Now()
		code, _, stderr := e.run(t, nil, args(tc.flags, "--slots", "2", e.dbFlag(), name, "--", "touch", marker)...)
		if code != tc.want || stderr != "" {
			t.Errorf("withlock %s --slots 2 on a full semaphore: exit status %d, stderr %q; want %d and silence", tc.flags, code, stderr, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("withlock %s took %v, want it not to wait", tc.flags, d)
		}
		assertNotExist(t, marker)
	}
	ss := e.slotSessions(t, ks)
	holders := func(stderr string) {
		t.Helper()
		for i, k := range ks.slots {
			if want := fmt.Sprintf("withlock:   slot %d (key %v): held by pid %d (exclusive, ", i, k, ss.holder(i)); !strings.Contains(stderr, want) {
				t.Errorf("stderr %q, want it to contain %q", stderr, want)
			}
		}
	}
	code, _, stderr := e.run(t, nil, "-nv", "--slots", "2", e.dbFlag(), name, "--", "touch", marker)
	if code != ExitConflict || !strings.Contains(stderr, `semaphore "`+name+`" is full: its 2 slots are taken; not waiting (--try); nothing ran`) {
		t.Errorf("withlock -nv --slots 2: exit status %d, stderr %q; want %d and the reason", code, stderr, ExitConflict)
	}
	holders(stderr)
	code, _, stderr = e.run(t, nil, "-vw", "0.5", "--slots", "2", e.dbFlag(), name, "--", "touch", marker)
	if code != ExitConflict || !strings.Contains(stderr, `gave up waiting for a slot of semaphore "`+name+`" after 500ms (--timeout)`) {
		t.Errorf("withlock -vw 0.5 --slots 2: exit status %d, stderr %q; want %d and the reason", code, stderr, ExitConflict)
	}
	holders(stderr)
	assertNotExist(t, marker)
	// The abandoned wait was cancelled in the server, and let go of the
	// watch lock.
	e.waitSlots(t, ks, 2, 0, 5*time.Second)
	if rows := e.keyRows(t, ks.watch); len(rows) != 0 {
		t.Errorf("watch lock: %+v after the wait was given up, want none", rows)
	}
	release()
	if code, _, stderr := e.run(t, nil, "-n", "--slots", "2", e.dbFlag(), name, "--", "touch", marker); code != 0 {
		t.Fatalf("withlock -n --slots 2 with a slot free: exit status %d, want 0\nstderr: %s", code, stderr)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("withlock -n --slots 2 with a slot free did not run the command: %v", err)
	}
}

// testSemaphoreHandOff: a withlock waiting for a slot in the server gets
// the other one when it is freed (its watcher tries it), gives up its wait,
// and while its command runs holds exactly that slot: the sockets the
// command inherits hold nothing else, neither the abandoned wait nor the
// watch lock.
func testSemaphoreHandOff(t *testing.T, e *e2e) {
	name := t.Name()
	ks := semKeysFor(t, name, 2)
	slotA, releaseA := e.holdSlot(t, name, 2)
	_, releaseB := e.holdSlot(t, name, 2)
	p := e.start(t, nil, args("-v", "--slots", "2", e.dbFlag(), name, "--", waitForRead)...)
	ss := e.waitSlots(t, ks, 2, 1, patience)
	waitingOn, _ := ss.waitingOn()
	release := releaseA
	if waitingOn == slotA {
		release = releaseB
	}
	free := 1 - waitingOn
	release()
	p.stdout.waitFor(t, "stdout", "started")
	if !strings.Contains(p.stderr.String(), fmt.Sprintf("acquired slot %d of 2", free)) {
		t.Errorf("stderr %q, want slot %d acquired (the one released, not the one it waited for)", p.stderr, free)
	}
	// Every advisory lock of withlock's sessions: the slot alone.
	rows := e.sessions(t, name)
	got := e.keyRows(t, ks.slots[free])
	if len(rows) != 1 || !rows[0].granted || len(got) != 1 || got[0].pid != rows[0].pid {
		t.Errorf("withlock's sessions hold or wait for %+v while its command runs; want one, holding slot %d (%+v)", rows, free, got)
	}
	p.release(t)
	p.expect(t, 0)
	if !strings.Contains(p.stderr.String(), fmt.Sprintf(`released slot %d of semaphore "%s"`, free, name)) {
		t.Errorf("stderr %q, want the slot's release reported", p.stderr)
	}
	e.waitSlots(t, ks, 1, 0, 5*time.Second)
}

// testSemaphoreKilledHolder: a withlock holding a slot is killed with
// SIGKILL while another waits for one (the other slot is held). The
// waiter's command runs only once the killed one's command has ended, as
// for a lock (testKilledHolder).
func testSemaphoreKilledHolder(t *testing.T, e *e2e) {
	name, dir := t.Name(), t.TempDir()
	ks := semKeysFor(t, name, 2)
	e.holdSlot(t, name, 2)
	a := e.start(t, nil, "--slots", "2", e.dbFlag(), name, "--", "sh", "-c", loopA, "A", dir)
	t.Cleanup(func() { stopLoop(t, dir) })
	a.stdout.waitFor(t, "A's stdout", "started")
	b := e.start(t, nil, args("--slots", "2", e.dbFlag(), name, "--", commandB, dir)...)
	e.waitSlots(t, ks, 2, 1, patience)

	a.signal(t, syscall.SIGKILL)
	if deathSignal == 0 { // the command runs on, and keeps the slot
		waitLines(t, dir, "a", countLines(t, dir, "a")+3)
		e.waitSlots(t, ks, 2, 1, 0)
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
	e.waitSlots(t, ks, 1, 0, 5*time.Second) // the test's slot alone
}

// testSemaphoreFencing: with --fencing each grant of a slot gives its
// command a token, distinct from every other and larger than those before.
func testSemaphoreFencing(t *testing.T, e *e2e) {
	name := t.Name()
	show := []string{"sh", "-c", `echo "token=${WITHLOCK_TOKEN:-none}"; read x`}
	token := func(stdout string) uint64 {
		t.Helper()
		var tok uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(stdout), "token=%d", &tok); err != nil {
			t.Fatalf("stdout %q: %v", stdout, err)
		}
		return tok
	}
	a := e.start(t, nil, args("--fencing", "--slots", "2", e.dbFlag(), name, "--", show)...)
	a.stdout.waitFor(t, "A's stdout", "\n")
	b := e.start(t, nil, args("-n", "--fencing", "--slots", "2", e.dbFlag(), name, "--", show)...)
	b.stdout.waitFor(t, "B's stdout", "\n") // both hold a slot
	ta, tb := token(a.stdout.String()), token(b.stdout.String())
	if tb <= ta {
		t.Errorf("tokens %d then %d for two slots held at once, want distinct and growing", ta, tb)
	}
	a.release(t)
	b.release(t)
	a.expect(t, 0)
	b.expect(t, 0)
	last := tb
	for range 2 {
		c := e.start(t, nil, args("--fencing", "--slots", "2", e.dbFlag(), name, "--", show)...)
		c.release(t)
		c.expect(t, 0)
		if tc := token(c.stdout.String()); tc <= last {
			t.Errorf("token %d after %d: tokens must grow", tc, last)
		} else {
			last = tc
		}
	}
	c := e.start(t, nil, args("--slots", "2", e.dbFlag(), name, "--", show)...)
	c.release(t)
	c.expect(t, 0)
	if got := strings.TrimSpace(c.stdout.String()); got != "token=none" {
		t.Errorf("without --fencing: got %q, want token=none", got)
	}
}

// testSemaphoreLoss: a slot lost while the command runs stops the command
// and exits 74, as a lost lock does.
func testSemaphoreLoss(t *testing.T, e *e2e) {
	name := t.Name()
	ks := semKeysFor(t, name, 2)
	a := e.start(t, nil, args("--keepalive", "100ms", "--slots", "2", e.dbFlag(), name, "--", trapChild("TERM"))...)
	a.stdout.waitFor(t, "A's stdout", "started")
	ss := e.waitSlots(t, ks, 1, 0, patience)
	slot := 0
	if ss.holder(0) == 0 {
		slot = 1
	}
	if _, err := e.db.ExecContext(t.Context(), "SELECT pg_terminate_backend($1)", ss.holder(slot)); err != nil {
		t.Fatal(err)
	}
	a.stdout.waitFor(t, "A's stdout", "got-TERM")
	a.expect(t, ExitLockLost)
	if want := fmt.Sprintf(`withlock: lost slot %d of semaphore "%s" while the command ran`, slot, name); !strings.Contains(a.stderr.String(), want) {
		t.Errorf("A's stderr %q, want it to contain %q", a.stderr, want)
	}
	e.waitSlots(t, ks, 0, 0, 5*time.Second)
}

// testSemaphoreTerminate: a stuck slot's holder is broken as a stuck
// lock's is, by withlock terminate of the slot's lock, "<name>#<slot>",
// which ends that holder alone.
func testSemaphoreTerminate(t *testing.T, e *e2e) {
	name := t.Name()
	ks := semKeysFor(t, name, 2)
	other, release := e.holdSlot(t, name, 2)
	a := e.start(t, nil, args("--keepalive", "100ms", "--slots", "2", e.dbFlag(), name, "--", "sh", "-c", "echo started; exec sleep 60")...)
	a.stdout.waitFor(t, "A's stdout", "started")
	e.waitSlots(t, ks, 2, 0, patience)
	slot := 1 - other
	code, stdout, stderr := e.run(t, nil, "terminate", e.dbFlag(), sqllock.SlotName(name, slot))
	if code != ExitOK || !strings.Contains(stdout, "ended backend ") || !strings.Contains(stdout, `application "withlock:`+name+`"`) {
		t.Fatalf("withlock terminate of slot %d: exit %d, stdout %q, stderr %q; want 0 and the holder it ended", slot, code, stdout, stderr)
	}
	a.expect(t, ExitLockLost)
	ss := e.waitSlots(t, ks, 1, 0, 5*time.Second)
	if ss.holder(other) == 0 {
		t.Errorf("slot %d, held by another, was freed too: %+v", other, ss)
	}
	release()
	e.waitSlots(t, ks, 0, 0, 5*time.Second)
}

// testSemaphoreStatus: status --slots, as text and JSON: each slot's
// holder, who waits for which slot, and the watcher; 1 when any slot is
// held, 0 when all are free.
func testSemaphoreStatus(t *testing.T, e *e2e) {
	name := t.Name()
	ks := semKeysFor(t, name, 2)
	status := func(extra ...string) (int, string) {
		t.Helper()
		code, stdout, stderr := e.run(t, nil, args("status", name, "--slots", "2", e.dbFlag(), extra)...)
		if stderr != "" {
			t.Errorf("status --slots 2 %s: stderr %q", extra, stderr)
		}
		return code, stdout
	}
	parse := func(stdout string) semStatus {
		t.Helper()
		var st semStatus
		if err := json.Unmarshal([]byte(stdout), &st); err != nil {
			t.Fatalf("status --slots --json: %v\n%s", err, stdout)
		}
		return st
	}

	if code, out := status(); code != ExitOK || !strings.Contains(out, fmt.Sprintf("semaphore %q (keyspace node): 0 of 2 slots held\n", name)) {
		t.Errorf("status --slots of a free semaphore: exit status %d, output %q; want 0 and none held", code, out)
	}
	code, out := status("--json")
	if st := parse(out); code != ExitOK || st.Held || st.HeldSlots != 0 || st.Semaphore != name || len(st.Slots) != 2 ||
		st.Slots[1].Key != ks.slots[1].String() || st.Slots[1].Lock != name+"#1" || st.WatchKey != ks.watch.String() || st.Watcher != nil {
		t.Errorf("status --slots --json of a free semaphore: exit status %d, %+v", code, st)
	}

	a := e.start(t, nil, args("--slots", "2", e.dbFlag(), name, "--", waitForRead)...)
	b := e.start(t, nil, args("--slots", "2", e.dbFlag(), name, "--", waitForRead)...)
	a.stdout.waitFor(t, "A's stdout", "started")
	b.stdout.waitFor(t, "B's stdout", "started")
	c := e.start(t, nil, e.dbFlag(), "--slots", "2", name, "--", "true")
	ss := e.waitSlots(t, ks, 2, 1, patience)
	waitSlot, waiter := ss.waitingOn()
	var watcher int
	deadline := time.Now().Add(patience)
	for watcher == 0 { // the waiter watches, on a session of its own
		if ws := granted(e.keyRows(t, ks.watch)); len(ws) == 1 {
			watcher = ws[0].pid
		} else if time.Now().After(deadline) {
			t.Fatalf("no session holds the watch lock while a withlock waits, after %v", patience)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}

	code, out = status()
	if code != ExitHeld {
		t.Errorf("status --slots of a full semaphore: exit status %d, want %d", code, ExitHeld)
	}
	for _, want := range []string{
		fmt.Sprintf("semaphore %q (keyspace node): 2 of 2 slots held\n", name),
		fmt.Sprintf("  slot 0 (key %v): held by pid %d (exclusive, withlock:%s) from ", ks.slots[0], ss.holder(0), name),
		fmt.Sprintf("  slot 1 (key %v): held by pid %d (exclusive, withlock:%s) from ", ks.slots[1], ss.holder(1), name),
		"\n1 session waiting for a slot\n",
		fmt.Sprintf("  slot %d: waiting pid %d (exclusive, withlock:%s) from ", waitSlot, waiter, name),
		fmt.Sprintf("  watch lock %q held by pid %d (exclusive, withlock:%s) from ", name+"#watch", watcher, name),
		", session since ",
		", waiting since ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status --slots output %q, want it to contain %q", out, want)
		}
	}
	code, out = status("--json")
	st := parse(out)
	if code != ExitHeld || !st.Held || st.HeldSlots != 2 || st.Waiting != 1 || st.Watcher == nil || st.Watcher.PID != int64(watcher) {
		t.Fatalf("status --slots --json of a full semaphore: exit status %d, %+v", code, st)
	}
	for i, sl := range st.Slots {
		if !sl.Held || len(sl.Holders) != 1 || sl.Holders[0].PID != int64(ss.holder(i)) || sl.Holders[0].ApplicationName != "withlock:"+name || sl.Holders[0].BackendStart == nil {
			t.Errorf("slot %d: %+v, want held by pid %d (withlock:%s)", i, sl, ss.holder(i), name)
		}
		if wantWaiters := map[bool]int{true: 1, false: 0}[i == waitSlot]; len(sl.Waiters) != wantWaiters {
			t.Errorf("slot %d: waiters %+v, want %d", i, sl.Waiters, wantWaiters)
		}
	}
	if w := st.Slots[waitSlot].Waiters; len(w) == 1 && (w[0].PID != int64(waiter) || w[0].WaitStart == nil || w[0].State != "active") {
		t.Errorf("waiter %+v, want pid %d, active, with a wait start", w[0], waiter)
	}

	a.release(t)
	a.expect(t, 0)
	c.expect(t, 0)
	b.release(t)
	b.expect(t, 0)
	if code, out := status(); code != ExitOK {
		t.Errorf("status --slots after every holder exited: exit status %d, want 0\n%s", code, out)
	}
}

// testSemaphoreTransactionPooler: withlock --slots through PgBouncer in
// transaction mode, where each slot is held in a transaction of its own:
// two hold, a third is refused, a freed slot and a killed holder's slot go
// to the next. No withlock waits here: a waiter ends its wait for one slot
// with a cancel request whenever it gets another, and PgBouncer before 1.21
// (Debian 12 ships 1.18) exits on a cancel request that races the end of
// its query (pgbouncer/pgbouncer#822, docs/drivers.md): it did here.
func testSemaphoreTransactionPooler(t *testing.T, e *e2e) {
	b := pgtest.NewBouncer(t, "transaction", 8)
	db := "--db=" + b.DSN()
	name := t.Name()
	ks := semKeysFor(t, name, 2)
	holder1 := e.start(t, nil, args(db, "--slots", "2", name, "--", waitForRead)...)
	holder2 := e.start(t, nil, args(db, "--slots", "2", name, "--", waitForRead)...)
	holder1.stdout.waitFor(t, "stdout", "started")
	holder2.stdout.waitFor(t, "stdout", "started")
	e.waitSlots(t, ks, 2, 0, patience)
	if code, _, stderr := e.run(t, nil, db, "-n", "--slots", "2", name, "--", "true"); code != ExitConflict {
		t.Fatalf("withlock -n --slots 2 through the pooler with both slots held: exit %d, want %d: %s", code, ExitConflict, stderr)
	}
	holder1.release(t)
	holder1.expect(t, 0)
	e.waitSlots(t, ks, 1, 0, patience)
	next := e.start(t, nil, args(db, "-n", "--slots", "2", name, "--", waitForRead)...)
	next.stdout.waitFor(t, "stdout", "started")
	e.waitSlots(t, ks, 2, 0, patience)
	next.signal(t, syscall.SIGKILL)
	killed := time.Now()
	e.waitSlots(t, ks, 1, 0, patience)
	t.Logf("through PgBouncer in transaction mode: a killed holder's slot was free %v after the kill", time.Since(killed).Round(time.Millisecond))
	if code, _, stderr := e.run(t, nil, db, "-n", "--slots", "2", name, "--", "true"); code != 0 {
		t.Fatalf("withlock -n --slots 2 through the pooler after a holder was killed: exit %d: %s", code, stderr)
	}
	holder2.release(t)
	holder2.expect(t, 0)
	e.waitSlots(t, ks, 0, 0, patience)
}

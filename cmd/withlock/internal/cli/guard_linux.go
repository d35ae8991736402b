//go:build linux

package cli

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// On Linux the command runs under a guard: withlock itself, started again
// as the command's parent, which kills the command's whole process tree
// when withlock dies, or when withlock tells it the lock was lost. The
// guard is a child subreaper (PR_SET_CHILD_SUBREAPER), so a process the
// command started stays its descendant even after its own parent exits,
// and the guard holds the lock's session (its inherited socket) until
// every descendant is dead: the next holder's command never overlaps this
// one or anything it started, and a lease that ends the session of a
// killed withlock (see sqllock.WithLease) cannot let them overlap either.
//
// withlock talks to the guard through a pipe that only withlock can write:
// a signal number to pass on to the command, 't' for a lost lock (SIGTERM
// to the command, SIGKILL to the tree after the grace period). End of file
// with no 't' means withlock died: the tree gets SIGKILL at once.

// guardEnv tells withlock that it runs as a guard: "<pipe descriptor>
// <grace>".
const guardEnv = "WITHLOCK_GUARD"

// guardSupported reports whether commands run under a guard here.
const guardSupported = true

// guardLost is what withlock writes to the guard when the lock is lost.
const guardLost = 't'

// Guard runs withlock as a guard if the environment says so (see
// guardEnv), and reports its exit status; ok is false otherwise.
func Guard() (status int, ok bool) {
	spec, ok := os.LookupEnv(guardEnv)
	if !ok {
		return 0, false
	}
	_ = os.Unsetenv(guardEnv) // the command must not see it
	fdText, graceText, _ := strings.Cut(spec, " ")
	fd, err1 := strconv.Atoi(fdText)
	grace, err2 := time.ParseDuration(graceText)
	if err1 != nil || err2 != nil || len(os.Args) < 3 {
		fmt.Fprintf(os.Stderr, "withlock: guard: bad %s %q\n", guardEnv, spec)
		return ExitUsage, true
	}
	return guard(fd, grace, os.Args[1], os.Args[2:]), true
}

// guard runs the command (path, argv) as its child and waits for it, then
// exits as it did. Orders come on descriptor fd (see guardEnv).
func guard(fd int, grace time.Duration, path string, argv []string) int {
	syscall.CloseOnExec(fd) // the command must not hold the pipe open
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "withlock: guard: cannot become a subreaper: %v\n", errno)
	}
	// Signals reach the command from withlock, through the pipe; the ones
	// sent to the whole process group (Ctrl-C) reach it directly. Caught,
	// not ignored: the command starts with the default dispositions.
	caught := make(chan os.Signal, 8)
	signal.Notify(caught, forwardedSignals...)
	go func() {
		for range caught {
		}
	}()

	cmd := exec.Command(path, argv[1:]...)
	cmd.Args = argv
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// If the guard itself is killed, the command goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread() // the death signal follows the thread that started the command
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "withlock: cannot run %s: %v\n", path, err)
		return ExitCannotRun
	}
	o := &orders{pipe: os.NewFile(uintptr(fd), "withlock"), p: cmd.Process, grace: grace,
		done: make(chan struct{}), finished: make(chan struct{})}
	go o.run()
	_ = cmd.Wait()
	if o.exited() {
		<-o.finished // the tree must be dead before the guard lets go of the session
	}
	state := cmd.ProcessState
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		// End as the command did, so that withlock reports it alike.
		signal.Reset(ws.Signal())
		_ = syscall.Kill(os.Getpid(), ws.Signal())
		time.Sleep(time.Second) // a signal that does not kill falls through
		return ExitSignalBase + int(ws.Signal())
	}
	return state.ExitCode()
}

// orders carries out what withlock writes on the pipe until the command
// has exited (done). It closes finished when it returns.
type orders struct {
	pipe           *os.File
	p              *os.Process
	grace          time.Duration
	done, finished chan struct{}

	mu      sync.Mutex
	killing bool // a kill has begun: the guard waits for it to finish
}

func (o *orders) run() {
	defer close(o.finished)
	defer o.pipe.Close()
	r := bufio.NewReader(o.pipe)
	for {
		b, err := r.ReadByte()
		switch {
		case err != nil: // withlock died
			if o.begin() {
				killTree()
			}
			return
		case b == guardLost:
			if !o.begin() {
				return
			}
			if o.grace > 0 { // --grace 0: SIGKILL at once
				_ = o.p.Signal(syscall.SIGTERM)
				t := time.NewTimer(o.grace)
				select {
				case <-t.C:
				case <-o.done:
					t.Stop()
				}
			}
			killTree() // what the command started, too
			return
		default:
			_ = o.p.Signal(syscall.Signal(b))
		}
	}
}

// begin starts a kill, unless the command has exited already.
func (o *orders) begin() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	select {
	case <-o.done:
		return false
	default:
		o.killing = true
		return true
	}
}

// exited records that the command has exited, after which no kill begins,
// and reports whether one has begun.
func (o *orders) exited() (killing bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	close(o.done)
	return o.killing
}

// killTree sends SIGKILL to every descendant of the guard, again and again
// as the orphans of the killed ones come to it (it is their subreaper),
// until none is left alive, or for at most treeBound.
func killTree() {
	deadline := time.Now().Add(treeBound)
	for time.Now().Before(deadline) {
		kids := liveChildren()
		if len(kids) == 0 {
			return
		}
		for _, pid := range kids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// treeBound bounds killTree: a descendant that SIGKILL does not end (one
// stuck in the kernel) is left to exit by itself.
const treeBound = 5 * time.Second

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER, from linux/prctl.h.
const prSetChildSubreaper = 36

// liveChildren lists the guard's children that are not zombies, from
// /proc/self/task/*/children: an orphan comes back to whichever thread of
// the guard the kernel picks.
func liveChildren() []int {
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var pids []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(field)
			if err == nil && !zombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// zombie reports whether process pid has exited and waits to be reaped.
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // gone
	}
	// The state follows the command name, which is in parentheses and may
	// contain anything.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

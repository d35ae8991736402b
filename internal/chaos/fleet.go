package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
)

// Exit statuses of withlock that a chaos run expects (docs/withlock.md).
const (
	withlockLost        = 74 // lost the lock while the section ran
	withlockConflict    = 75 // -w expired: another worker held the lock
	withlockUnavailable = 69 // no server (restart, failover)
)

// stopTimeout bounds a worker's graceful stop; then it is killed.
const stopTimeout = 15 * time.Second

// An Exit is the end of a worker process: for a library worker the worker
// itself, for a withlock worker one withlock run. A section still open in
// the records ended no later than its holder's exit.
type Exit struct {
	Worker string
	PID    int
	T      int64 // Unix nanoseconds
	Status string
}

// A worker is one worker slot: its process (restarted when it dies), its
// proxies, its records file.
type worker struct {
	spec     Spec
	self     string // the chaos binary
	withlock string // the withlock binary, for withlock workers
	proxies  []*tcpproxy.Proxy
	stderr   string // file collecting the processes' stderr

	mu   sync.Mutex
	pgid int // process group of the running process, 0 between processes
}

// A fleet runs the workers and keeps what their processes did.
type fleet struct {
	workers []*worker
	ctx     context.Context // cancelled to stop the workers
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex
	exits    []Exit
	problems []string // unexpected exits
}

func newFleet(workers []*worker) *fleet {
	ctx, stop := context.WithCancel(context.Background())
	return &fleet{workers: workers, ctx: ctx, stop: stop}
}

// start starts every worker's supervising loop.
func (f *fleet) start() {
	for _, w := range f.workers {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.supervise(w)
		}()
	}
}

// shutdown stops every worker: library workers get SIGTERM and finish their
// section; withlock workers finish their run and start no other. A worker
// still running after stopTimeout is killed.
func (f *fleet) shutdown() {
	f.stop()
	for _, w := range f.workers {
		if w.spec.Kind != KindWithlock {
			w.signal(syscall.SIGTERM, false)
		}
	}
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopTimeout):
		for _, w := range f.workers {
			w.signal(syscall.SIGKILL, true)
		}
		<-done
	}
}

// supervise runs w's process again and again until the fleet stops.
func (f *fleet) supervise(w *worker) {
	for f.ctx.Err() == nil {
		cmd, err := w.command()
		if err == nil {
			err = w.run(cmd)
		}
		if err != nil {
			f.problem(fmt.Sprintf("worker %s: %v", w.spec.Worker, err))
			time.Sleep(time.Second)
			continue
		}
		status, expected := w.classify(cmd.ProcessState, f.ctx.Err() != nil)
		pid := cmd.Process.Pid
		f.mu.Lock()
		f.exits = append(f.exits, Exit{Worker: w.spec.Worker, PID: pid, T: time.Now().UnixNano(), Status: status})
		f.mu.Unlock()
		if !expected {
			f.problem(fmt.Sprintf("worker %s (pid %d) exited unexpectedly: %s%s", w.spec.Worker, pid, status, tail(w.stderr)))
		}
		if w.spec.Kind == KindWithlock && cmd.ProcessState.ExitCode() == withlockLost {
			if err := w.recordLoss(pid); err != nil {
				f.problem(err.Error())
			}
		}
		if cmd.ProcessState.ExitCode() != 0 {
			// Server down, or a fault: no hurry.
			select {
			case <-f.ctx.Done():
			case <-time.After(retryPause):
			}
		}
	}
}

// run starts cmd in a process group of its own and waits for it.
func (w *worker) run(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	errf, err := os.OpenFile(w.stderr, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer errf.Close()
	cmd.Stderr = errf
	w.mu.Lock()
	err = cmd.Start()
	if err == nil {
		w.pgid = cmd.Process.Pid
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	_ = cmd.Wait()
	w.mu.Lock()
	w.pgid = 0
	w.mu.Unlock()
	return nil
}

// command returns the next process of w.
func (w *worker) command() (*exec.Cmd, error) {
	if w.spec.Kind != KindWithlock {
		env, err := w.spec.env(roleWorker)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(w.self)
		cmd.Env = env
		return cmd, nil
	}
	env, err := w.spec.env(roleSection)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(w.withlock, "--fencing",
		"--keepalive", w.spec.KeepAlive.String(),
		"--timeout", maxWait.String(),
		"--grace", "2s",
		"--db", w.spec.DSN,
		w.spec.LockName, "--", w.self)
	cmd.Env = env
	return cmd, nil
}

// classify says how a process of w ended and whether that is expected:
// killed by SIGKILL (a fault, or the stop timeout); a library worker's
// clean exit after stop; withlock's own statuses.
func (w *worker) classify(ps *os.ProcessState, stopping bool) (string, bool) {
	status := ps.String()
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return status, true
	}
	code := ps.ExitCode()
	if w.spec.Kind != KindWithlock {
		return status, code == 0 && stopping
	}
	switch code {
	case 0, withlockLost, withlockConflict, withlockUnavailable:
		return status, true
	}
	return status, false
}

// recordLoss appends the loss that withlock reported (exit 74) to w's
// records: the section it ran, under holder pid, lost its lock.
func (w *worker) recordLoss(pid int) error {
	rec, err := OpenRecorder(w.spec.Records)
	if err != nil {
		return err
	}
	defer rec.Close()
	return rec.Write(Record{Ev: EvLoss, Worker: w.spec.Worker, PID: pid, Holder: pid, T: time.Now().UnixNano(), Err: "withlock exited 74 (lock lost)"})
}

// signal sends sig to w's running process, or to its whole process group
// (withlock and the section it runs). It returns the pid signalled, 0 if
// none was running.
func (w *worker) signal(sig syscall.Signal, group bool) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pgid == 0 {
		return 0
	}
	target := w.pgid
	if group {
		target = -target
	}
	if err := syscall.Kill(target, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return 0
	}
	return w.pgid
}

func (f *fleet) problem(p string) {
	f.mu.Lock()
	f.problems = append(f.problems, p)
	f.mu.Unlock()
}

func (f *fleet) results() ([]Exit, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Exit(nil), f.exits...), append([]string(nil), f.problems...)
}

// tail returns the last lines of a file, for a message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "; stderr (" + filepath.Base(path) + "): " + strings.Join(lines, " | ")
}

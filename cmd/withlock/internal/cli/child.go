package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"time"
)

// lookCommand resolves the command's program as exec does, so that a missing
// one is reported before anything waits for the lock. It returns the exit
// status for a failure: ExitNotFound or ExitCannotRun.
func lookCommand(name string) (path string, status int, err error) {
	path, err = exec.LookPath(name)
	switch {
	case err == nil:
		return path, ExitOK, nil
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return "", ExitNotFound, err
	}
	return "", ExitCannotRun, err
}

// A child is the command withlock runs under the lock.
type child struct {
	path  string   // resolved program
	args  []string // command line, args[0] as the user gave it
	grace time.Duration
	env   []string // added to withlock's environment; nil: the environment as it is
	fds   []int    // inherited by the command at the same numbers; closed once it has started

	stdin          io.Reader
	stdout, stderr io.Writer
}

// childResult says how the command ended.
type childResult struct {
	started  bool
	status   int           // exit status in the shell's terms, if started
	err      error         // why it could not start
	duration time.Duration // how long it ran
}

// run starts the command and waits for it, passing on every signal that
// arrives on sigs. When ctx ends (the lock was lost), the command gets
// SIGTERM, then SIGKILL after the grace period; run returns only once the
// process has exited. If ctx has ended already, the command does not start.
// If withlock dies first, the command gets deathSignal where there is one.
func (c *child) run(ctx context.Context, sigs <-chan os.Signal) childResult {
	if guardSupported {
		if res, ok := c.runGuarded(ctx, sigs); ok {
			return res
		}
	}
	cmd := exec.CommandContext(ctx, c.path, c.args[1:]...)
	cmd.Args = c.args
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.stdout, c.stderr
	setDeathSignal(cmd)
	// Linux sends the death signal when the thread that started the command
	// exits, not the process: keep this goroutine, and so the thread, until
	// the command has been reaped.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c.env != nil {
		cmd.Env = append(os.Environ(), c.env...)
	}
	if c.grace > 0 {
		cmd.Cancel = func() error { return terminate(cmd.Process) }
		cmd.WaitDelay = c.grace
	}
	start := time.Now()
	err := cmd.Start()
	closeFDs(c.fds) // the command has its own copies now
	if err != nil {
		return childResult{err: err}
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the status comes from ProcessState
		close(done)
	}()
	for {
		select {
		case sig := <-sigs:
			_ = cmd.Process.Signal(sig) // fails only once the process is gone
		case <-done:
			return childResult{started: true, status: exitStatus(cmd.ProcessState), duration: time.Since(start)}
		}
	}
}

// runGuarded runs the command under a guard (see guard_linux.go): withlock
// started again as its parent, which kills the command's whole process
// tree when withlock dies, or after the grace period when ctx ends (the
// lock was lost); signals go to it through a pipe. ok is false if the
// guard could not be set up: the command then runs as withlock's child.
func (c *child) runGuarded(ctx context.Context, sigs <-chan os.Signal) (res childResult, ok bool) {
	self, err := os.Executable()
	if err != nil {
		return res, false
	}
	r, w, err := os.Pipe()
	if err != nil {
		return res, false
	}
	defer w.Close()
	rfd, err := inheritableCopy(r)
	_ = r.Close()
	if err != nil {
		return res, false
	}
	cmd := exec.Command(self, append([]string{c.path}, c.args...)...)
	cmd.Args[0] = "withlock (guard)"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.stdout, c.stderr
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d %v", guardEnv, rfd, c.grace))
	start := time.Now()
	err = cmd.Start()
	closeFDs([]int{rfd})
	if err != nil {
		// withlock's own binary could not be started again (replaced
		// or removed since it started): the command runs unguarded.
		return res, false
	}
	closeFDs(c.fds) // the guard has its own copies now
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	lost := ctx.Done()
	for {
		select {
		case sig := <-sigs:
			if n := signalNumber(sig); n > 0 && n < 256 {
				_, _ = w.Write([]byte{byte(n)})
			}
		case <-lost:
			lost = nil
			_, _ = w.Write([]byte{guardLost})
			// Should the guard not end the tree in time, end the guard:
			// its command gets the death signal.
			t := time.AfterFunc(c.grace+treeKillBound, func() { _ = cmd.Process.Kill() })
			defer t.Stop()
		case <-done:
			return childResult{started: true, status: exitStatus(cmd.ProcessState), duration: time.Since(start)}, true
		}
	}
}

// treeKillBound is how long withlock gives a guard, past the grace period,
// to end the command's tree after a lost lock before it ends the guard.
const treeKillBound = 6 * time.Second

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
)

// A gate separates waiting for the lock from holding it. Its context bounds
// the wait (connecting and locking) and is the parent of the context the
// command runs under. Until the lock is acquired, abort cancels the context
// with a cause: a signal, the --timeout. Once enter has been called, abort
// does nothing, so the command is never stopped by what was meant to stop
// the wait; signals then go to the command.
type gate struct {
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	entered bool
	aborted bool
}

func newGate(parent context.Context) *gate {
	ctx, cancel := context.WithCancelCause(parent)
	return &gate{ctx: ctx, cancel: cancel}
}

// abort stops the wait with cause and reports true, unless the lock has been
// acquired already; then it does nothing and reports false.
func (g *gate) abort(cause error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.entered {
		return false
	}
	if !g.aborted {
		g.aborted = true
		g.cancel(cause)
	}
	return true
}

// enter marks the lock acquired. It reports false if the wait was aborted
// first (or ctx's parent ended), in which case the command must not run.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.aborted || g.ctx.Err() != nil {
		return false
	}
	g.entered = true
	return true
}

// hasEntered reports whether enter succeeded.
func (g *gate) hasEntered() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.entered
}

// whileWaiting runs f if the lock is neither acquired nor given up on yet,
// holding the gate so that neither can happen while f runs.
func (g *gate) whileWaiting(f func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.entered && !g.aborted && g.ctx.Err() == nil {
		f()
	}
}

// close releases the gate's resources once everything is done.
func (g *gate) close() { g.cancel(nil) }

// errWaitTimeout is the gate's cause when --timeout expires.
var errWaitTimeout = errors.New("timed out waiting for the lock")

// A signalCause is the gate's cause when a signal stops the wait.
type signalCause struct{ sig os.Signal }

func (s signalCause) Error() string { return fmt.Sprintf("stopped by signal %v", s.sig) }

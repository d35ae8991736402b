package session

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
)

// A Grant is one granted lock: its target and mode, whether it has ended,
// released or lost, and the Done channel that says so. The server session
// that owns it, with the keep-alive that watches it, is its session.
type Grant struct {
	t        *Target
	shared   bool
	s        *session    // the session that carries the lock
	inproc   atomic.Bool // holds the key in the in-process table (Multiplex)
	onLost   func(error)
	acquired time.Time // when the lock was granted; set only for the Ended hook
	token    uint64    // the fencing token of the grant (Config.Fencing), else 0
	pid      int64     // the backend that holds it, on a held multiplexed session (whose backend changes between transactions); else 0

	mu         sync.Mutex // taken after its session's mu, when both are
	ended      bool
	lost       error         // Config.Fail's error wrapping ErrLockLost, once lost
	done       chan struct{} // made on demand by Done; closed when the grant ends
	doneClosed bool
}

// newGrant returns the grant of the lock granted on conn as r reports it
// (driver connection, backend pid, fencing token), carried by a session of
// its own.
func (m *Manager) newGrant(conn *sql.Conn, r outcome, t *Target, req Request) *Grant {
	// One allocation for both: the lock path counts them.
	both := &struct {
		g Grant
		s session
	}{g: Grant{t: t, shared: req.Shared, acquired: m.grantedNow(), token: r.token, onLost: req.OnLost}}
	m.startSession(&both.s, conn, r, &both.g)
	return &both.g
}

// Target returns the lock's target.
func (g *Grant) Target() *Target { return g.t }

// Shared reports whether the lock is held in shared mode.
func (g *Grant) Shared() bool { return g.shared }

// Token returns the grant's fencing token, or 0.
func (g *Grant) Token() uint64 { return g.token }

// PID returns the backend pid of the server session that carries the
// grant: the pid pg_locks shows holding it (an election checks on the
// server that it still holds its lock).
func (g *Grant) PID() int64 {
	if g.pid != 0 {
		return g.pid
	}
	return g.s.pid
}

// Acquired returns when the lock was granted, if the Ended hook is set.
func (g *Grant) Acquired() time.Time { return g.acquired }

func (g *Grant) op(base string) string {
	if g.shared {
		return base + " shared"
	}
	return base
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done returns the channel closed when the grant ends, making it on first
// use: most grants are never watched.
func (g *Grant) Done() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done == nil {
		if g.doneClosed {
			return closedChan
		}
		g.done = make(chan struct{})
	}
	return g.done
}

// Err returns nil while the lock is held, its loss once lost, and
// errs.ErrNotHeld once released.
func (g *Grant) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.lost != nil:
		return g.lost
	case g.ended:
		return errs.ErrNotHeld
	}
	return nil
}

// Release unlocks the grant (see session.release and
// session.releaseCarried), then leaves the in-process table.
func (g *Grant) Release(ctx context.Context) error {
	var err error
	if g.s.mux != nil {
		err = g.s.releaseCarried(ctx, g)
	} else {
		err = g.s.release(ctx)
	}
	g.leaveTable()
	return err
}

// markEnded records the end without closing Done yet.
func (g *Grant) markEnded(err error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return false
	}
	g.ended, g.lost = true, err
	return true
}

// endForRelease ends the grant for a release and closes Done, reporting
// whether it had ended already (and its loss, if it was lost).
func (g *Grant) endForRelease() (lost error, ended bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	lost, ended = g.lost, g.ended
	g.ended = true
	if !ended {
		g.closeDoneLocked()
	}
	return lost, ended
}

func (g *Grant) closeDone() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closeDoneLocked()
}

// closeDoneLocked is closeDone for a caller that holds g.mu.
func (g *Grant) closeDoneLocked() {
	if !g.doneClosed {
		g.doneClosed = true
		if g.done != nil {
			close(g.done)
		}
	}
}

// leaveTable lets this process's next holder of the key in, once, if the
// grant took the key in the in-process table: at its release, or as soon
// as it is lost, when the server no longer holds the key for it.
func (g *Grant) leaveTable() {
	if g.inproc.Swap(false) {
		g.t.m.mux.keys.Unlock(g.t.Key, g.shared)
	}
}

func (g *Grant) lostErr(cause error) error {
	return g.t.fail(g.op("hold"), fmt.Errorf("%w: %w", errs.ErrLockLost, cause))
}

func (g *Grant) unlockErr(err error) error {
	return g.t.fail(g.op("unlock"), err)
}

// notifyLost tells the Ended hook and the holder of a loss, with n locks
// lost with the session, this one included.
func (g *Grant) notifyLost(err error, n int) {
	if ended := g.t.m.cfg.Ended; ended != nil {
		ended(g, err, n)
	}
	if g.onLost != nil {
		g.onLost(err)
	}
}

// observeEnd tells the Ended hook of a release (lost nil) or of a loss the
// release found.
func (g *Grant) observeEnd(lost error) {
	if ended := g.t.m.cfg.Ended; ended != nil {
		ended(g, lost, 0)
	}
}

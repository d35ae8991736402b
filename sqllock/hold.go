package sqllock

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A hold is one granted lock: its key and mode (the Mutex's), whether it
// has ended, released or lost, and the Done channel that says so. The
// server session that owns it, with the keep-alive that watches it, is
// its session.
type hold struct {
	m        *Mutex
	shared   bool
	s        *session    // the session that carries the lock
	inproc   atomic.Bool // holds the key in the Locker's in-process table (WithSessions)
	onLost   func(error)
	acquired time.Time // when the lock was granted; set only with observers
	token    uint64    // the fencing token of the grant (WithFencing), else 0

	mu         sync.Mutex // taken after its session's mu, when both are
	ended      bool
	lost       error         // *Error wrapping ErrLockLost once lost
	done       chan struct{} // made on demand by doneChan; closed when the hold ends
	doneClosed bool
}

// newHold returns the hold of the lock granted on conn as r reports it
// (driver connection, backend pid, fencing token), carried by a session of
// its own.
func (m *Mutex) newHold(conn *sql.Conn, r outcome, shared bool, acquired time.Time, onLost func(error)) *hold {
	// One allocation for both: the lock path counts them.
	both := &struct {
		h hold
		s session
	}{h: hold{m: m, shared: shared, acquired: acquired, token: r.token, onLost: onLost}}
	m.l.startSession(&both.s, conn, r.dc, r.pid, r.prepared, &both.h)
	return &both.h
}

func (h *hold) op(base string) string {
	if h.shared {
		return base + " shared"
	}
	return base
}

// doneChan returns the channel closed when the hold ends, making it on
// first use: most holds are never watched.
func (h *hold) doneChan() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done == nil {
		if h.doneClosed {
			return closedChan
		}
		h.done = make(chan struct{})
	}
	return h.done
}

// markEnded records the end without closing Done yet.
func (h *hold) markEnded(err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended {
		return false
	}
	h.ended, h.lost = true, err
	return true
}

// endForRelease ends the hold for a release and closes Done, reporting
// whether it had ended already (and its loss, if it was lost).
func (h *hold) endForRelease() (lost error, ended bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	lost, ended = h.lost, h.ended
	h.ended = true
	if !ended {
		h.closeDoneLocked()
	}
	return lost, ended
}

func (h *hold) closeDone() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeDoneLocked()
}

// closeDoneLocked is closeDone for a caller that holds h.mu.
func (h *hold) closeDoneLocked() {
	if !h.doneClosed {
		h.doneClosed = true
		if h.done != nil {
			close(h.done)
		}
	}
}

// release unlocks the hold (see session.release and
// session.releaseCarried), then leaves the in-process table.
func (h *hold) release(ctx context.Context) error {
	var err error
	if h.s.pool != nil {
		err = h.s.releaseCarried(ctx, h)
	} else {
		err = h.s.release(ctx)
	}
	h.leaveTable()
	return err
}

// leaveTable lets this process's next holder of the key in, once, if the
// hold took the key in the Locker's in-process table: at its release, or
// as soon as it is lost, when the server no longer holds the key for it.
func (h *hold) leaveTable() {
	if h.inproc.Swap(false) {
		h.m.l.pool.keys.Unlock(h.m.key, h.shared)
	}
}

func (h *hold) lostErr(cause error) error {
	return &Error{Op: h.op("hold"), Name: h.m.name, Key: h.m.key, Err: fmt.Errorf("%w: %w", ErrLockLost, cause)}
}

// notifyLost tells the observers and the holder of a loss, with n locks
// lost with the session, this one included.
func (h *hold) notifyLost(err error, n int) {
	if len(h.m.l.cfg.observers) != 0 {
		h.m.observe(Event{Kind: EventLost, Shared: h.shared, Held: time.Since(h.acquired), Err: err, SessionLocks: n})
	}
	if h.onLost != nil {
		h.onLost(err)
	}
}

// err reports the hold's state as Mutex.Err does.
func (h *hold) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.lost != nil:
		return h.lost
	case h.ended:
		return ErrNotHeld
	}
	return nil
}

// observeEnd reports the end of the hold to the Locker's observers.
func (h *hold) observeEnd(kind EventKind, err error) {
	if len(h.m.l.cfg.observers) == 0 {
		return
	}
	h.m.observe(Event{Kind: kind, Shared: h.shared, Held: time.Since(h.acquired), Err: err})
}

func (h *hold) unlockErr(err error) error {
	return &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: err}
}

package sqllock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A hold is one granted lock: the pinned connection whose session owns it,
// and the keep-alive that watches that session. The keep-alive is an entry
// in the Locker's scheduler, not a goroutine: each tick probes the
// connection and schedules the next one.
//
// The connection has one user at a time: whoever holds connMu, a tick's
// probe or the release. A release waits for a probe in flight, which its
// own timeout bounds.
type hold struct {
	m        *Mutex
	shared   bool
	prepared bool // the lock and its unlock run as statements prepared on conn (see stmtCache)
	conn     *sql.Conn
	dc       any   // conn's driver connection, for fireBound
	pid      int64 // backend that owns the lock
	onLost   func(error)
	acquired time.Time // when the lock was granted; set only with observers

	connMu sync.Mutex // held by whoever uses conn

	// The hold's entry in the Locker's scheduler, guarded by its mutex.
	slot    int           // index in the scheduler's list; -1 when not scheduled
	due     time.Duration // when the entry runs (see scheduler.now)
	dueKind int           // dueProbe or dueRelease
	// releaseCancel ends a release's context when its bound passes; set
	// before the dueRelease entry is scheduled. Nil when the bound is
	// enforced on the socket instead (see fireBound).
	releaseCancel context.CancelFunc

	mu         sync.Mutex
	stopped    bool // release has begun: no more probes
	unlocking  bool // the release's unlock statement is running on conn
	boundPast  bool // the release's bound has passed (socket bound only)
	ended      bool
	lost       error         // *Error wrapping ErrLockLost once lost
	done       chan struct{} // made on demand by doneChan; closed when the hold ends
	doneClosed bool
}

func (m *Mutex) newHold(conn *sql.Conn, dc any, shared, prepared bool, pid int64, acquired time.Time, onLost func(error)) *hold {
	h := &hold{m: m, shared: shared, prepared: prepared, conn: conn, dc: dc, pid: pid, acquired: acquired, onLost: onLost,
		slot: -1}
	if m.l.cfg.interval > 0 {
		m.l.sched.after(h, m.l.cfg.interval, dueProbe)
	}
	return h
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

// run does the work of the hold's scheduler entry.
func (h *hold) run(kind int) {
	switch {
	case kind != dueRelease:
		h.tick()
	case h.releaseCancel != nil:
		h.releaseCancel()
	default:
		h.fireBound()
	}
}

// fireBound ends a release whose bound has passed, when the bound is kept
// on the connection's socket (see socketBound): an unlock statement still
// running gets a read deadline in the past, so that the driver returns at
// once, with an error, and the release discards the connection; a release
// still waiting for a keep-alive probe finds the bound passed when the
// probe ends, and discards the connection without an unlock.
func (h *hold) fireBound() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.boundPast = true
	if h.unlocking {
		if nc := driverSocket(h.dc); nc != nil {
			_ = nc.SetDeadline(time.Unix(1, 0))
		}
	}
}

// tick is one keep-alive round: probe the session, then schedule the next
// probe one interval after this one was sent, unless the release has begun
// or the probe failed. Scheduling from the send time bounds detection: a
// session that answered a probe sent at t is found dead by
// t + max(interval, timeout) + timeout at the latest (see LossBound).
func (h *hold) tick() {
	h.connMu.Lock()
	h.mu.Lock()
	stopped := h.stopped
	h.mu.Unlock()
	if stopped {
		h.connMu.Unlock()
		return
	}
	sent := h.m.l.sched.now()
	cause := h.probe(h.m.l.cfg.timeout)
	if cause != nil {
		// Record the loss first, so that a release waiting for the
		// connection sees it; make sure the session is gone (see
		// endSession: one query on another connection, unless the probe
		// was abandoned, whose goroutine does it) before giving the
		// connection back, so that an Unlock waiting for it returns once
		// the server shows the lock gone; then tell observers and the
		// holder, who may call Unlock; close Done last, so that whoever
		// watches it finds the observers told.
		err := h.lostErr(cause)
		first := h.markEnded(err)
		if !errors.Is(cause, errProbeAbandoned) {
			_ = h.m.l.endSession(h.conn, h.pid, h.m.key)
		}
		h.connMu.Unlock()
		if first {
			h.notifyLost(err)
			h.closeDone()
		}
		return
	}
	// Under mu, so that a release that waits for this probe (it sets
	// stopped, then replaces or cancels the entry, then takes connMu)
	// never finds a probe scheduled after it began. A release that took
	// connMu first sets stopped before it gives connMu back, so this tick,
	// which holds connMu, cannot be running then.
	h.mu.Lock()
	if !h.stopped {
		h.m.l.sched.schedule(h, sent+h.m.l.cfg.interval, dueProbe)
	}
	h.mu.Unlock()
	h.connMu.Unlock()
}

// probe runs the keep-alive query. A driver may not return on a dead
// network even when its context ends (lib/pq waits for the server to
// answer a cancel request), so the wait is bounded here, not by the driver.
// A probe abandoned that way owns the connection until the driver returns,
// then ends its session; it reports errProbeAbandoned. Any other failure
// leaves the session for the caller to end.
func (h *hold) probe(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	type result struct {
		pid int64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		r.err = h.conn.QueryRowContext(ctx, probeSQL).Scan(&r.pid)
		ch <- r
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		cancel()
		switch {
		case r.err != nil:
			return fmt.Errorf("keep-alive query failed: %w", r.err)
		case r.pid != h.pid:
			return fmt.Errorf("keep-alive reached backend %d, but backend %d took the lock: a transaction pooler between client and server breaks session locks", r.pid, h.pid)
		}
		return nil
	case <-timer.C:
		go func() {
			<-ch
			_ = h.m.l.endSession(h.conn, h.pid, h.m.key)
		}()
		cancel()
		return fmt.Errorf("keep-alive got no answer within %v: %w", timeout, errProbeAbandoned)
	}
}

// errProbeAbandoned marks a probe that got no answer in time: its
// goroutine ends the session when the driver returns.
var errProbeAbandoned = errors.New("the session is ended when the driver returns")

func (h *hold) lostErr(cause error) error {
	return &Error{Op: h.op("hold"), Name: h.m.name, Key: h.m.key, Err: fmt.Errorf("%w: %w", ErrLockLost, cause)}
}

// notifyLost tells the observers and the holder of a loss.
func (h *hold) notifyLost(err error) {
	h.observeEnd(EventLost, err)
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

// release unlocks and returns the connection to the pool. Whatever goes
// wrong, the lock does not outlive the call: when the unlock cannot be
// confirmed, the session is ended and its end confirmed on the server
// (see Locker.endSession), or the call says it could not be. ctx bounds
// the unlock query; a ctx that is already done is not a reason to leave
// the lock to a discarded connection, whose Close may not end the
// session: the unlock then runs under ctx's values with the keep-alive
// timeout as its bound, as for a ctx that never ends.
func (h *hold) release(ctx context.Context) error {
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	// Usually no probe is using the connection: take it at once, and stop
	// the keep-alive in releaseConn's one critical section. Otherwise stop
	// it now, and wait for the probe in releaseConn.
	haveConn := h.connMu.TryLock()
	if !haveConn {
		h.mu.Lock()
		h.stopped = true
		h.mu.Unlock()
	}
	// A context that never ends (context.WithoutCancel in a defer) still
	// gets a bound: past it, the connection is discarded. The bound is a
	// scheduler entry rather than context.WithTimeout, whose timer would
	// cost a thread wake-up on every Unlock. Each entry replaces the next
	// probe's, if any.
	switch {
	case ctx.Done() != nil:
		h.m.l.sched.cancel(h) // the next probe, if any
	case h.m.l.socketBound(h.dc):
		// The entry closes in on the socket (see fireBound): the unlock
		// runs with a context the driver need not watch, which spares it
		// a cancellable context and the watch on it (nine allocations,
		// with pgx).
		h.m.l.sched.after(h, h.m.l.cfg.timeout, dueRelease)
		defer h.m.l.sched.cancel(h)
	default:
		// The entry cancels the unlock's context.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		h.releaseCancel = cancel
		h.m.l.sched.after(h, h.m.l.cfg.timeout, dueRelease)
		defer func() {
			h.m.l.sched.cancel(h)
			cancel()
		}()
	}
	err := h.releaseConn(ctx, haveConn)
	switch {
	case err == nil:
		h.observeEnd(EventReleased, nil)
	case errors.Is(err, ErrLockLost) && err != h.lost: // the keep-alive reported its own finding
		h.observeEnd(EventLost, err)
	}
	return err
}

// observeEnd reports the end of the hold to the Locker's observers.
func (h *hold) observeEnd(kind EventKind, err error) {
	if len(h.m.l.cfg.observers) == 0 {
		return
	}
	h.m.observe(Event{Kind: kind, Shared: h.shared, Held: time.Since(h.acquired), Err: err})
}

// releaseConn unlocks on the connection, taking it from the keep-alive
// first unless haveConn says the caller did.
func (h *hold) releaseConn(ctx context.Context, haveConn bool) error {
	// Take the connection from the keep-alive, waiting for a probe in
	// flight: its own timeout bounds it.
	if !haveConn {
		h.connMu.Lock()
	}
	defer h.connMu.Unlock()
	// Stop the keep-alive, end the hold (as h.end does) and, unless the
	// bound has passed or ctx has ended, mark the unlock as running, in
	// one critical section.
	h.mu.Lock()
	h.stopped = true
	lost, ended := h.lost, h.ended
	unlock := !ended && !h.boundPast && ctx.Err() == nil
	h.ended = true
	h.unlocking = unlock
	if !ended {
		h.closeDoneLocked()
	}
	h.mu.Unlock()
	if ended {
		if lost == nil {
			lost = h.unlockErr(ErrNotHeld)
		}
		return lost
	}
	if !unlock {
		return h.endSession()
	}
	q, args := h.m.unlockStatement(h.shared, h.prepared)
	rows, abandoned, settleErr, err := h.m.l.execRows(ctx, h.conn, q, args, h.prepared, h.pid, h.m.key, func() { _ = h.m.l.endSession(h.conn, h.pid, h.m.key) })
	h.mu.Lock()
	h.unlocking = false
	past := h.boundPast
	h.mu.Unlock()
	switch {
	case past:
		// The bound passed while the unlock ran: its socket may have a
		// deadline in the past, so the session goes, and the lock with
		// it if the unlock did not release it.
		return h.endSession()
	case abandoned && settleErr != nil:
		// ctx ended first, the driver has not returned, and the server
		// could not be told to end the session: it is ended when the
		// driver returns.
		return h.unlockErr(fmt.Errorf("%w: the unlock got no answer before its context ended (%w), and ending its session failed: %w", ErrNotReleased, ctx.Err(), settleErr))
	case abandoned:
		// The server ended the session, and the lock with it; the driver
		// has yet to notice, and the connection is discarded when it does.
		return nil
	case err != nil && ctxEnded(ctx):
		// Cancelled mid-query: the session goes, and the lock with it.
		return h.endSession()
	case err != nil:
		if serr := h.m.l.endSession(h.conn, h.pid, h.m.key); serr != nil {
			return h.unlockErr(fmt.Errorf("%w: unlock failed (%w)", serr, err))
		}
		return h.unlockErr(fmt.Errorf("%w: unlock failed, session ended: %w", ErrLockLost, err))
	case rows < 0:
		// The driver does not report row counts: whether the unlock found
		// the lock is unknown, so the session goes, and the lock with it.
		return h.endSession()
	case rows == 0:
		if serr := h.m.l.endSession(h.conn, h.pid, h.m.key); serr != nil {
			return h.unlockErr(serr)
		}
		return h.unlockErr(fmt.Errorf("%w: the unlock did not find it in its session (backend %d took it); a transaction pooler between client and server breaks session locks", ErrLockLost, h.pid))
	}
	if err := h.conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return h.unlockErr(err)
	}
	return nil
}

// endSession ends the hold's session (see Locker.endSession) and reports
// a failure to confirm it as the unlock's error.
func (h *hold) endSession() error {
	if err := h.m.l.endSession(h.conn, h.pid, h.m.key); err != nil {
		return h.unlockErr(err)
	}
	return nil
}

func (h *hold) unlockErr(err error) error {
	return &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: err}
}

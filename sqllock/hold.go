package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A hold is one granted lock: the pinned connection whose session owns it,
// and the keep-alive that watches that session. The keep-alive is a timer,
// not a goroutine: each tick probes the connection and re-arms the timer.
// connMu gives the connection to one user at a time: a tick's probe, or
// release, which stops the timer and then waits for a probe in flight.
type hold struct {
	m        *Mutex
	shared   bool
	conn     *sql.Conn
	pid      int64 // backend that owns the lock
	onLost   func(error)
	acquired time.Time // set only when the Locker has observers

	connMu  sync.Mutex  // held while the connection is in use
	timer   *time.Timer // the next keep-alive tick; nil without keep-alive
	stopped bool        // under connMu: release has taken the connection

	mu    sync.Mutex
	ended bool
	lost  error         // *Error wrapping ErrLockLost once lost
	done  chan struct{} // made on demand by doneChan; closed when the hold ends
}

func (m *Mutex) newHold(conn *sql.Conn, shared bool, pid int64, onLost func(error)) *hold {
	h := &hold{m: m, shared: shared, conn: conn, pid: pid, onLost: onLost}
	if m.l.cfg.interval > 0 {
		// Under connMu, which tick takes first: a tick never sees the
		// field unset, however short the interval.
		h.connMu.Lock()
		h.timer = time.AfterFunc(m.l.cfg.interval, h.tick)
		h.connMu.Unlock()
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
		if h.ended {
			return closedChan
		}
		h.done = make(chan struct{})
	}
	return h.done
}

// end marks the hold ended, with err if it was lost; it reports false if
// it had already ended.
func (h *hold) end(err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended {
		return false
	}
	h.ended, h.lost = true, err
	if h.done != nil {
		close(h.done)
	}
	return true
}

// tick is one keep-alive round: probe the session, then re-arm the timer,
// unless release has taken the connection or the probe failed.
func (h *hold) tick() {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	if h.stopped {
		return
	}
	if cause := h.probe(h.m.l.cfg.timeout); cause != nil {
		h.markLost(cause)
		return
	}
	h.timer.Reset(h.m.l.cfg.interval)
}

// probe runs the keep-alive query. A driver may not return on a dead
// network even when its context ends (lib/pq waits for the server to
// answer a cancel request), so the wait is bounded here, not by the driver.
// A probe abandoned that way owns the connection until the driver returns,
// then discards it.
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
			discard(h.conn)
			return fmt.Errorf("keep-alive query failed: %w", r.err)
		case r.pid != h.pid:
			discard(h.conn)
			return fmt.Errorf("keep-alive reached backend %d, but backend %d took the lock: a transaction pooler between client and server breaks session locks", r.pid, h.pid)
		}
		return nil
	case <-timer.C:
		go func() {
			<-ch
			discard(h.conn)
		}()
		cancel()
		return fmt.Errorf("keep-alive got no answer within %v", timeout)
	}
}

// markLost records the loss, ends the hold and tells the holder.
func (h *hold) markLost(cause error) {
	err := &Error{Op: h.op("hold"), Name: h.m.name, Key: h.m.key, Err: fmt.Errorf("%w: %w", ErrLockLost, cause)}
	if !h.end(err) {
		return
	}
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
// confirmed, the connection is discarded, which ends the session and with
// it every lock it held. ctx bounds the unlock query; if ctx is already
// done, the connection is discarded without a query and release reports
// success, since closing the session releases the lock.
func (h *hold) release(ctx context.Context) error {
	err := h.releaseConn(ctx)
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

func (h *hold) releaseConn(ctx context.Context) error {
	if h.timer != nil {
		h.timer.Stop()
	}
	// Take the connection from the keep-alive, waiting for a probe in
	// flight (bounded by the keep-alive timeout).
	h.connMu.Lock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop() // a tick that was running may have re-armed it
	}
	h.connMu.Unlock()
	h.mu.Lock()
	lost, ended := h.lost, h.ended
	h.mu.Unlock()
	if ended {
		if lost == nil {
			lost = &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: ErrNotHeld}
		}
		return lost
	}
	h.end(nil)

	if ctx.Err() != nil {
		discard(h.conn)
		return nil
	}
	q := h.m.q.unlock
	if h.shared {
		q = h.m.q.unlockShared
	}
	var released bool
	abandoned, err := h.m.l.queryRow(ctx, h.conn, q, h.m.q.args, &released)
	switch {
	case abandoned:
		// ctx ended first; the connection is discarded when the driver
		// returns, ending the session and the lock with it.
		return nil
	case err != nil && ctx.Err() != nil:
		// Cancelled mid-query: the session goes, and the lock with it.
		discard(h.conn)
		return nil
	case err != nil:
		discard(h.conn)
		return &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: fmt.Errorf("%w: unlock failed, session discarded: %w", ErrLockLost, err)}
	case !released:
		discard(h.conn)
		return &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key,
			Err: fmt.Errorf("%w: the unlock did not find it in its session (backend %d took it); a transaction pooler between client and server breaks session locks", ErrLockLost, h.pid)}
	}
	if err := h.conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: err}
	}
	return nil
}

// discard closes conn's session instead of returning it to the pool:
// Conn.Raw returning driver.ErrBadConn makes database/sql close the driver
// connection. It is the only safe end for a connection whose lock state is
// unknown.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

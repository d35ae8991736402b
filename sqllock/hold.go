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
// and the keep-alive that watches that session. Only the keep-alive
// goroutine uses the connection while the lock is held; release stops it
// first, so the two never share the connection.
type hold struct {
	m        *Mutex
	shared   bool
	conn     *sql.Conn
	pid      int64 // backend that owns the lock
	onLost   func(error)
	acquired time.Time // set only when the Locker has observers

	done   chan struct{} // closed when the hold ends: released or lost
	stop   chan struct{} // closed by release to stop the keep-alive
	exited chan struct{} // closed when the keep-alive goroutine returns

	mu    sync.Mutex
	ended bool
	lost  error // *Error wrapping ErrLockLost once lost
}

func (m *Mutex) newHold(conn *sql.Conn, shared bool, pid int64, onLost func(error)) *hold {
	h := &hold{
		m: m, shared: shared, conn: conn, pid: pid, onLost: onLost,
		done: make(chan struct{}), stop: make(chan struct{}), exited: make(chan struct{}),
	}
	if m.l.cfg.interval > 0 {
		go h.keepAlive(m.l.cfg.interval, m.l.cfg.timeout)
	} else {
		close(h.exited)
	}
	return h
}

func (h *hold) op(base string) string {
	if h.shared {
		return base + " shared"
	}
	return base
}

// keepAlive probes the session every interval until release stops it or a
// probe fails.
func (h *hold) keepAlive(interval, timeout time.Duration) {
	defer close(h.exited)
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		if cause := h.probe(timeout); cause != nil {
			h.markLost(cause)
			return
		}
		t.Reset(interval)
	}
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
	h.mu.Lock()
	if h.ended {
		h.mu.Unlock()
		return
	}
	h.ended, h.lost = true, err
	close(h.done)
	h.mu.Unlock()
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
	close(h.stop)
	<-h.exited
	h.mu.Lock()
	if h.ended {
		err := h.lost
		h.mu.Unlock()
		if err == nil {
			err = &Error{Op: h.op("unlock"), Name: h.m.name, Key: h.m.key, Err: ErrNotHeld}
		}
		return err
	}
	h.ended = true
	close(h.done)
	h.mu.Unlock()

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

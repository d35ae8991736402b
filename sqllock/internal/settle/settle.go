// Package settle ends server sessions that may hold an advisory lock, and
// makes sure the server shows them gone: the client side alone cannot
// prove it, whatever the driver.
package settle

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A connection whose lock state is unknown (a statement cancelled or
// failed mid-way, an unlock that found nothing, a keep-alive that got no
// answer) cannot go back to the pool, and discarding it is not enough:
// whether closing a driver connection ends its server session is up to the
// driver. lib/pq and pgx close the socket, and the server ends the session
// when it notices; pgx's pool bridge (stdlib.OpenDBFromPool) hands the
// connection back to pgxpool, session, locks and all; a connection waiting
// in pg_advisory_lock does not notice a closed socket until it is granted.
//
// So sqllock ends such a session twice over: on the client (drv.CloseSession,
// then database/sql's Close), and on the server, where it looks for the
// session's backend in pg_locks with the lock's key and terminates it if
// it is still there (End). Only the server's answer counts: a call
// returns nil only once pg_locks shows the backend no longer holds or
// waits for the lock.

// A Settler ends the sessions of one *sql.DB's connections. Its fields are
// set once, before use.
type Settler struct {
	DB      *sql.DB
	Timeout time.Duration // bounds each End; the keep-alive timeout
	Forget  func(dc any)  // drops what the layer above remembers of driver connection dc
}

// Discard closes conn's session instead of returning it to the pool:
// Conn.Raw returning driver.ErrBadConn makes database/sql close the driver
// connection, after drv.CloseSession has ended the session under any pool
// bridge, and Forget drops what the layer above remembered of it. It alone
// does not prove the session ended: see End.
func (s *Settler) Discard(conn *sql.Conn) {
	_ = conn.Raw(func(dc any) error {
		s.Forget(dc)
		drv.CloseSession(dc)
		return driver.ErrBadConn
	})
	_ = conn.Close()
}

// End discards conn and makes sure the server session of backend
// pid neither holds nor waits for lock k (any advisory lock, for the zero
// Key), terminating it if it still does.
// A pid of 0 means no lock statement ran on conn (locks run only on
// verified sessions, whose pid is known): then there is nothing to end.
// It is bounded by the keep-alive timeout, and returns an error wrapping
// errs.ErrNotReleased if it could not confirm the end.
func (s *Settler) End(conn *sql.Conn, pid int64, k keyspace.Key) error {
	return s.EndTx(conn, pid, 0, k)
}

// EndTx is End for a session that holds its lock in the transaction that
// began at tx (see sqltext.Look): the backend is looked for, and ended,
// only while it runs that transaction.
func (s *Settler) EndTx(conn *sql.Conn, pid, tx int64, k keyspace.Key) error {
	s.Discard(conn)
	if pid == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	if err := s.TerminateTx(ctx, pid, tx, k); err != nil {
		return fmt.Errorf("%w: backend %d: %w", errs.ErrNotReleased, pid, err)
	}
	return nil
}

// EndBounded is End bounded as awaitBounded bounds its
// settling: past min(timeout, Bound) it reports an error wrapping
// errs.ErrNotReleased and lets End finish in the background (lib/pq
// does not bound a connection's startup by its context, so on a silent
// network End's own queries wait until TCP gives up).
func (s *Settler) EndBounded(conn *sql.Conn, pid int64, k keyspace.Key) error {
	return s.EndTxBounded(conn, pid, 0, k)
}

// EndTxBounded is EndBounded for a session that holds its lock in the
// transaction that began at tx (see EndTx).
func (s *Settler) EndTxBounded(conn *sql.Conn, pid, tx int64, k keyspace.Key) error {
	done := make(chan error, 1)
	go func() { done <- s.EndTx(conn, pid, tx, k) }()
	bound := min(s.Timeout, Bound)
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w: backend %d: %w (%v)", errs.ErrNotReleased, pid, errs.ErrNoAnswer, bound)
	}
}

// maxLookRetries bounds how often Terminate looks again after its own
// session ended under the look.
const maxLookRetries = 3

// idleGrace is how long terminate watches a backend that is idle without
// the lock before it takes that as settled. A statement the client sent
// before it let go may still be on its way (through a pooler, two hops);
// a backend whose client is gone exits as soon as it reads the end of its
// input, so on a direct connection the wait ends sooner, with the backend.
// Only a session a pooler keeps (PgBouncer in session mode returns an idle
// server connection to its pool, after DISCARD ALL has released its locks)
// costs the whole grace.
const idleGrace = 25 * time.Millisecond

// Terminate settles backend pid's part in lock k, on a connection of the
// pool, after the client has let go of its session: it returns once the
// backend has exited, or stayed idle without the lock for idleGrace,
// terminating it whenever it holds or waits for the lock; or when ctx
// ends, with an error. A statement still running there (state active) is
// waited for: it may yet take the lock.
func (s *Settler) Terminate(ctx context.Context, pid int64, k keyspace.Key) error {
	return s.TerminateTx(ctx, pid, 0, k)
}

// TerminateTx is Terminate for a session that holds its lock in the
// transaction that began at tx (see EndTx).
func (s *Settler) TerminateTx(ctx context.Context, pid, tx int64, k keyspace.Key) error {
	var idleSince time.Time
	poll := time.Millisecond
	var pinned *sql.Tx
	lookRetries := 0
	defer func() {
		if pinned != nil {
			_ = pinned.Rollback()
		}
	}()
	for {
		state, holds, alive, self, err := s.look(ctx, pid, tx, k)
		switch {
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("%w: %v", errs.BoundErr(ctx, s.Timeout), err)
		case err != nil && errs.DeadSession(err) && lookRetries < maxLookRetries:
			// The look's own session ended under it (behind a transaction
			// pooler, another settling may have ended that session): look
			// again, from another, a few times.
			lookRetries++
			idleSince = time.Time{}
		case err != nil:
			return err
		case !alive:
			return nil
		case self:
			// A transaction pooler sent the look to the very session it
			// looks for, which cannot end itself. A transaction pins the
			// server session it lands on to its client connection: once
			// one lands on that session, the next looks go to others.
			idleSince = time.Time{}
			if pinned == nil {
				pinned = s.pin(ctx, pid)
			}
		case tx != 0:
			// The backend still runs the transaction that held, or took,
			// the lock: that transaction is the caller's, whatever it holds
			// now, and ending it is what settling means.
			idleSince = time.Time{}
			if _, _, err := s.terminateOnce(ctx, sqltext.TerminateTx(pid, tx)); err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("%w: %v", errs.BoundErr(ctx, s.Timeout), err)
				}
				return err
			}
		case holds:
			idleSince = time.Time{}
			if _, err := s.endHolder(ctx, pid, tx, k); err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("%w: %v", errs.BoundErr(ctx, s.Timeout), err)
				}
				return err
			}
			continue
		case state == "active" || state == "fastpath function call":
			idleSince = time.Time{}
		case idleSince.IsZero():
			idleSince = time.Now()
		case time.Since(idleSince) >= idleGrace:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("it still held, waited for or ran a statement towards the lock when its bound passed: %w", errs.BoundErr(ctx, s.Timeout))
		case <-time.After(poll):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}

// pin opens a transaction on a connection of the pool and keeps it open if
// it reached the session of backend pid (see Terminate); else it returns
// nil.
func (s *Settler) pin(ctx context.Context, pid int64) *sql.Tx {
	tx, err := s.DB.BeginTx(ctx, nil)
	if err != nil {
		return nil
	}
	var got int64
	if err := tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&got); err != nil || got != pid {
		_ = tx.Rollback()
		return nil
	}
	return tx
}

// look runs sqltext.Look.
func (s *Settler) look(ctx context.Context, pid, tx int64, k keyspace.Key) (state string, holds, alive, self bool, err error) {
	var st sql.NullString
	err = s.DB.QueryRowContext(ctx, sqltext.Look(pid, tx, k)).Scan(&st, &holds, &self)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, false, false, nil
	}
	return st.String, holds, err == nil, self, err
}

// EndHolder terminates backend pid if it still holds or waits for lock k,
// and waits for it to exit where the server can (PostgreSQL 14 and later),
// within ctx or the Settler's timeout. It reports whether it found the
// backend with the lock: one that let go meanwhile, whose session may now
// serve other work, is left alone.
func (s *Settler) EndHolder(ctx context.Context, pid int64, k keyspace.Key) (found bool, err error) {
	return s.endHolder(ctx, pid, 0, k)
}

// endHolder is EndHolder, with tx as in TerminateTx.
func (s *Settler) endHolder(ctx context.Context, pid, tx int64, k keyspace.Key) (found bool, err error) {
	wait := time.Until(deadlineOr(ctx, time.Now().Add(s.Timeout))).Milliseconds()
	found, _, err = s.terminateOnce(ctx, sqltext.Terminate(pid, tx, k, max(wait, 1)))
	if errs.UndefinedFunction(err) {
		found, _, err = s.terminateOnce(ctx, sqltext.Terminate(pid, tx, k, 0))
	}
	return found, err
}

// terminateOnce runs one termination statement and reports whether it
// found the backend with the lock, and whether every backend it
// terminated has exited.
func (s *Settler) terminateOnce(ctx context.Context, query string) (found, exited bool, err error) {
	rows, err := s.DB.QueryContext(ctx, query)
	if err != nil {
		return false, false, err
	}
	defer rows.Close()
	exited = true
	for rows.Next() {
		var ok bool
		if err := rows.Scan(&ok); err != nil {
			return false, false, err
		}
		found, exited = true, exited && ok
	}
	return found, exited, rows.Err()
}

func deadlineOr(ctx context.Context, t time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return t
}

// EndMarked discards conn and makes sure that no backend is left in the
// transaction a held try marked with mark began (see sqltext.Marked), or
// still running that try, terminating any it finds: the settling of a try
// whose answer never came, and so no backend pid. Bounded by the Settler's
// timeout; an error wraps errs.ErrNotReleased.
func (s *Settler) EndMarked(conn *sql.Conn, mark string) error {
	s.Discard(conn)
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	if err := s.TerminateMarked(ctx, mark); err != nil {
		return fmt.Errorf("%w: %w", errs.ErrNotReleased, err)
	}
	return nil
}

// TerminateMarked is EndMarked's work on the server, within ctx.
func (s *Settler) TerminateMarked(ctx context.Context, mark string) error {
	poll := time.Millisecond
	for {
		if _, _, err := s.terminateOnce(ctx, sqltext.MarkedTerminate(mark)); err != nil {
			return fmt.Errorf("%w: %v", errs.BoundErr(ctx, s.Timeout), err)
		}
		var left int
		if err := s.DB.QueryRowContext(ctx, sqltext.MarkedLook(mark)).Scan(&left); err != nil {
			return fmt.Errorf("%w: %v", errs.BoundErr(ctx, s.Timeout), err)
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("a session of the marked try still ran when its bound passed: %w", errs.BoundErr(ctx, s.Timeout))
		case <-time.After(poll):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}

// Bound caps how long sqllock spends ending an abandoned
// statement's session, beyond the keep-alive timeout that also bounds it:
// a call whose context has ended returns within abandonGrace plus this,
// even on a silent network, saying whether the session was seen to end.
const Bound = 500 * time.Millisecond

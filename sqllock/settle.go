package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
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
// So sqllock ends such a session twice over: on the client (closeSession,
// then database/sql's Close), and on the server, where it looks for the
// session's backend in pg_locks with the lock's key and terminates it if
// it is still there (endSession). Only the server's answer counts: a call
// returns nil only once pg_locks shows the backend no longer holds or
// waits for the lock.

// discard closes conn's session instead of returning it to the pool:
// Conn.Raw returning driver.ErrBadConn makes database/sql close the driver
// connection, after closeSession has ended the session under any pool
// bridge. It alone does not prove the session ended: see endSession.
// The Locker forgets the session it verified there, which is gone.
func (l *Locker) discard(conn *sql.Conn) {
	_ = conn.Raw(func(dc any) error {
		l.sessions.drop(dc)
		closeSession(dc)
		return driver.ErrBadConn
	})
	_ = conn.Close()
}

// endSession discards conn and makes sure the server session of backend
// pid neither holds nor waits for lock k, terminating it if it still does.
// A pid of 0 means no lock statement ran on conn (locks run only on
// verified sessions, whose pid is known): then there is nothing to end.
// It is bounded by the keep-alive timeout, and returns an error wrapping
// ErrNotReleased if it could not confirm the end.
func (l *Locker) endSession(conn *sql.Conn, pid int64, k keyspace.Key) error {
	l.discard(conn)
	if pid == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.timeout)
	defer cancel()
	if err := l.terminate(ctx, pid, k); err != nil {
		return fmt.Errorf("%w: backend %d: %w", ErrNotReleased, pid, err)
	}
	return nil
}

// terminateSQL terminates the backend $1 if it holds or waits for the
// advisory lock ($2, $3, $4) (see keyspace.Key.LockTag), and waits up to
// $5 milliseconds for it to exit. It answers one row per lock entry found:
// true once the backend has exited. A session never terminates itself.
const terminateSQL = `SELECT pg_terminate_backend(pid, $5::int8) FROM pg_locks
WHERE locktype = 'advisory' AND pid = $1 AND classid = $2 AND objid = $3 AND objsubid = $4
	AND pid <> pg_backend_pid()`

// terminateSQL13 is terminateSQL for PostgreSQL 13 and older, whose
// pg_terminate_backend does not wait; terminate then polls pg_locks.
const terminateSQL13 = `SELECT pg_terminate_backend(pid) FROM pg_locks
WHERE locktype = 'advisory' AND pid = $1 AND classid = $2 AND objid = $3 AND objsubid = $4
	AND pid <> pg_backend_pid()`

// terminate ends backend pid if it holds or waits for lock k, on a
// connection of the pool, and returns once pg_locks no longer shows it
// there, or ctx ends.
func (l *Locker) terminate(ctx context.Context, pid int64, k keyspace.Key) error {
	c, o, s := k.LockTag()
	wait := time.Until(deadlineOr(ctx, time.Now().Add(l.cfg.timeout))).Milliseconds()
	args := []any{pid, int64(c), int64(o), int64(s)}
	for poll := time.Millisecond; ; poll = min(2*poll, 100*time.Millisecond) {
		found, exited, err := l.terminateOnce(ctx, terminateSQL, append(args, max(wait, 1)))
		if undefinedFunction(err) {
			found, _, err = l.terminateOnce(ctx, terminateSQL13, args)
			exited = false
		}
		switch {
		case err != nil:
			return err
		case !found || exited:
			return nil
		}
		// Terminated, not yet exited (PostgreSQL 13, or a backend slow to
		// go): look again.
		select {
		case <-ctx.Done():
			return fmt.Errorf("it still held or waited for the lock when the keep-alive timeout passed: %w", ctx.Err())
		case <-time.After(poll):
		}
	}
}

// terminateOnce runs one termination statement and reports whether it
// found the backend with the lock, and whether every backend it
// terminated has exited.
func (l *Locker) terminateOnce(ctx context.Context, query string, args []any) (found, exited bool, err error) {
	rows, err := l.db.QueryContext(ctx, query, args...)
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

// undefinedFunction reports a server error 42883: a function signature the
// server does not have (pg_terminate_backend's timeout, before
// PostgreSQL 14).
func undefinedFunction(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "42883"
}

func deadlineOr(ctx context.Context, t time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return t
}

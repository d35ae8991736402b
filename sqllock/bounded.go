package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"time"
)

// queryAnswer runs a statement that answers one value on conn and returns
// the value as the driver gives it, bounded by ctx even where the driver is
// not: lib/pq answers a cancelled context by sending the server a cancel
// request and waiting for the server's reply, which on a silent network
// never comes. pgx bounds its own calls with network deadlines, so with pgx
// (and with a context that never ends) the statement runs inline.
//
// When ctx ends and the driver has not returned abandonGrace later,
// queryAnswer returns ctx.Err() and abandoned is true: the statement goes
// on in the background, and its connection is discarded once the driver
// returns. The caller must not touch conn again.
func (l *Locker) queryAnswer(ctx context.Context, conn *sql.Conn, q string, args []any) (v any, abandoned bool, err error) {
	if l.boundsContext || ctx.Done() == nil {
		err = conn.QueryRowContext(ctx, q, args...).Scan(&v)
		return v, false, err
	}
	done := make(chan outcome, 1)
	go func() {
		var r outcome
		r.err = conn.QueryRowContext(ctx, q, args...).Scan(&r.v)
		done <- r
	}()
	r, abandoned := awaitBounded(ctx, conn, done)
	return r.v, abandoned, r.err
}

// execRows runs a statement on conn and returns the number of rows it
// produced, bounded by ctx as queryAnswer is. It costs less than a query:
// no rows to read, and database/sql watches the context of a query, but
// not of an Exec, with a goroutine.
func (l *Locker) execRows(ctx context.Context, conn *sql.Conn, q string, args []any) (n int64, abandoned bool, err error) {
	if l.boundsContext || ctx.Done() == nil {
		n, err = rowsAffected(conn.ExecContext(ctx, q, args...))
		return n, false, err
	}
	done := make(chan outcome, 1)
	go func() {
		var r outcome
		r.n, r.err = rowsAffected(conn.ExecContext(ctx, q, args...))
		done <- r
	}()
	r, abandoned := awaitBounded(ctx, conn, done)
	return r.n, abandoned, r.err
}

// rowsAffected returns the row count of a statement that ran, or -1 if the
// driver cannot tell it.
func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return -1, nil
	}
	return n, nil
}

// outcome is what a statement run in the background reports.
type outcome struct {
	v   any   // queryAnswer's value
	n   int64 // execRows's row count
	err error
}

// awaitBounded waits for a statement running in the background to report on
// done, or for ctx to end and abandonGrace to pass after it; then abandoned
// is true, and conn is discarded once the statement returns.
func awaitBounded(ctx context.Context, conn *sql.Conn, done chan outcome) (r outcome, abandoned bool) {
	select {
	case r := <-done:
		return r, false
	case <-ctx.Done():
	}
	// A live server answers the driver's cancel request within a round trip
	// or two; wait that long so the connection is settled (and discarded by
	// the caller) before returning. Only a silent network outlasts this.
	t := time.NewTimer(abandonGrace)
	defer t.Stop()
	select {
	case r := <-done:
		return r, false
	case <-t.C:
		go func() {
			<-done
			discard(conn)
		}()
		return outcome{err: ctx.Err()}, true
	}
}

// abandonGrace is how long queryAnswer and execRows wait, after their
// context ends, for a driver that does not bound its own calls to return.
const abandonGrace = 250 * time.Millisecond

// SQLSTATEs of a session the server has ended: a statement that gets one
// never ran, so the lock it asked for is not held.
var deadSessionStates = map[string]bool{
	"57P01": true, // admin_shutdown (server restart, pg_terminate_backend)
	"57P02": true, // crash_shutdown
	"57P03": true, // cannot_connect_now
	"57P05": true, // idle_session_timeout
}

// deadSession reports whether err says that the pooled connection's session
// was already gone when the statement was sent, so that taking another
// connection is safe and right.
func deadSession(err error) bool {
	if errors.Is(err, driver.ErrBadConn) {
		return true
	}
	var se interface{ SQLState() string }
	return errors.As(err, &se) && deadSessionStates[se.SQLState()]
}

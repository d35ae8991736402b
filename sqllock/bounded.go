package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"
	"time"
)

// execRows runs statement q on conn's driver connection and returns the
// number of rows it produced, bounded by ctx as Mutex.runLock is. It costs
// less than a query: no rows to read. If the statement is abandoned,
// onAbandon runs once the driver returns.
func (l *Locker) execRows(ctx context.Context, conn *sql.Conn, q string, args []driver.NamedValue, onAbandon func()) (n int64, abandoned bool, err error) {
	if l.boundsContext || ctx.Done() == nil {
		r := execRaw(ctx, conn, q, args)
		return r.n, false, r.err
	}
	done := make(chan outcome, 1)
	go func() { done <- execRaw(ctx, conn, q, args) }()
	r, abandoned := awaitBounded(ctx, done, func(outcome) { onAbandon() })
	return r.n, abandoned, r.err
}

func execRaw(ctx context.Context, conn *sql.Conn, q string, args []driver.NamedValue) (r outcome) {
	if err := conn.Raw(func(dc any) error {
		r.n, r.err = driverExecRows(ctx, dc, q, args)
		return nil
	}); err != nil {
		r.err = err
	}
	return r
}

// rowsAffected returns the row count of a statement that ran, or -1 if the
// driver cannot tell it.
func rowsAffected(res interface{ RowsAffected() (int64, error) }, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	if res == nil {
		return -1, nil
	}
	n, err := res.RowsAffected()
	if err != nil {
		return -1, nil
	}
	return n, nil
}

// outcome is what a statement reports, from the background or not.
type outcome struct {
	n   int64 // execRows's row count, or lockOn's flags
	pid int64 // lockOn: the session's backend pid, once known
	ran bool  // lockOn: a lock statement was sent
	dc  any   // lockOn's driver connection
	err error
}

// awaitBounded waits for a statement running in the background to report on
// done, or for ctx to end and abandonGrace to pass after it; then abandoned
// is true, and onAbandon runs with the statement's outcome once it
// returns: it must end the connection's session.
func awaitBounded(ctx context.Context, done chan outcome, onAbandon func(outcome)) (r outcome, abandoned bool) {
	select {
	case r := <-done:
		return r, false
	case <-ctx.Done():
	}
	// A live server answers the driver's cancel request within a round trip
	// or two; wait that long so the connection is settled (and ended by
	// the caller) before returning. Only a silent network outlasts this.
	t := time.NewTimer(abandonGrace)
	defer t.Stop()
	select {
	case r := <-done:
		return r, false
	case <-t.C:
		go func() { onAbandon(<-done) }()
		return outcome{err: ctx.Err()}, true
	}
}

// abandonGrace is how long Mutex.runLock and execRows wait, after their
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

// deadSession reports whether err says that the connection's session is
// gone, or its socket broken, so that whatever a statement on it took
// ends with the session, and taking another connection is right: the
// driver's ErrBadConn, a SQLSTATE of a session the server ended, or a
// network error other than a timeout (lib/pq reports a reset connection
// as a *net.OpError, pgx a closed one as io.ErrUnexpectedEOF). A timeout
// is not: a driver's read timeout (bun's pgdriver has one) can fire while
// the session waits, alive, for a lock.
func deadSession(err error) bool {
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok {
		return !ne.Timeout()
	}
	var se interface{ SQLState() string }
	return errors.As(err, &se) && deadSessionStates[se.SQLState()]
}

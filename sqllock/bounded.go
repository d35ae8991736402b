package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"time"
)

// execRows runs statement q on conn's driver connection and returns the
// number of rows it produced, bounded by ctx as Mutex.runLock is. It costs
// less than a query: no rows to read.
func (l *Locker) execRows(ctx context.Context, conn *sql.Conn, q string, args []driver.NamedValue) (n int64, abandoned bool, err error) {
	if l.boundsContext || ctx.Done() == nil {
		r := execRaw(ctx, conn, q, args)
		return r.n, false, r.err
	}
	done := make(chan outcome, 1)
	go func() { done <- execRaw(ctx, conn, q, args) }()
	r, abandoned := awaitBounded(ctx, conn, done)
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
	n   int64 // execRows's row count, or runLock's answer
	dc  any   // runLock's driver connection
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

package errs

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// SQLSTATE codes sqllock recognises in server errors.
const (
	sqlstateDeadlock       = "40P01" // deadlock_detected
	sqlstateOutOfLockTable = "53200" // out_of_memory: the lock table is full
)

// Classify wraps server errors that have a sentinel. Drivers expose the
// SQLSTATE through a SQLState method (pgx's *pgconn.PgError, lib/pq's
// *pq.Error), so no driver is imported.
func Classify(err error) error {
	var se interface{ SQLState() string }
	if errors.As(err, &se) {
		switch se.SQLState() {
		case sqlstateDeadlock:
			return fmt.Errorf("%w: %w", ErrDeadlock, err)
		case sqlstateOutOfLockTable:
			return fmt.Errorf("%w: %w", ErrLockTableFull, err)
		}
	}
	return err
}

// WithCtxErr makes sure an error caused by the context ending wraps the
// context's error: lib/pq reports a cancelled query as its own SQLSTATE
// 57014 error, which does not.
func WithCtxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if cerr == nil && CtxEnded(ctx) {
		cerr = context.DeadlineExceeded
	}
	if err == nil {
		// The context's cause, read as its deadline passed but before its
		// timer fired: nil yet.
		return cerr
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

// ServerRefused reports whether err is the server's error answer to a
// statement that ran to its end on a sound session, before ctx ended: an
// error a statement raises is atomic, so the statement took nothing.
// Errors of classes 57 (operator intervention: a cancel, a terminated
// backend) and 08 (connection exception), and XX (internal), say nothing
// of the kind.
func ServerRefused(ctx context.Context, err error) bool {
	var se interface{ SQLState() string }
	if CtxEnded(ctx) || !errors.As(err, &se) {
		return false
	}
	state := se.SQLState()
	if len(state) != 5 {
		return false
	}
	switch state[:2] {
	case "57", "08", "XX":
		return false
	}
	return true
}

// IsDriverTimeout reports whether err is a network timeout that ctx did not
// cause: the driver's own read or write timeout (bun's pgdriver has a 10s
// read timeout by default) ended the statement.
func IsDriverTimeout(ctx context.Context, err error) bool {
	var ne net.Error
	return !CtxEnded(ctx) && errors.As(err, &ne) && ne.Timeout()
}

// CtxEnded reports whether ctx has ended, or reached its deadline: a
// driver's network deadline, taken from ctx (pgx, bun's pgdriver), can
// fire a moment before ctx's own timer does, and its error (an i/o
// timeout) is then the context's doing.
func CtxEnded(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// StatementGone reports a server error 26000 (invalid_sql_statement_name):
// a prepared statement that does not exist in the connection's session.
func StatementGone(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "26000"
}

// NotPermitted reports a server error 42501 (insufficient_privilege).
func NotPermitted(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "42501"
}

// UndefinedFunction reports a server error 42883: a function signature the
// server does not have (pg_terminate_backend's timeout, before
// PostgreSQL 14).
func UndefinedFunction(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "42883"
}

// BoundErr is the error for ctx ended: NoAnswer naming bound when ctx
// is one of sqllock's own bounds that passed, else ctx's error (a caller's
// context reaches terminate through endSession's deadline only).
func BoundErr(ctx context.Context, bound time.Duration) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w (%v)", ErrNoAnswer, bound)
	}
	return ctx.Err()
}

// SQLSTATEs of a session the server has ended: a statement that gets one
// never ran, so the lock it asked for is not held.
var deadSessionStates = map[string]bool{
	"57P01": true, // admin_shutdown (server restart, pg_terminate_backend)
	"57P02": true, // crash_shutdown
	"57P03": true, // cannot_connect_now
	"57P05": true, // idle_session_timeout
}

// DeadSession reports whether err says that the connection's session is
// gone, or its socket broken, so that whatever a statement on it took
// ends with the session, and taking another connection is right: the
// driver's ErrBadConn, a SQLSTATE of a session the server ended, or a
// network error other than a timeout (lib/pq reports a reset connection
// as a *net.OpError, pgx a closed one as io.ErrUnexpectedEOF). A timeout
// is not: a driver's read timeout (bun's pgdriver has one) can fire while
// the session waits, alive, for a lock.
func DeadSession(err error) bool {
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

// KeepAliveTimeout is ErrNoAnswer naming the keep-alive timeout, bound,
// as the bound that ended a statement.
func KeepAliveTimeout(bound time.Duration) error {
	return fmt.Errorf("%w (%v, the keep-alive timeout)", ErrNoAnswer, bound)
}

// OwnBound returns err, which a statement bounded by sctx, a bound of
// sqllock's own, returned: as KeepAliveTimeout when sctx ended (pgx returns
// its context's error), with the driver's error as text, so that no
// context error the caller did not cause is wrapped.
func OwnBound(sctx context.Context, bound time.Duration, err error) error {
	if err == nil || sctx.Err() == nil {
		return err
	}
	return fmt.Errorf("%w: %v", KeepAliveTimeout(bound), err)
}

// LockNotAvailable reports whether err is the server's lock_timeout
// (SQLSTATE 55P03) ending a lock wait.
func LockNotAvailable(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "55P03"
}

// MultipleCommands reports whether err is the server refusing a query of
// several statements in the extended protocol (SQLSTATE 42601, "cannot
// insert multiple commands into a prepared statement").
func MultipleCommands(err error) bool {
	var se interface{ SQLState() string }
	return errors.As(err, &se) && se.SQLState() == "42601" && strings.Contains(err.Error(), "multiple commands")
}

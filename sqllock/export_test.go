package sqllock

import (
	"database/sql"
	"net"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
)

// DriverSocket gives the external tests the socket under conn's driver
// connection, as the release bound finds it (nil: the bound does not
// reach the socket).
func DriverSocket(conn *sql.Conn) net.Conn {
	dc := driverConn(conn)
	return drv.Socket(dc)
}

// InterruptKind tells the external tests how a statement on conn's driver
// connection is interrupted when its bound passes: "socket", "close" or
// "none" (the bound cancels a context instead).
func InterruptKind(conn *sql.Conn) string {
	switch drv.InterruptWith(driverConn(conn)) {
	case drv.InterruptSocket:
		return "socket"
	case drv.InterruptClose:
		return "close"
	}
	return "none"
}

// StatementRunning reports whether a statement runs, watched, on one of
// l's multiplexed sessions (WithSessions).
func StatementRunning(l *Locker) bool {
	return l.sessions.StatementRunning()
}

// WithLiterals makes a Locker write keys into its statements' text, as
// behind poolers it cannot prepare on.
var WithLiterals = withPlaceholders(false)

// driverConn returns conn's driver connection.
func driverConn(conn *sql.Conn) (dc any) {
	_ = conn.Raw(func(c any) error {
		dc = c
		return nil
	})
	return dc
}

// WithPlaceholders forces the SQL shape (see withPlaceholders).
var WithPlaceholders = withPlaceholders

// DBOf returns the *sql.DB l takes its locks on.
func DBOf(l *Locker) *sql.DB { return l.db }

// SetInterrupt makes l interrupt statements how (see drv.InterruptWith),
// as with another driver.
func SetInterrupt(l *Locker, how int) { l.sessions.SetInterruptForTest(how) }

// SetBoundsContext makes l treat its driver as one that bounds its own
// calls by their context (pgx), or not.
func SetBoundsContext(l *Locker, b bool) { l.sessions.SetBoundsContextForTest(b) }

// SetHeldSplit makes l send BEGIN apart from the try of a lock held in
// a transaction behind a pooler, as for a driver that takes one statement
// at a time.
func SetHeldSplit(l *Locker) { l.sessions.SetHeldSplitForTest() }

// Interrupt returns how l interrupts statements, once known.
func Interrupt(l *Locker) int { return l.sessions.Interrupt() }

// DriverConn returns conn's driver connection.
func DriverConn(conn *sql.Conn) any { return driverConn(conn) }

// SemaphoreWaiting returns how many callers of s wait in its in-process
// queue, the first of them included.
func SemaphoreWaiting(s *Semaphore) int {
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	return len(s.q.waiters)
}

// ObservedGrants returns how many grants l's observers keep track of: none
// once every lock has ended.
func ObservedGrants(l *Locker) int {
	if l.obs == nil {
		return 0
	}
	l.obs.mu.Lock()
	defer l.obs.mu.Unlock()
	return len(l.obs.grants)
}

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
// l's shared sessions (WithSessions).
func StatementRunning(l *Locker) bool {
	if l.pool == nil {
		return false
	}
	l.pool.mu.Lock()
	open := append([]*session(nil), l.pool.open...)
	l.pool.mu.Unlock()
	for _, s := range open {
		s.mu.Lock()
		running := s.stmtRunning
		s.mu.Unlock()
		if running {
			return true
		}
	}
	return false
}

// WithLiterals makes a Locker write keys into its statements' text, as
// behind poolers it cannot prepare on.
var WithLiterals = withPlaceholders(false)

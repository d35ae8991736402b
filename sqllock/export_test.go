package sqllock

import (
	"database/sql"
	"net"
)

// DriverSocket gives the external tests the socket under conn's driver
// connection, as the release bound finds it (nil: the bound cancels a
// context instead).
func DriverSocket(conn *sql.Conn) net.Conn {
	dc := driverConn(conn)
	return driverSocket(dc)
}

package sqllock

import (
	"net"
	"testing"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
)

// Stand-ins for pgx's stdlib.Conn, pgx.Conn and pgconn.PgConn.
type (
	fakeStdlibConn struct{ c *fakePgxConn }
	fakePgxConn    struct{ pc *fakePgConn }
	fakePgConn     struct{ nc net.Conn }
	wrongSignature struct{}
)

func (c *fakeStdlibConn) Conn() *fakePgxConn { return c.c }
func (c *fakePgxConn) PgConn() *fakePgConn   { return c.pc }
func (c *fakePgConn) Conn() net.Conn         { return c.nc }
func (wrongSignature) Conn(int) *fakePgxConn { return nil }

// drv.Socket follows Conn, PgConn, Conn down to a net.Conn, and gives
// nil, without a panic, wherever the chain breaks.
func TestDriverSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	full := &fakeStdlibConn{&fakePgxConn{&fakePgConn{a}}}
	if got := drv.Socket(full); got != a {
		t.Errorf("driverSocket(pgx-like chain) = %v, want the net.Conn at its end", got)
	}
	for name, dc := range map[string]any{
		"nil":                  nil,
		"nil pointer":          (*fakeStdlibConn)(nil),
		"nil link":             &fakeStdlibConn{},
		"nil second link":      &fakeStdlibConn{&fakePgxConn{}},
		"nil net.Conn":         &fakeStdlibConn{&fakePgxConn{&fakePgConn{}}},
		"not a driver conn":    42,
		"methods with args":    wrongSignature{},
		"no Conn method":       &fakePgxConn{},
		"chain of wrong types": &fakePgConn{a}, // Conn gives a net.Conn, which has no PgConn
	} {
		if got := drv.Socket(dc); got != nil {
			t.Errorf("driverSocket(%s) = %v, want nil", name, got)
		}
	}
}

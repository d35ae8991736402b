package drv

import (
	"net"
	"reflect"
	"time"
)

// Some drivers' calls can be interrupted from another goroutine, which
// lets sqllock bound a statement without a goroutine hand-off or a
// cancellable context: the statement runs under a context that never
// ends, in its caller's goroutine, and whoever keeps its bound (a
// release's scheduler entry, see session.fireBound; a shared session's
// watchdog, see session.watchdog) interrupts it when the bound passes. The
// statement then returns at once, with an error, and its session is ended.
//
// Two drivers can be interrupted:
//   - pgx: a read deadline in the past on the connection's socket (see
//     Socket) makes the read return, as pgx itself does when a
//     context ends.
//   - lib/pq: closing the driver connection closes its socket, whose read
//     then returns; lib/pq's Close writes a Terminate message and closes
//     the socket, and touches nothing a statement in flight uses.

// Ways to interrupt a statement (session.Manager.interruptHow caches the answer).
const (
	InterruptUnknown = iota
	InterruptNone    // the driver cannot be interrupted: a goroutine waits for it
	InterruptSocket  // set a past deadline on the socket (pgx)
	InterruptClose   // close the driver connection (lib/pq)
)

// InterruptWith returns how a statement running on driver connection dc
// can be interrupted from another goroutine.
func InterruptWith(dc any) int {
	if Socket(dc) != nil {
		return InterruptSocket
	}
	t := reflect.TypeOf(SessionOwner(dc))
	if t != nil && t.Kind() == reflect.Pointer && t.Elem().PkgPath() == "github.com/lib/pq" && t.Elem().Name() == "conn" {
		return InterruptClose
	}
	return InterruptNone
}

// interrupt makes a statement running on dc return at once, with an
// error, as InterruptWith(dc) says it can.
func Interrupt(dc any, how int) {
	switch how {
	case InterruptSocket:
		if nc := Socket(dc); nc != nil {
			_ = nc.SetDeadline(time.Unix(1, 0))
		}
	case InterruptClose:
		if c, ok := SessionOwner(dc).(interface{ Close() error }); ok {
			_ = c.Close()
		}
	}
}

// Socket returns the network connection under a pgx connection
// (see SessionOwner: under pgx's stdlib.Conn, and any wrappers that expose
// what they wrap), or nil for any other driver. It goes through pgx's
// exported accessors, stdlib.Conn.Conn, pgx.Conn.PgConn and
// pgconn.PgConn.Conn, by reflection, since sqllock imports only the
// standard library; each one only reads a field that is set when the
// connection opens, so it may run while the connection is busy. A read
// deadline set on that socket is how pgx itself ends a statement whose
// context is cancelled.
//
// The method names are constants so that the linker can still drop unused
// methods from a program.
func Socket(dc any) net.Conn {
	v := Call0(reflect.ValueOf(SessionOwner(dc)), "PgConn")
	v = Call0(v, "Conn")
	if !v.IsValid() {
		return nil
	}
	nc, _ := v.Interface().(net.Conn)
	return nc
}

// call0 calls v's method name if v is a non-nil value with such a method,
// taking no arguments and giving one result, and returns that result
// unless it is nil; otherwise it returns the zero Value.
func Call0(v reflect.Value, name string) reflect.Value {
	if !Usable(v) {
		return reflect.Value{}
	}
	var m reflect.Value
	switch name { // constant names: see driverSocket
	case "Conn":
		m = v.MethodByName("Conn")
	case "PgConn":
		m = v.MethodByName("PgConn")
	case "PID":
		m = v.MethodByName("PID")
	}
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return reflect.Value{}
	}
	if r := m.Call(nil)[0]; Usable(r) {
		return r
	}
	return reflect.Value{}
}

// usable reports whether v holds a value whose methods may be called.
func Usable(v reflect.Value) bool {
	if !v.IsValid() || !v.CanInterface() {
		return false
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return !v.IsNil()
	}
	return true
}

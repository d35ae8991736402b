package sqllock

import (
	"net"
	"reflect"
)

// socketBound reports whether the release bound of a context that never
// ends can be kept on the socket of driver connection dc (see
// hold.fireBound) rather than by a cancellable context. It can with a
// driver that returns on time when its socket's deadline passes (pgx) and
// whose socket sqllock can reach. The answer is the same for every
// connection of a Locker's pool, so it is worked out once.
func (l *Locker) socketBound(dc any) bool {
	switch l.socket.Load() {
	case socketYes:
		return true
	case socketNo:
		return false
	}
	ok := l.boundsContext && driverSocket(dc) != nil
	if ok {
		l.socket.Store(socketYes)
	} else {
		l.socket.Store(socketNo)
	}
	return ok
}

// States of Locker.socket.
const (
	socketUnknown = iota
	socketYes
	socketNo
)

// driverSocket returns the network connection under a pgx connection
// (see sessionOwner: under pgx's stdlib.Conn, and any wrappers that expose
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
func driverSocket(dc any) net.Conn {
	v := call0(reflect.ValueOf(sessionOwner(dc)), "PgConn")
	v = call0(v, "Conn")
	if !v.IsValid() {
		return nil
	}
	nc, _ := v.Interface().(net.Conn)
	return nc
}

// call0 calls v's method name if v is a non-nil value with such a method,
// taking no arguments and giving one result, and returns that result
// unless it is nil; otherwise it returns the zero Value.
func call0(v reflect.Value, name string) reflect.Value {
	if !usable(v) {
		return reflect.Value{}
	}
	var m reflect.Value
	switch name { // constant names: see driverSocket
	case "Conn":
		m = v.MethodByName("Conn")
	case "PgConn":
		m = v.MethodByName("PgConn")
	}
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return reflect.Value{}
	}
	if r := m.Call(nil)[0]; usable(r) {
		return r
	}
	return reflect.Value{}
}

// usable reports whether v holds a value whose methods may be called.
func usable(v reflect.Value) bool {
	if !v.IsValid() || !v.CanInterface() {
		return false
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return !v.IsNil()
	}
	return true
}

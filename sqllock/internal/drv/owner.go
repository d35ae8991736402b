package drv

import (
	"context"
	"database/sql/driver"
	"reflect"
	"time"
)

// A driver connection that database/sql hands out is not always the
// object that owns the server session. Two layers can sit in between:
//
//   - Wrappers: instrumentation such as OpenTelemetry's otelsql or
//     sqlhooks wrap each driver connection in one of their own, for the
//     connection's whole life.
//   - Pool bridges: pgx's stdlib.OpenDBFromPool hands database/sql a new
//     stdlib.Conn for each checkout, over a *pgx.Conn that pgxpool owns and
//     keeps, with its session and any lock on it, when database/sql closes
//     the stdlib.Conn.
//
// SessionOwner finds the object that owns the session under both, so that
// the Locker marks and remembers the session, not the wrapper; and
// CloseSession ends that object's session, where closing the wrapper
// would only hand it back to a pool.

// MaxUnwrap bounds how many wrappers SessionOwner looks through.
const MaxUnwrap = 8

// SessionOwner returns the client-side object that owns driver connection
// dc's server session: the *pgx.Conn under pgx's stdlib.Conn, under any
// wrappers that expose what they wrap (a Raw() driver.Conn method, as
// otelsql has, or an exported Conn field holding a driver.Conn, as
// sqlhooks has). A connection it cannot look into is its own owner.
func SessionOwner(dc any) any {
	v := reflect.ValueOf(dc)
	for range MaxUnwrap {
		if pgx := Call0(v, "Conn"); pgx.IsValid() && Call0(pgx, "PgConn").IsValid() {
			return pgx.Interface()
		}
		inner := unwrapped(v)
		if !inner.IsValid() {
			break
		}
		v = inner
	}
	if Usable(v) {
		return v.Interface()
	}
	return dc
}

// unwrapped returns the driver connection that wrapper v exposes, or the
// zero Value.
func unwrapped(v reflect.Value) reflect.Value {
	if !Usable(v) {
		return reflect.Value{}
	}
	if m := v.MethodByName("Raw"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 1 {
		if r := m.Call(nil)[0]; Usable(r) && isDriverConn(r) {
			return r
		}
	}
	s := v
	for s.Kind() == reflect.Pointer || s.Kind() == reflect.Interface {
		s = s.Elem()
	}
	if s.Kind() != reflect.Struct {
		return reflect.Value{}
	}
	if f := s.FieldByName("Conn"); f.IsValid() && f.CanInterface() && Usable(f) && isDriverConn(f) {
		return f
	}
	return reflect.Value{}
}

func isDriverConn(v reflect.Value) bool {
	_, ok := v.Interface().(driver.Conn)
	return ok
}

// IsPgxConn reports whether owner, as SessionOwner found it, is a
// *pgx.Conn, or looks like one (it has a PgConn method): the driver under
// any wrappers is pgx.
func IsPgxConn(owner any) bool {
	return Call0(reflect.ValueOf(owner), "PgConn").IsValid()
}

// CloseSession ends the session of driver connection dc on the client
// side, when its owner is a pgx connection, whose Close(ctx) does that: it
// sends the server a Terminate message and closes the socket, and a pool
// that owns the connection (pgxpool, under stdlib.OpenDBFromPool) then
// destroys it rather than keeping it. Other drivers' connections are left
// to their Close.
func CloseSession(dc any) {
	owner := SessionOwner(dc)
	if !IsPgxConn(owner) {
		return
	}
	if c, ok := owner.(interface{ Close(context.Context) error }); ok {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = c.Close(ctx)
	}
}

// closeTimeout bounds the Terminate message CloseSession sends; the socket
// is closed either way.
const closeTimeout = time.Second

// ConnPointer returns driver connection dc as a pointer to its first byte,
// or nil if dc cannot be told apart from other connections by reference:
// it is not a pointer, or points to a value of size zero (which may share
// its address with other such values).
func ConnPointer(dc any) *byte {
	v := reflect.ValueOf(dc)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Type().Elem().Size() == 0 {
		return nil
	}
	return (*byte)(v.UnsafePointer())
}

package sqllock

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
// sessionOwner finds the object that owns the session under both, so that
// the Locker marks and remembers the session, not the wrapper; and
// closeSession ends that object's session, where closing the wrapper
// would only hand it back to a pool.

// maxUnwrap bounds how many wrappers sessionOwner looks through.
const maxUnwrap = 8

// sessionOwner returns the client-side object that owns driver connection
// dc's server session: the *pgx.Conn under pgx's stdlib.Conn, under any
// wrappers that expose what they wrap (a Raw() driver.Conn method, as
// otelsql has, or an exported Conn field holding a driver.Conn, as
// sqlhooks has). A connection it cannot look into is its own owner.
func sessionOwner(dc any) any {
	v := reflect.ValueOf(dc)
	for range maxUnwrap {
		if pgx := call0(v, "Conn"); pgx.IsValid() && call0(pgx, "PgConn").IsValid() {
			return pgx.Interface()
		}
		inner := unwrapped(v)
		if !inner.IsValid() {
			break
		}
		v = inner
	}
	if usable(v) {
		return v.Interface()
	}
	return dc
}

// unwrapped returns the driver connection that wrapper v exposes, or the
// zero Value.
func unwrapped(v reflect.Value) reflect.Value {
	if !usable(v) {
		return reflect.Value{}
	}
	if m := v.MethodByName("Raw"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 1 {
		if r := m.Call(nil)[0]; usable(r) && isDriverConn(r) {
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
	if f := s.FieldByName("Conn"); f.IsValid() && f.CanInterface() && usable(f) && isDriverConn(f) {
		return f
	}
	return reflect.Value{}
}

func isDriverConn(v reflect.Value) bool {
	_, ok := v.Interface().(driver.Conn)
	return ok
}

// isPgxConn reports whether owner, as sessionOwner found it, is a
// *pgx.Conn, or looks like one (it has a PgConn method): the driver under
// any wrappers is pgx.
func isPgxConn(owner any) bool {
	return call0(reflect.ValueOf(owner), "PgConn").IsValid()
}

// closeSession ends the session of driver connection dc on the client
// side, when its owner is a pgx connection, whose Close(ctx) does that: it
// sends the server a Terminate message and closes the socket, and a pool
// that owns the connection (pgxpool, under stdlib.OpenDBFromPool) then
// destroys it rather than keeping it. Other drivers' connections are left
// to their Close.
func closeSession(dc any) {
	owner := sessionOwner(dc)
	if !isPgxConn(owner) {
		return
	}
	if c, ok := owner.(interface{ Close(context.Context) error }); ok {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = c.Close(ctx)
	}
}

// closeTimeout bounds the Terminate message closeSession sends; the socket
// is closed either way.
const closeTimeout = time.Second

package drv

import (
	"database/sql"
	"reflect"
	"strings"
)

// IsPgx reports whether db's driver is pgx's stdlib, directly or under
// wrappers that keep the driver they wrap in a field (otelsql, sqlhooks,
// sqlmw and the like). pgx prepares and caches statements per connection,
// so one SQL text per operation with the key as parameters is one round
// trip, where a key in the text would be one prepared statement per key;
// and it bounds every call by network deadlines when its context ends.
func IsPgx(db *sql.DB) bool {
	return holdsPgxDriver(reflect.ValueOf(db.Driver()), MaxUnwrap)
}

// holdsPgxDriver reports whether v is, or holds within depth levels of
// pointers, interfaces and struct fields, a value of a type from pgx's
// stdlib package. Unexported fields are read for their types only.
func holdsPgxDriver(v reflect.Value, depth int) bool {
	for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
		if v.IsNil() {
			return false
		}
		if isPgxStdlib(v.Type()) {
			return true
		}
		v = v.Elem()
	}
	if !v.IsValid() {
		return false
	}
	if isPgxStdlib(v.Type()) {
		return true
	}
	if v.Kind() != reflect.Struct || depth == 0 {
		return false
	}
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Interface || f.Kind() == reflect.Pointer || f.Kind() == reflect.Struct {
			if holdsPgxDriver(f, depth-1) {
				return true
			}
		}
	}
	return false
}

func isPgxStdlib(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	p := t.PkgPath()
	return strings.HasPrefix(p, "github.com/jackc/pgx/") && strings.HasSuffix(p, "/stdlib")
}

// SimpleProtocol returns, for a pgx driver connection dc, pgx's
// QueryExecModeSimpleProtocol, which pgx takes as a query's first argument
// (its documented per-query override), or nil for any other driver. A
// statement pgx runs in the extended protocol (its exec and cache modes)
// leaves its unnamed portal, and the portal's snapshot, in the session
// until the next statement: in a transaction held idle, a backend_xmin that
// holds back VACUUM. The simple protocol drops the portal with the
// statement. Found by reflection (sqllock imports only the standard
// library): the type of ConnConfig.DefaultQueryExecMode, and its value
// whose String is "simple protocol".
func SimpleProtocol(dc any) any {
	cfg := reflect.ValueOf(SessionOwner(dc)).MethodByName("Config")
	if !cfg.IsValid() || cfg.Type().NumIn() != 0 || cfg.Type().NumOut() != 1 {
		return nil
	}
	c := cfg.Call(nil)[0]
	for c.Kind() == reflect.Pointer {
		if c.IsNil() {
			return nil
		}
		c = c.Elem()
	}
	if c.Kind() != reflect.Struct {
		return nil
	}
	f := c.FieldByName("DefaultQueryExecMode")
	if !f.IsValid() || !f.CanInt() {
		return nil
	}
	for i := range int64(16) {
		v := reflect.New(f.Type()).Elem()
		v.SetInt(i)
		if s, ok := v.Interface().(interface{ String() string }); ok && strings.ReplaceAll(s.String(), "_", " ") == "simple protocol" {
			return v.Interface()
		}
	}
	return nil
}

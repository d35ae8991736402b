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

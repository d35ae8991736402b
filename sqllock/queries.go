package sqllock

import (
	"database/sql"
	"reflect"
	"strconv"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// queries holds the SQL for one key, built once per Mutex. Keys are
// integers, so writing them into the SQL text is safe; lock names never
// reach SQL.
type queries struct {
	lock, lockShared     string // -> (pid, in_recovery)
	try, tryShared       string // -> (granted, pid, in_recovery)
	unlock, unlockShared string // -> released
	args                 []any  // bind parameters, or nil with literals
	keyList              string // the key as SQL arguments: "42", "1,2" or "$1,$2"
}

// probeSQL is the keep-alive query: it proves the session is alive and
// still the one that took the lock.
const probeSQL = "SELECT pg_backend_pid()"

func buildQueries(k keyspace.Key, placeholders bool) queries {
	var list string
	var args []any
	if n, ok := k.Int64(); ok {
		list = strconv.FormatInt(n, 10)
		if placeholders {
			list, args = "$1", []any{n}
		}
	} else {
		a, b, _ := k.Pair()
		list = strconv.FormatInt(int64(a), 10) + "," + strconv.FormatInt(int64(b), 10)
		if placeholders {
			list, args = "$1,$2", []any{int64(a), int64(b)}
		}
	}
	return queries{
		lock:         "SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock(" + list + ")",
		lockShared:   "SELECT pg_backend_pid(), pg_is_in_recovery() FROM pg_advisory_lock_shared(" + list + ")",
		try:          "SELECT pg_try_advisory_lock(" + list + "), pg_backend_pid(), pg_is_in_recovery()",
		tryShared:    "SELECT pg_try_advisory_lock_shared(" + list + "), pg_backend_pid(), pg_is_in_recovery()",
		unlock:       "SELECT pg_advisory_unlock(" + list + ")",
		unlockShared: "SELECT pg_advisory_unlock_shared(" + list + ")",
		args:         args,
		keyList:      list,
	}
}

// driverCachesStatements reports whether db's driver is pgx's stdlib, which
// prepares and caches statements per connection: with it, one SQL text per
// operation and the key as parameters is one round trip.
func driverCachesStatements(db *sql.DB) bool {
	t := reflect.TypeOf(db.Driver())
	if t == nil {
		return false
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return strings.HasPrefix(t.PkgPath(), "github.com/jackc/pgx/") && strings.HasSuffix(t.PkgPath(), "/stdlib")
}

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
	lock, lockShared     string // -> (pid, in_recovery, prior marker, ignored)
	try, tryShared       string // -> (granted, pid, in_recovery, prior marker, ignored)
	unlock, unlockShared string // -> released (and marker cleared)
	args                 []any  // bind parameters, or nil with literals
	keyList              string // the key as SQL arguments: "42", "1,2" or "$1,$2"
}

// probeSQL is the keep-alive query: it proves the session is alive and
// still the one that took the lock.
const probeSQL = "SELECT pg_backend_pid()"

// markerGUC is the custom setting that marks a session holding a sqllock
// lock. sqllock takes at most one lock per session, so a session that shows
// the marker when a new lock is taken is shared with another client.
const markerGUC = "sqllock.held"

func buildQueries(k keyspace.Key, placeholders, allowStandby bool) queries {
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
	// Each lock statement also returns the backend pid (for the
	// keep-alive), pg_is_in_recovery() (to refuse standbys) and the
	// session's marker: sqllock marks a session that holds one of its locks
	// (a custom setting, cleared by unlock). A marker already present means
	// the session is shared with another client (a transaction pooler); the
	// statement then undoes its own lock before answering. So it does on a
	// standby, unless standbys are allowed: their locks exclude nobody.
	refuse := "s.prior <> ''"
	if !allowStandby {
		refuse += " OR s.rec"
	}
	undo := func(unlockFn string) string {
		return "CASE WHEN " + refuse + " THEN " + unlockFn + "(" + list + ") ELSE set_config('" + markerGUC + "', '" + k.String() + "', false) <> '' END"
	}
	lock := func(lockFn, unlockFn string) string {
		return "SELECT s.pid, s.rec, s.prior, " + undo(unlockFn) +
			" FROM (SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('" + markerGUC + "', true), '') AS prior" +
			" FROM " + lockFn + "(" + list + ") OFFSET 0) s"
	}
	try := func(tryFn, unlockFn string) string {
		return "SELECT s.g, s.pid, s.rec, s.prior, CASE WHEN s.g THEN " + undo(unlockFn) + " END" +
			" FROM (SELECT " + tryFn + "(" + list + ") AS g, pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('" + markerGUC + "', true), '') AS prior OFFSET 0) s"
	}
	unlock := func(unlockFn string) string {
		return "SELECT " + unlockFn + "(" + list + ") AND set_config('" + markerGUC + "', '', false) = ''"
	}
	return queries{
		lock:         lock("pg_advisory_lock", "pg_advisory_unlock"),
		lockShared:   lock("pg_advisory_lock_shared", "pg_advisory_unlock_shared"),
		try:          try("pg_try_advisory_lock", "pg_advisory_unlock"),
		tryShared:    try("pg_try_advisory_lock_shared", "pg_advisory_unlock_shared"),
		unlock:       unlock("pg_advisory_unlock"),
		unlockShared: unlock("pg_advisory_unlock_shared"),
		args:         args,
		keyList:      list,
	}
}

// isPgx reports whether db's driver is pgx's stdlib. It prepares and caches
// statements per connection, so one SQL text per operation with the key as
// parameters is one round trip; and it bounds every call by network
// deadlines when its context ends.
func isPgx(db *sql.DB) bool {
	t := reflect.TypeOf(db.Driver())
	if t == nil {
		return false
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return strings.HasPrefix(t.PkgPath(), "github.com/jackc/pgx/") && strings.HasSuffix(t.PkgPath(), "/stdlib")
}

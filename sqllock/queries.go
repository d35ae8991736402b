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
	lock, lockShared     string // -> one integer: pid*32 + flags (see buildQueries)
	try, tryShared       string // -> the same
	unlock, unlockShared string // -> one row if released (and marker cleared), else none
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
	// Each lock statement answers with one integer (one column keeps the
	// drivers' per-column work off the hot path): the backend pid, for the
	// keep-alive, times 32, plus these flags:
	//
	//	1  granted
	//	2  refused, nothing taken: the server is a standby in recovery,
	//	   whose locks exclude nobody (unless standbys are allowed)
	//	4  refused, nothing taken: the session already carries sqllock's
	//	   marker (see markerGUC), so it is shared with another client, as
	//	   behind a transaction pooler, where a lock would be granted
	//	   re-entrantly to a second owner
	//	16 setting the marker failed (should not happen)
	//
	// The refusals come before the lock, so nothing is ever undone; a
	// granted lock sets the marker. CASE evaluates its branches in order,
	// and only the branch taken. The text is kept short: lib/pq's server
	// parses and plans it on every call, and each function or operator
	// named costs a catalog lookup (measured: the first, longer form took
	// half the server's throughput under lib/pq, 15% under pgx).
	refuse := "WHEN current_setting('" + markerGUC + "', true) <> '' THEN 4 "
	if !allowStandby {
		refuse += "WHEN pg_is_in_recovery() THEN 2 "
	}
	marker := k.String()
	mark := "CASE WHEN set_config('" + markerGUC + "', '" + marker + "', false) = '" + marker + "' THEN 1 ELSE 17 END"
	lock := func(lockFn string) string {
		return "SELECT pg_backend_pid()::int8*32 + CASE " + refuse + "WHEN " + lockFn + "(" + list + ") IS NOT NULL THEN " + mark + " END"
	}
	try := func(tryFn string) string {
		return "SELECT pg_backend_pid()::int8*32 + CASE " + refuse + "WHEN " + tryFn + "(" + list + ") THEN " + mark + " ELSE 0 END"
	}
	// The unlock answers with its row count, which Exec reports without
	// reading rows: one row if the lock was released and the marker
	// cleared, none otherwise.
	unlock := func(unlockFn string) string {
		return "SELECT 1 WHERE " + unlockFn + "(" + list + ") AND set_config('" + markerGUC + "', '', false) = ''"
	}
	return queries{
		lock:         lock("pg_advisory_lock"),
		lockShared:   lock("pg_advisory_lock_shared"),
		try:          try("pg_try_advisory_lock"),
		tryShared:    try("pg_try_advisory_lock_shared"),
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

// Flags of the lock statements' answer (see buildQueries).
const (
	flagGranted     = 1
	flagStandby     = 2
	flagShared      = 4
	lockAnswerShift = 5
)

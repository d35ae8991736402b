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
	lock, lockShared     string // -> one bigint: pid<<5 | flags (see buildQueries)
	try, tryShared       string // -> the same
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
	// Each lock statement answers with one bigint (one column keeps the
	// drivers' per-column work off the hot path): the backend pid, for the
	// keep-alive, shifted left by 5 over these bits:
	//
	//	1  granted
	//	2  pg_is_in_recovery(): a standby, whose locks exclude nobody
	//	4  the session already carried sqllock's marker (see markerGUC): it
	//	   is shared with another client, as behind a transaction pooler
	//	8  the undo below found nothing to unlock (should not happen)
	//	16 setting the marker failed (should not happen)
	//
	// A granted lock on a refused session (bit 4, or bit 2 unless standbys
	// are allowed) is undone by the same statement; otherwise the statement
	// sets the marker. The CASE forms keep the planner from folding the
	// volatile calls away.
	refuse := "s.prior <> ''"
	if !allowStandby {
		refuse += " OR s.rec"
	}
	marker := k.String()
	undoOrMark := func(unlockFn string) string {
		return "(CASE WHEN " + refuse + " THEN (CASE WHEN " + unlockFn + "(" + list + ") THEN 0 ELSE 8 END)" +
			" ELSE (CASE WHEN set_config('" + markerGUC + "', '" + marker + "', false) = '" + marker + "' THEN 0 ELSE 16 END) END)"
	}
	const flags = "(s.pid::int8 << 5) | (CASE WHEN s.rec THEN 2 ELSE 0 END) | (CASE WHEN s.prior <> '' THEN 4 ELSE 0 END)"
	const session = "pg_backend_pid() AS pid, pg_is_in_recovery() AS rec, COALESCE(current_setting('" + markerGUC + "', true), '') AS prior"
	lock := func(lockFn, unlockFn string) string {
		return "SELECT " + flags + " | 1 | " + undoOrMark(unlockFn) +
			" FROM (SELECT " + session + " FROM " + lockFn + "(" + list + ") OFFSET 0) s"
	}
	try := func(tryFn, unlockFn string) string {
		return "SELECT " + flags + " | (CASE WHEN s.g THEN 1 | " + undoOrMark(unlockFn) + " ELSE 0 END)" +
			" FROM (SELECT " + tryFn + "(" + list + ") AS g, " + session + " OFFSET 0) s"
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

// Flags of the lock statements' answer (see buildQueries).
const (
	flagGranted     = 1
	flagStandby     = 2
	flagShared      = 4
	lockAnswerShift = 5
)

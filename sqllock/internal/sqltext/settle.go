package sqltext

import (
	"strconv"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// The statements that settle a session are written with their numbers in
// the text, not as parameters: behind a transaction pooler, a driver that
// sends a statement's parse and its execution in two round trips (lib/pq)
// may see them reach two server sessions.

// Look reports how backend pid stands towards advisory lock k, or towards
// any advisory lock for the zero Key (a session that carries many): no row
// once it has exited; else its state in pg_stat_activity ("active" while
// it runs a statement, NULL where the role may not see it), whether it
// holds or waits for the lock, and whether it is the session the statement
// runs in (behind a transaction pooler it can be: then it must be looked
// for again from another).
//
// With tx, the backend is looked for only while it runs the transaction
// that began at tx (see XactStart): behind a transaction pooler the
// backend serves other clients once that transaction ends, and whatever
// it holds then is theirs.
func Look(pid, tx int64, k keyspace.Key) string {
	return `SELECT a.state, EXISTS (SELECT 1 FROM pg_locks l
	WHERE l.locktype = 'advisory' AND l.pid = a.pid AND ` + tagMatch(k) + `), a.pid = pg_backend_pid()
FROM pg_stat_activity a WHERE a.pid = ` + strconv.FormatInt(pid, 10) + txMatch("a", tx)
}

// XactStart is the SQL of the current transaction's start, in
// microseconds since the epoch: with the backend pid, it names one
// transaction of one server session (see Look). date_part computes in
// float8, which holds today's microseconds exactly and costs the server
// less than extract's numeric; Look computes the same from xact_start.
const XactStart = "(date_part('epoch', now()) * 1000000)::int8"

// txMatch is the condition that pg_stat_activity row a runs the
// transaction that began at tx, or none for tx 0.
func txMatch(a string, tx int64) string {
	if tx == 0 {
		return ""
	}
	return " AND (date_part('epoch', " + a + ".xact_start) * 1000000)::int8 = " + strconv.FormatInt(tx, 10)
}

// Terminate terminates backend pid if it holds or waits for advisory lock
// k (any, for the zero Key), and waits up to waitMS milliseconds for it to
// exit; without waitMS (0: PostgreSQL 13 and older, whose
// pg_terminate_backend does not wait) it returns at once. It answers one
// row per lock entry found: true once the backend has exited. A session
// never terminates itself.
// With tx, only while the backend runs the transaction that began at tx
// (see Look).
func Terminate(pid, tx int64, k keyspace.Key, waitMS int64) string {
	call := "pg_terminate_backend(pid)"
	if waitMS > 0 {
		call = "pg_terminate_backend(pid, " + strconv.FormatInt(waitMS, 10) + ")"
	}
	q := "SELECT " + call + " FROM pg_locks WHERE locktype = 'advisory' AND pid = " + strconv.FormatInt(pid, 10) +
		" AND " + tagMatch(k) + " AND pid <> pg_backend_pid()"
	if tx != 0 {
		q += " AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = pg_locks.pid" + txMatch("a", tx) + ")"
	}
	return q
}

// TerminateTx terminates backend pid while it runs the transaction that
// began at tx (see Look), whatever that transaction holds: a transaction
// whose lock sqllock settles is its own.
func TerminateTx(pid, tx int64) string {
	return "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.pid = " + strconv.FormatInt(pid, 10) +
		txMatch("a", tx) + " AND a.pid <> pg_backend_pid()"
}

// tagMatch matches pg_locks rows of advisory lock k, or of any for the
// zero Key.
func tagMatch(k keyspace.Key) string {
	if !k.Valid() {
		return "true"
	}
	c, o, s := k.LockTag()
	return "classid::int8 = " + strconv.FormatInt(int64(c), 10) + " AND objid::int8 = " + strconv.FormatInt(int64(o), 10) +
		" AND objsubid::int8 = " + strconv.FormatInt(int64(s), 10)
}

// Literal returns query with its parameters $1, $2, ... written in as the
// integers args: one statement with nothing to bind, which a driver sends
// in one round trip (lib/pq sends a query with parameters in two, which a
// transaction pooler may send to two server sessions).
func Literal(query string, args ...int64) string {
	for i := len(args); i >= 1; i-- {
		query = strings.ReplaceAll(query, "$"+strconv.Itoa(i), strconv.FormatInt(args[i-1], 10))
	}
	return query
}

package sqllock

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// queries holds the SQL for one key, built once per Mutex. Keys are
// integers, so writing them into the SQL text is safe; lock names never
// reach SQL.
type queries struct {
	lock, lockShared     *lockStmt // -> one integer: pid*32 + flags (see buildQueries)
	try, tryShared       *lockStmt // -> the same
	unlock, unlockShared string    // -> one row if released, else none
	args                 []any     // the key as bind parameters, or nil with literals
	keyList              string    // the key as SQL arguments: "42", "1,2" or "$1,$2"
}

// A lockStmt is a lock statement that carries the owner token of the
// connection it runs on (see ownerGUC): as one more bind parameter, or
// written into the text between parts.
type lockStmt struct {
	text  string   // with placeholders
	parts []string // with literals: the text, split where the token goes

	// The statement as last made for a driver connection: the pool hands
	// a Mutex the same connection again and again, so it is made once.
	last atomic.Pointer[ownedStmt]
}

// An ownedStmt is a lockStmt made for one driver connection. Its args are
// shared by concurrent calls, which only read them.
type ownedStmt struct {
	conn uintptr // the driver connection's address (see driverConn)
	text string
	args []any
}

// forConn returns the statement and its arguments for the driver
// connection at addr, given the key's arguments.
func (s *lockStmt) forConn(keyArgs []any, addr uintptr) (string, []any) {
	if o := s.last.Load(); o != nil && o.conn == addr {
		return o.text, o.args
	}
	token := ownerToken(addr)
	o := &ownedStmt{conn: addr, text: s.text}
	if s.parts == nil {
		o.args = append(keyArgs[:len(keyArgs):len(keyArgs)], token)
	} else {
		o.text = strings.Join(s.parts, token)
	}
	s.last.Store(o)
	return o.text, o.args
}

// probeSQL is the keep-alive query: it proves the session is alive and
// still the one that took the lock.
const probeSQL = "SELECT pg_backend_pid()"

// ownerGUC is the custom setting that marks a server session with the
// owner token of the client connection that first took a sqllock lock on
// it. Without a pooler, a session has one client connection for its whole
// life and always shows that connection's token. A session that shows
// another connection's token is shared between clients, as behind a
// transaction-mode pooler, where a second client's lock would be granted
// re-entrantly: the lock statement refuses it. The mark is set once per
// session, not per lock, so the hot path reads a setting but never writes
// one (writing it on every lock and unlock cost ~10% of the server's lock
// throughput).
const ownerGUC = "sqllock.owner"

// tokenMark stands where a statement's text takes the owner token.
const tokenMark = "\x00"

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
	//	2  refused: the server is a standby in recovery, whose locks
	//	   exclude nobody (unless standbys are allowed)
	//	4  refused: the session carries another client connection's owner
	//	   token (see ownerGUC)
	//
	// A session without a token (new, or reset by DISCARD ALL) gets this
	// connection's. CASE evaluates its branches in order, and only the
	// branch taken.
	//
	// Lock refuses before it takes anything, since it might wait. So does
	// try with literals (lib/pq), whose server parses and plans the whole
	// text on every call: there the text must be short, and each function
	// or operator named costs a catalog lookup (measured: an earlier,
	// longer form took half the server's throughput under lib/pq).
	//
	// Try with placeholders (pgx), whose statement the server plans once,
	// tries first, so that a try that finds the lock taken, the common case
	// of "whoever gets it does the job", costs the server no more than a
	// bare pg_try_advisory_lock. A refused grant is undone in the same
	// statement (re-entrant grants are counted, so the undo leaves another
	// client's hold on a shared session as it was); an undo that finds
	// nothing answers NULL, which fails the call and discards the
	// connection.
	//
	// With placeholders, the pid is computed only in the branches that
	// need it (a grant, a foreign session), so that a failing try answers
	// the constant 0, and a standby refusal 2: measured 3% faster per
	// failing try with pgx than computing the pid for every answer. With
	// literals the shorter text matters more (above).
	withPid := func(flag string) string { return "pg_backend_pid()::int8*32 + " + flag }
	token := "'" + tokenMark + "'"
	if placeholders {
		token = "$" + strconv.Itoa(len(args)+1) + "::text"
	}
	foreign := "coalesce(nullif(current_setting('" + ownerGUC + "', true), ''), set_config('" + ownerGUC + "', " + token + ", false)) <> " + token
	stmt := func(text string) *lockStmt {
		if placeholders {
			return &lockStmt{text: text}
		}
		return &lockStmt{parts: strings.Split(text, tokenMark)}
	}
	lock := func(lockFn string) *lockStmt {
		refuse := ""
		if !allowStandby {
			refuse = "WHEN pg_is_in_recovery() THEN 2 "
		}
		if placeholders {
			return stmt("SELECT CASE " + refuse + "WHEN " + foreign + " THEN " + withPid("4") + " WHEN " + lockFn + "(" + list + ") IS NOT NULL THEN " + withPid("1") + " END")
		}
		return stmt("SELECT pg_backend_pid()::int8*32 + CASE " + refuse + "WHEN " + foreign + " THEN 4 WHEN " + lockFn + "(" + list + ") IS NOT NULL THEN 1 END")
	}
	try := func(tryFn, unlockFn string) *lockStmt {
		if !placeholders {
			refuse := ""
			if !allowStandby {
				refuse = "WHEN pg_is_in_recovery() THEN 2 "
			}
			return stmt("SELECT pg_backend_pid()::int8*32 + CASE " + refuse + "WHEN " + foreign + " THEN 4 WHEN " + tryFn + "(" + list + ") THEN 1 ELSE 0 END")
		}
		undo := func(answer string) string { return "CASE WHEN " + unlockFn + "(" + list + ") THEN " + answer + " END" }
		refuse := ""
		if !allowStandby {
			refuse = "WHEN pg_is_in_recovery() THEN " + undo("2") + " "
		}
		return stmt("SELECT CASE WHEN NOT " + tryFn + "(" + list + ") THEN 0 " + refuse + "WHEN " + foreign + " THEN " + undo(withPid("4")) + " ELSE " + withPid("1") + " END")
	}
	// The unlock answers with its row count, which Exec reports without
	// reading rows: one row if the lock was released, none otherwise.
	unlock := func(unlockFn string) string {
		return "SELECT 1 WHERE " + unlockFn + "(" + list + ")"
	}
	return queries{
		lock:         lock("pg_advisory_lock"),
		lockShared:   lock("pg_advisory_lock_shared"),
		try:          try("pg_try_advisory_lock", "pg_advisory_unlock"),
		tryShared:    try("pg_try_advisory_lock_shared", "pg_advisory_unlock_shared"),
		unlock:       unlock("pg_advisory_unlock"),
		unlockShared: unlock("pg_advisory_unlock_shared"),
		args:         args,
		keyList:      list,
	}
}

// processToken tells this process's connections from other processes':
// random, made once per process. Immutable.
var processToken = sync.OnceValue(func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:]) + "-"
})

// driverConn returns conn's driver connection and its address, which no
// other live connection of this process shares; the address is 0 for a
// driver connection that is not a pointer (no known driver), which then
// shares its owner token with every other such connection of the process.
func driverConn(conn *sql.Conn) (addr uintptr, dc any) {
	_ = conn.Raw(func(c any) error {
		dc = c
		return nil
	})
	if v := reflect.ValueOf(dc); v.Kind() == reflect.Pointer {
		addr = v.Pointer()
	}
	return addr, dc
}

// ownerToken returns the owner token of the driver connection at addr:
// the process token and the address.
func ownerToken(addr uintptr) string {
	return processToken() + strconv.FormatUint(uint64(addr), 36)
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

package sqllock

import (
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// queries holds the SQL for one key, built once per Mutex. Keys are
// integers, so writing them into the SQL text is safe; lock names never
// reach SQL.
type queries struct {
	lock, lockShared     *lockStmt // see lockStmt
	try, tryShared       *lockStmt
	trySharedBehind      *lockStmt           // tryShared that yields to a queued waiter (see waiterQueued)
	unlock, unlockShared string              // -> one row if released, else none
	args                 []any               // the key as bind parameters, or nil with literals
	named                []driver.NamedValue // args, as the driver takes them
	keyList              string              // the key as SQL arguments: "42", "1,2" or "$1,$2"
}

// A lockStmt is one lock operation in its guarded form (see buildQueries),
// split where the verified session's backend pid goes.
type lockStmt struct {
	guarded []string
	kind    lockKind
	fenced  bool // answers a fencing token (see queries.fence)

	// The guarded form as last made for a driver connection: the pool
	// hands a Mutex the same connection again and again, so it is made
	// once.
	last atomic.Pointer[guardedStmt]
}

// lockKind names a lockStmt's operation, so that the same operation can
// be found in another form of a key's queries.
type lockKind uint8

const (
	kindLock lockKind = iota
	kindLockShared
	kindTry
	kindTryShared
	kindTrySharedBehind
)

// stmt returns q's lock statement of the given kind.
func (q *queries) stmt(kind lockKind) *lockStmt {
	switch kind {
	case kindLockShared:
		return q.lockShared
	case kindTry:
		return q.try
	case kindTryShared:
		return q.tryShared
	case kindTrySharedBehind:
		return q.trySharedBehind
	}
	return q.lock
}

// A guardedStmt is a lockStmt's guarded form made for one driver
// connection, whose session has backend pid pid.
type guardedStmt struct {
	conn weak.Pointer[byte] // the driver connection (see connPointer); zero when it has none
	pid  int64
	text string
}

// guardedFor returns the guarded form for the driver connection at p,
// whose reference is ref, and its session's backend pid. A connection
// without a reference (p nil) gets a form made for this call alone.
func (s *lockStmt) guardedFor(p *byte, ref weak.Pointer[byte], pid int64) *guardedStmt {
	if p == nil {
		return &guardedStmt{pid: pid, text: strings.Join(s.guarded, strconv.FormatInt(pid, 10))}
	}
	if g := s.last.Load(); g != nil && g.pid == pid && g.conn.Value() == p {
		return g
	}
	g := &guardedStmt{conn: ref, pid: pid, text: strings.Join(s.guarded, strconv.FormatInt(pid, 10))}
	s.last.Store(g)
	return g
}

// A verifyStmt checks a server session before the first lock a Locker
// takes on it (see buildVerify). It carries the owner token of the
// session's client connection: as a bind parameter, or written into the
// text between parts.
type verifyStmt struct {
	text  string
	parts []string
}

// statement returns the verify statement and its arguments for the
// session owned by the client connection at addr (see sessionOwner).
func (s *verifyStmt) statement(addr uintptr) (string, []driver.NamedValue) {
	token := ownerToken(addr)
	if s.parts == nil {
		return s.text, []driver.NamedValue{{Ordinal: 1, Value: token}}
	}
	return strings.Join(s.parts, token), nil
}

// buildVerify builds the statement that verifies a server session before
// the first lock on it. It answers with one integer (one column keeps the
// drivers' per-column work off the path): the backend pid, for the
// keep-alive, the guarded lock statements and the settling of an
// abandoned session, times 32, plus these flags:
//
//	2  refused: the server is a standby in recovery, whose locks
//	   exclude nobody (unless standbys are allowed)
//	4  refused: the session carries another client connection's owner
//	   token (see ownerGUC)
//
// A session without a token (new, or reset by DISCARD ALL) gets this
// connection's. CASE evaluates its branches in order, and only the branch
// taken, so a standby is not marked. It takes no lock: a lock is taken
// only on a session whose pid is known, so that a session abandoned in an
// unknown state can always be found on the server (see Locker.endSession).
func buildVerify(placeholders, allowStandby bool) *verifyStmt {
	token := "'" + tokenMark + "'"
	if placeholders {
		token = "$1::text"
	}
	foreign := "coalesce(nullif(current_setting('" + ownerGUC + "', true), ''), set_config('" + ownerGUC + "', " + token + ", false)) <> " + token
	refuse := ""
	if !allowStandby {
		refuse = "WHEN pg_is_in_recovery() THEN 2 "
	}
	text := "SELECT pg_backend_pid()::int8*32 + CASE " + refuse + "WHEN " + foreign + " THEN 4 ELSE 0 END"
	if placeholders {
		return &verifyStmt{text: text}
	}
	return &verifyStmt{parts: strings.Split(text, tokenMark)}
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

// tokenMark stands where a statement's text takes the owner token, or the
// backend pid.
const tokenMark = "\x00"

// sessionGuard ends every lock statement: it runs only on the session
// verified, whose backend pid goes where tokenMark stands (see
// buildQueries).
const sessionGuard = " WHERE pg_backend_pid() = " + tokenMark

func buildQueries(k keyspace.Key, placeholders bool) queries {
	var list, queued string
	var args []any
	if n, ok := k.Int64(); ok {
		list = strconv.FormatInt(n, 10)
		if placeholders {
			list, args = "$1", []any{n}
		}
		queued = waiterQueued(list+"::int8 >> 32", list+"::int8", 1)
	} else {
		a, b, _ := k.Pair()
		x, y := strconv.FormatInt(int64(a), 10), strconv.FormatInt(int64(b), 10)
		if placeholders {
			x, y, args = "$1", "$2", []any{int64(a), int64(b)}
		}
		list = x + "," + y
		queued = waiterQueued(x+"::int4", y+"::int4", 2)
	}
	// A lock runs on a session that the Locker verified (see
	// buildVerify), in the guarded form: it takes the lock only if the
	// session is still the one verified, by backend pid, and answers true
	// (granted), false (a try that found the lock taken) or no row
	// (another session: nothing taken; see Mutex.lockOn). The pid test is
	// a one-time filter, which the server evaluates before the select
	// list, so it runs first. A session cannot become a standby, and it
	// keeps this connection's token (another client can take it only
	// after something resets the session's settings: DISCARD ALL, which
	// also drops the session's locks, or RESET ALL, sent through a
	// transaction pooler, under which session locks do not hold anyway);
	// so the guarded form refuses what the verify statement would. It
	// costs the server little more than a bare pg_advisory_lock, where the
	// verify statement's expressions cost it several microseconds (up to
	// 20% more time per Lock+Unlock with pgx on this project's benchmark
	// machine), which is why they run once per session.
	guard := sessionGuard
	lock := func(lockFn string, kind lockKind) *lockStmt {
		return &lockStmt{guarded: strings.Split("SELECT "+lockFn+"("+list+") IS NOT NULL"+guard, tokenMark), kind: kind}
	}
	try := func(tryFn string, kind lockKind) *lockStmt {
		return &lockStmt{guarded: strings.Split("SELECT "+tryFn+"("+list+")"+guard, tokenMark), kind: kind}
	}
	// The unlock answers with its row count, which Exec reports without
	// reading rows: one row if the lock was released, none otherwise.
	unlock := func(unlockFn string) string {
		return "SELECT 1 WHERE " + unlockFn + "(" + list + ")"
	}
	return queries{
		lock:       lock("pg_advisory_lock", kindLock),
		lockShared: lock("pg_advisory_lock_shared", kindLockShared),
		try:        try("pg_try_advisory_lock", kindTry),
		tryShared:  try("pg_try_advisory_lock_shared", kindTryShared),
		trySharedBehind: &lockStmt{kind: kindTrySharedBehind, guarded: strings.Split(
			"SELECT CASE WHEN "+queued+" THEN false ELSE pg_try_advisory_lock_shared("+list+") END"+guard, tokenMark)},
		unlock:       unlock("pg_advisory_unlock"),
		unlockShared: unlock("pg_advisory_unlock_shared"),
		args:         args,
		named:        named(args),
		keyList:      list,
	}
}

// waiterQueued is the SQL condition that some session of this database
// waits, not granted, for the advisory lock whose pg_locks tag is
// (classid, objid, objsubid), given as int8 expressions of the key.
//
// PostgreSQL grants a session a lock it already holds without looking at
// the queue, so a shared session that carries a key shared would let this
// process's new shared holders overtake a waiter that another process has
// queued, for as long as they keep coming. A new shared holder on such a
// session asks this first, and yields as a holder in another process would.
func waiterQueued(classid, objid string, objsubid int) string {
	return "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted" +
		" AND database = (SELECT oid FROM pg_database WHERE datname = current_database())" +
		" AND classid::int8 = (" + classid + ")::int8 & 4294967295 AND objid::int8 = (" + objid + ")::int8 & 4294967295" +
		" AND objsubid = " + strconv.Itoa(objsubid) + ")"
}

// processToken tells this process's connections from other processes':
// random, made once per process. Immutable.
var processToken = sync.OnceValue(func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:]) + "-"
})

// connAddr returns the address of driver connection dc, which no other
// live connection of this process shares; it is 0 for a driver connection
// that is not a pointer (no known driver), which then shares its owner
// token with every other such connection of the process.
func connAddr(dc any) uintptr {
	if v := reflect.ValueOf(dc); v.Kind() == reflect.Pointer {
		return v.Pointer()
	}
	return 0
}

// ownerToken returns the owner token of the driver connection at addr:
// the process token and the address.
func ownerToken(addr uintptr) string {
	return processToken() + strconv.FormatUint(uint64(addr), 36)
}

// isPgx reports whether db's driver is pgx's stdlib, directly or under
// wrappers that keep the driver they wrap in a field (otelsql, sqlhooks,
// sqlmw and the like). pgx prepares and caches statements per connection,
// so one SQL text per operation with the key as parameters is one round
// trip, where a key in the text would be one prepared statement per key;
// and it bounds every call by network deadlines when its context ends.
func isPgx(db *sql.DB) bool {
	return holdsPgxDriver(reflect.ValueOf(db.Driver()), maxUnwrap)
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

// Flags of the verify statement's answer (see buildVerify); flagGranted
// marks a granted lock in an outcome.
const (
	flagGranted     = 1
	flagStandby     = 2
	flagShared      = 4
	lockAnswerShift = 5
)

// Package sqltext builds the SQL of sqllock's locks: per key, the guarded
// lock statements, the unlocks and the fenced forms; per session, the
// verify statement and its owner token; and the statements that settle an
// abandoned session. It runs nothing.
package sqltext

import (
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"weak"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
)

// Queries holds the SQL for one key, or with the key as parameters for
// every key of a kind. Keys are integers, so writing them into the SQL
// text is safe; lock names never reach SQL.
type Queries struct {
	Lock, LockShared             *LockStmt // see LockStmt
	Try, TryShared               *LockStmt
	TrySharedBehind              *LockStmt           // tryShared that yields to a queued waiter (see waiterQueued)
	Unlock, UnlockShared         *LockStmt           // -> one row if released, else none; gives a lease's setting back
	UnlockKeep, UnlockSharedKeep *LockStmt           // the same, keeping the lease, for a session that carries other locks
	Args                         []any               // the key as bind parameters, or nil with literals
	Named                        []driver.NamedValue // args, as the driver takes them
	KeyList                      string              // the key as SQL arguments: "42", "1,2" or "$1,$2"

	queued string        // the SQL condition that a waiter is queued for the key (see waiterQueued)
	fenced bool          // see Fence
	lease  time.Duration // see Lease
}

// A LockStmt is one lock operation in its guarded form (see Build),
// split where the verified session's backend pid goes.
type LockStmt struct {
	Parts      []string
	Kind       Kind
	Fenced     bool // answers a fencing token (see Queries.Fence)
	AfterGrant bool // does work after the grant that can fail (a token, a lease): an error may leave the lock granted
}

// A Cache keeps the guarded form of one kind of lock statement as last
// made for a driver connection: the pool hands a Mutex the same connection
// again and again, so it is made once. A session.Target keeps one per
// kind; the statements themselves are shared by every key of a kind.
type Cache struct{ last atomic.Pointer[Guarded] }

// Forget drops the guarded form made last: its session is gone.
func (c *Cache) Forget() { c.last.Store(nil) }

// Cached returns s's guarded form as c last made it for the driver
// connection at p, or nil.
func (s *LockStmt) Cached(c *Cache, p *byte) *Guarded {
	if g := c.last.Load(); g != nil && g.stmt == s && g.Conn.Value() == p {
		return g
	}
	return nil
}

// Kind names a LockStmt's operation, so that the same operation can
// be found in another form of a key's queries.
type Kind uint8

const (
	KindLock Kind = iota
	KindLockShared
	KindTry
	KindTryShared
	KindTrySharedBehind
	KindUnlock
	KindUnlockShared
	KindUnlockKeep
	KindUnlockSharedKeep
)

// Stmt returns q's lock statement of the given kind.
func (q *Queries) Stmt(kind Kind) *LockStmt {
	switch kind {
	case KindLockShared:
		return q.LockShared
	case KindTry:
		return q.Try
	case KindTryShared:
		return q.TryShared
	case KindTrySharedBehind:
		return q.TrySharedBehind
	case KindUnlock:
		return q.Unlock
	case KindUnlockShared:
		return q.UnlockShared
	case KindUnlockKeep:
		return q.UnlockKeep
	case KindUnlockSharedKeep:
		return q.UnlockSharedKeep
	}
	return q.Lock
}

// A Guarded is a LockStmt's guarded form made for one driver
// connection, whose session has backend pid pid.
type Guarded struct {
	Conn weak.Pointer[byte] // the driver connection (see drv.ConnPointer); zero when it has none
	PID  int64
	Text string
	stmt *LockStmt // made from it
}

// GuardedFor returns the guarded form for the driver connection at p,
// whose reference is ref, and its session's backend pid, keeping it in c.
// A connection without a reference (p nil) gets a form made for this call
// alone.
func (s *LockStmt) GuardedFor(c *Cache, p *byte, ref weak.Pointer[byte], pid int64) *Guarded {
	if p == nil {
		return &Guarded{PID: pid, Text: strings.Join(s.Parts, strconv.FormatInt(pid, 10)), stmt: s}
	}
	if g := c.last.Load(); g != nil && g.stmt == s && g.PID == pid && g.Conn.Value() == p {
		return g
	}
	g := &Guarded{Conn: ref, PID: pid, Text: strings.Join(s.Parts, strconv.FormatInt(pid, 10)), stmt: s}
	c.last.Store(g)
	return g
}

// TokenMark stands where a statement's text takes the owner token, or the
// backend pid.
const TokenMark = "\x00"

// SessionGuard ends every lock statement: it runs only on the session
// verified, whose backend pid goes where TokenMark stands (see
// Build).
const SessionGuard = " WHERE pg_backend_pid() = " + TokenMark

// Build returns the statements of key k: with placeholders, the key as
// parameters $1 (int64) or $1, $2 (pair), whose texts are the same for
// every key of a kind; else the key written into the text.
func Build(k keyspace.Key, placeholders bool) Queries {
	var list, queued string
	var args []any
	if n, ok := k.Int64(); ok {
		list = strconv.FormatInt(n, 10)
		if placeholders {
			list, args = "$1", []any{n}
		}
		// In parentheses: :: binds tighter than unary minus, and
		// -9223372036854775808::int8 is out of range.
		queued = waiterQueued("("+list+")::int8 >> 32", "("+list+")::int8", 1)
	} else {
		a, b, _ := k.Pair()
		x, y := strconv.FormatInt(int64(a), 10), strconv.FormatInt(int64(b), 10)
		if placeholders {
			x, y, args = "$1", "$2", []any{int64(a), int64(b)}
		}
		list = x + "," + y
		queued = waiterQueued("("+x+")::int4", "("+y+")::int4", 2)
	}
	q := Queries{Args: args, Named: drv.Named(args), KeyList: list, queued: queued}
	q.assemble()
	return q
}

// assemble writes q's lock and unlock statements for its key list, its
// fencing and its lease.
//
// A lock runs on a verified session (see BuildVerify) in the guarded form:
// it takes the lock only if the session is still the one verified, by
// backend pid, and answers true (granted), false (a try that found the
// lock taken) or no row (another session: nothing taken). The pid test is
// a one-time filter, evaluated before the select list. A session cannot
// become a standby and keeps its owner token (only a reset of its
// settings, DISCARD ALL or RESET ALL, lets another client take it), so the
// guarded form refuses what the verify statement would, at the cost of a
// bare pg_advisory_lock.
func (q *Queries) assemble() {
	list, on := q.KeyList, "true"
	if q.lease > 0 {
		on = LeaseOn(q.lease)
	}
	// granted is the answer of a grant: true, or a fencing token; both
	// after the lease is set, if any, which CASE orders.
	granted := func(fenced bool) string {
		switch {
		case fenced && q.lease > 0:
			return "CASE WHEN " + on + " THEN " + FencedToken + " END"
		case fenced:
			return FencedToken
		}
		return on
	}
	stmt := func(kind Kind, fenced bool, text string) *LockStmt {
		return &LockStmt{Kind: kind, Fenced: fenced, AfterGrant: fenced || q.lease > 0, Parts: strings.Split("SELECT "+text+SessionGuard, TokenMark)}
	}
	lock := func(fn string, kind Kind, fenced bool) *LockStmt {
		if !fenced && q.lease == 0 {
			return stmt(kind, false, fn+"("+list+") IS NOT NULL")
		}
		return stmt(kind, fenced, "CASE WHEN "+fn+"("+list+") IS NOT NULL THEN "+granted(fenced)+" END")
	}
	try := func(fn string, kind Kind, fenced bool) *LockStmt {
		if !fenced && q.lease == 0 {
			return stmt(kind, false, fn+"("+list+")")
		}
		no := "false" // a try's answer when the lock is taken
		if fenced {
			no = "'0'"
		}
		return stmt(kind, fenced, "CASE WHEN "+fn+"("+list+") THEN "+granted(fenced)+" ELSE "+no+" END")
	}
	q.Lock = lock("pg_advisory_lock", KindLock, q.fenced)
	q.LockShared = lock("pg_advisory_lock_shared", KindLockShared, false)
	q.Try = try("pg_try_advisory_lock", KindTry, q.fenced)
	q.TryShared = try("pg_try_advisory_lock_shared", KindTryShared, false)
	q.TrySharedBehind = stmt(KindTrySharedBehind, false, "CASE WHEN "+q.queued+" THEN false WHEN pg_try_advisory_lock_shared("+list+") THEN "+on+" ELSE false END")
	// The unlock answers with its row count, which Exec reports without
	// reading rows: one row if the lock was released, none otherwise. It is
	// guarded as the lock is: on another session (a pooler moved the
	// connection), which may hold the same key for another client, it
	// releases nothing. The last lock a session carries gives the
	// session's setting back.
	unlock := func(fn string, kind Kind, last bool) *LockStmt {
		released := "true"
		if last && q.lease > 0 {
			released = LeaseOff(q.lease)
		}
		return &LockStmt{Kind: kind, Parts: strings.Split("SELECT 1 WHERE CASE WHEN pg_backend_pid() <> "+TokenMark+
			" THEN false WHEN "+fn+"("+list+") THEN "+released+" ELSE false END", TokenMark)}
	}
	q.Unlock, q.UnlockShared = unlock("pg_advisory_unlock", KindUnlock, true), unlock("pg_advisory_unlock_shared", KindUnlockShared, true)
	q.UnlockKeep = unlock("pg_advisory_unlock", KindUnlockKeep, false)
	q.UnlockSharedKeep = unlock("pg_advisory_unlock_shared", KindUnlockSharedKeep, false)
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

// TxQuery builds a transaction-lock statement (pg_advisory_xact_lock and
// friends). Built per call: the transaction path is not the hot path of a
// session lock, and this keeps Mutex small.
func (q Queries) TxQuery(shared, try bool) string {
	fn := "pg_advisory_xact_lock"
	if try {
		fn = "pg_try_advisory_xact_lock"
	}
	if shared {
		fn += "_shared"
	}
	list := q.KeyList
	if try {
		return "SELECT " + fn + "(" + list + "), " + txRefusal
	}
	return "SELECT " + txRefusal + " FROM " + fn + "(" + list + ")"
}

// txRefusal is a transaction lock's verdict on its server: TxStub for
// stub advisory locks (see stubbed), TxStandby for a standby, else 0.
const txRefusal = "CASE " + stubbed + "WHEN pg_is_in_recovery() THEN 2 ELSE 0 END"

// Verdicts of a transaction lock statement (see Queries.TxQuery).
const (
	TxStandby = 2
	TxStub    = 8
)

// KindCount is the number of statement kinds a Target caches guarded forms of.
const KindCount = int(KindUnlockSharedKeep) + 1

// KeyArgs returns key k as the arguments of the statements Build makes
// with placeholders.
func KeyArgs(k keyspace.Key) []any {
	if n, ok := k.Int64(); ok {
		return []any{n}
	}
	a, b, _ := k.Pair()
	return []any{int64(a), int64(b)}
}

// HeldInTx asks whether the session holds transaction lock k, which a Tx
// that runs statements outside a transaction block released at once.
func HeldInTx(k keyspace.Key) string {
	c, o, s := k.LockTag()
	return fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
	AND pid = pg_backend_pid() AND classid = %d AND objid = %d AND objsubid = %d)`, c, o, s)
}

// HoldersSQL lists every session holding or waiting for one key, given as
// its lock tag (see keyspace.Key.LockTag): holders first, then waiters in
// the order they began waiting. waitstart exists from PostgreSQL 14 on;
// read through to_jsonb, it is NULL before. pid is NULL for a lock of a
// prepared transaction.
const HoldersSQL = `SELECT COALESCE(l.pid, 0), l.mode = 'ShareLock', l.granted,
	COALESCE(a.application_name, ''), COALESCE(host(a.client_addr), ''),
	a.backend_start, (to_jsonb(l) ->> 'waitstart')::timestamptz, a.state_change,
	COALESCE(a.state, '')
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND l.classid = $1 AND l.objid = $2 AND l.objsubid = $3
ORDER BY l.granted DESC, 7 NULLS FIRST, l.pid`

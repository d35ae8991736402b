package sqllock

import (
	"context"
	"database/sql/driver"
	"reflect"
	"sync"
)

// lib/pq sends a statement with parameters as two round trips (Parse and
// Describe, then Bind and Execute), and one without parameters as a simple
// query, which the server parses and plans anew each time. A statement it
// has prepared runs in one round trip (Bind, Execute) on a plan the server
// keeps. Measured per Lock+Unlock on lib/pq (docs/benchmarks.md), the
// prepared guarded statements beat the fastest hand-written literal form,
// where the literal guarded ones lost to it.
//
// So on drivers other than pgx (which prepares and caches by itself),
// sqllock prepares each lock and unlock text once per driver connection,
// with the key as parameters: a handful of statements per connection,
// whatever the number of keys. A stmtCache keeps them.
//
// The cache holds the statements, and so their connections, strongly: a
// statement refers to its connection, so a weakly keyed cache would never
// see a closed connection go. It forgets a connection that sqllock ends
// (drop), and keeps at most stmtConns connections, forgetting the least
// recently used beyond that. A forgotten live connection keeps its server
// statements until its session ends (they cannot be closed from here while
// another goroutine may use the connection); a pool with more than
// stmtConns connections busy with locks pays that, and a prepare round
// trip per lock on a connection forgotten meanwhile.

// Prepared statements are safe only on a session that is the client
// connection's alone. lib/pq names its statements "1", "2", ... per
// connection: behind a pooler in transaction mode, the Bind of statement
// "1" could reach a server session where another client prepared its own
// "1", and run that. So sqllock prepares only on direct sessions: those
// whose backend pid (from the verify statement) is the one the server gave
// the driver at startup (BackendKeyData), which a pooler such as PgBouncer
// replaces with its own. Other sessions get the key written into the text,
// as simple queries.

// stmtConns bounds how many driver connections a stmtCache keeps
// statements for.
const stmtConns = 64

// A stmtCache keeps prepared lock and unlock statements per driver
// connection. A Locker on a driver other than pgx has one.
type stmtCache struct {
	mu    sync.Mutex
	conns map[any]*connStmts
	clock uint64 // a use counter, for least recently used
}

type connStmts struct {
	pid    int64 // the session's backend pid, when direct was decided
	direct bool  // the session is the connection's own (see startupPID)
	stmts  map[string]driver.Stmt
	used   uint64
}

// direct reports whether statements may be prepared on driver connection
// dc, whose verified session has backend pid pid: whether pid is the one
// the driver got at startup.
func (c *stmtCache) direct(dc any, pid int64) bool {
	c.mu.Lock()
	cs := c.conns[dc]
	c.mu.Unlock()
	if cs != nil && cs.pid == pid {
		return cs.direct
	}
	startup, ok := startupPID(dc)
	direct := ok && startup == pid
	c.mu.Lock()
	defer c.mu.Unlock()
	cs = c.entryLocked(dc)
	if cs.pid != pid {
		cs.pid, cs.direct = pid, direct
		clear(cs.stmts) // prepared in another session, if any
	}
	return direct
}

// entryLocked returns dc's entry, making it if need be.
func (c *stmtCache) entryLocked(dc any) *connStmts {
	if c.conns == nil {
		c.conns = make(map[any]*connStmts)
	}
	cs := c.conns[dc]
	if cs == nil {
		if len(c.conns) >= stmtConns {
			c.evictLocked()
		}
		cs = &connStmts{stmts: make(map[string]driver.Stmt)}
		c.conns[dc] = cs
	}
	c.clock++
	cs.used = c.clock
	return cs
}

// startupPID returns the backend pid that driver connection dc got from
// the server at startup (BackendKeyData): lib/pq's field pid, bun's
// pgdriver's processID, looking through wrappers as sessionOwner does.
func startupPID(dc any) (int64, bool) {
	v := reflect.ValueOf(dc)
	for range maxUnwrap {
		s := v
		for s.Kind() == reflect.Pointer || s.Kind() == reflect.Interface {
			if s.IsNil() {
				return 0, false
			}
			s = s.Elem()
		}
		if s.Kind() == reflect.Struct {
			for _, name := range []string{"pid", "processID"} {
				if f := s.FieldByName(name); f.IsValid() && f.CanInt() {
					return f.Int(), true
				}
			}
		}
		if v = unwrapped(v); !v.IsValid() {
			break
		}
	}
	return 0, false
}

// stmt returns the statement prepared on dc for query, preparing it first
// if need be.
func (c *stmtCache) stmt(ctx context.Context, dc any, query string) (driver.Stmt, error) {
	c.mu.Lock()
	cs := c.conns[dc]
	var st driver.Stmt
	if cs != nil {
		c.clock++
		cs.used = c.clock
		st = cs.stmts[query]
	}
	c.mu.Unlock()
	if st != nil {
		return st, nil
	}
	// dc has one user at a time (its pinned *sql.Conn): no one else
	// prepares on it meanwhile.
	st, err := prepare(ctx, dc, query)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entryLocked(dc).stmts[query] = st
	return st, nil
}

// evictLocked forgets the least recently used connection.
func (c *stmtCache) evictLocked() {
	var oldest any
	var at uint64
	for dc, cs := range c.conns {
		if oldest == nil || cs.used < at {
			oldest, at = dc, cs.used
		}
	}
	delete(c.conns, oldest)
}

// drop forgets dc, whose session is being ended.
func (c *stmtCache) drop(dc any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.conns, dc)
}

// query runs the statement prepared on dc for query and returns the first
// column of its first row, as driverQueryValue does.
func (c *stmtCache) queryValue(ctx context.Context, dc any, query string, args []driver.NamedValue) (any, error) {
	st, err := c.stmt(ctx, dc, query)
	if err != nil {
		return nil, err
	}
	rows, err := stmtQuery(ctx, st, args)
	if err != nil {
		return nil, err
	}
	return firstValue(rows)
}

// execRows runs the statement prepared on dc for query and returns the
// number of rows it produced, as driverExecRows does.
func (c *stmtCache) execRows(ctx context.Context, dc any, query string, args []driver.NamedValue) (int64, error) {
	st, err := c.stmt(ctx, dc, query)
	if err != nil {
		return 0, err
	}
	return stmtExecRows(ctx, st, args)
}

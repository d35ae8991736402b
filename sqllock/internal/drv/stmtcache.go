package drv

import (
	"context"
	"database/sql/driver"
	"sync"
)

// lib/pq sends a statement with parameters as two round trips, and one
// without as a simple query the server plans anew each time; a statement
// it has prepared runs in one round trip on a kept plan (docs/benchmarks.md
// compares the forms). So on drivers other than pgx (which prepares and
// caches by itself), sqllock prepares each lock and unlock text once per
// driver connection, with the key as parameters. A StmtCache keeps them.
//
// It holds statements, and so their connections, strongly (a weakly keyed
// cache would never see a closed connection go): it forgets a connection
// sqllock ends (Drop), and keeps at most stmtConns connections, least
// recently used first out. A forgotten connection's statements are closed
// the next time sqllock uses it, since another goroutine may be using it.

// Prepared statements are safe only on a session that is the client
// connection's alone. lib/pq names its statements "1", "2", ... per
// connection: behind a pooler in transaction mode, the Bind of statement
// "1" could reach a server session where another client prepared its own
// "1", and run that. So sqllock prepares only on direct sessions: those
// whose backend pid (from the verify statement) is the one the server gave
// the driver at startup (BackendKeyData), which a pooler such as PgBouncer
// replaces with its own. Other sessions get the key written into the text,
// as simple queries.

// stmtConns bounds how many driver connections a StmtCache keeps
// statements for.
const stmtConns = 64

// A StmtCache keeps prepared lock and unlock statements per driver
// connection. A Locker on a driver other than pgx has one.
type StmtCache struct {
	mu    sync.Mutex
	conns map[any]*connStmts
	clock uint64 // a use counter, for least recently used

	// retired holds the statements of connections forgotten while they
	// may still be alive, to close the next time the connection is used
	// (inside conn.Raw, where sqllock is its one user): without that,
	// each re-prepare after an eviction would leave a statement behind
	// in the session. At most stmtConns connections' worth are kept;
	// beyond that, a connection's retired statements live until its
	// session ends.
	retired map[any][]driver.Stmt
}

type connStmts struct {
	pid    int64 // the session's backend pid, when direct was decided
	direct bool  // the session is the connection's own (see StartupPID)
	stmts  map[string]driver.Stmt
	used   uint64
}

// direct reports whether statements may be prepared on driver connection
// dc, whose verified session has backend pid pid: whether pid is the one
// the driver got at startup.
func (c *StmtCache) Direct(dc any, pid int64) bool {
	c.mu.Lock()
	cs := c.conns[dc]
	c.mu.Unlock()
	if cs != nil && cs.pid == pid {
		return cs.direct
	}
	startup, ok := StartupPID(dc)
	direct := ok && startup == pid
	c.mu.Lock()
	defer c.mu.Unlock()
	cs = c.entryLocked(dc, pid)
	if cs.pid != pid {
		// The connection reached another session (behind a pooler):
		// its statements were prepared in the old one, and went with it.
		cs.pid = pid
		clear(cs.stmts)
	}
	cs.direct = direct
	return direct
}

// entryLocked returns dc's entry, making it if need be for the direct
// session of backend pid.
func (c *StmtCache) entryLocked(dc any, pid int64) *connStmts {
	if c.conns == nil {
		c.conns = make(map[any]*connStmts)
	}
	cs := c.conns[dc]
	if cs == nil {
		if len(c.conns) >= stmtConns {
			c.evictLocked()
		}
		cs = &connStmts{pid: pid, direct: true, stmts: make(map[string]driver.Stmt)}
		c.conns[dc] = cs
	}
	c.clock++
	cs.used = c.clock
	return cs
}

// stmt returns the statement prepared on dc, whose direct session has
// backend pid pid, for query, preparing it first if need be. It runs
// inside conn.Raw: dc has no other user meanwhile.
func (c *StmtCache) stmt(ctx context.Context, dc any, pid int64, query string) (driver.Stmt, error) {
	c.mu.Lock()
	cs := c.conns[dc]
	var st driver.Stmt
	if cs != nil {
		c.clock++
		cs.used = c.clock
		st = cs.stmts[query]
	}
	retired := c.retired[dc]
	delete(c.retired, dc)
	c.mu.Unlock()
	for _, old := range retired {
		_ = old.Close()
	}
	if st != nil {
		return st, nil
	}
	// dc has one user at a time (its pinned *sql.Conn): no one else
	// prepares on it meanwhile.
	st, err := Prepare(ctx, dc, query)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entryLocked(dc, pid).stmts[query] = st
	return st, nil
}

// evictLocked forgets the least recently used connection, retiring its
// statements.
func (c *StmtCache) evictLocked() {
	var oldest any
	var at uint64
	for dc, cs := range c.conns {
		if oldest == nil || cs.used < at {
			oldest, at = dc, cs.used
		}
	}
	cs := c.conns[oldest]
	delete(c.conns, oldest)
	if len(cs.stmts) == 0 {
		return
	}
	if c.retired == nil {
		c.retired = make(map[any][]driver.Stmt)
	}
	if len(c.retired) >= stmtConns {
		for dc := range c.retired {
			delete(c.retired, dc) // an arbitrary one: its statements stay in its session
			break
		}
	}
	for _, st := range cs.stmts {
		c.retired[oldest] = append(c.retired[oldest], st)
	}
}

// drop forgets dc, whose session is being ended, statements and all.
func (c *StmtCache) Drop(dc any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.conns, dc)
	delete(c.retired, dc)
}

// query runs the statement prepared on dc for query and returns the first
// column of its first row, as QueryValue does.
func (c *StmtCache) QueryValue(ctx context.Context, dc any, pid int64, query string, args []driver.NamedValue) (any, error) {
	st, err := c.stmt(ctx, dc, pid, query)
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
// number of rows it produced, as ExecRows does.
func (c *StmtCache) ExecRows(ctx context.Context, dc any, pid int64, query string, args []driver.NamedValue) (int64, error) {
	st, err := c.stmt(ctx, dc, pid, query)
	if err != nil {
		return 0, err
	}
	return stmtExecRows(ctx, st, args)
}

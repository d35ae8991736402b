package fakedriver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"sync"
)

// Pooler is a driver.Connector that plays a pooler in front of a real
// server, as PgBouncer in pool_mode=transaction does (worse: with
// round-robin server selection): every statement of every client
// connection runs on another server connection of Inner, and closing a
// client connection leaves the server sessions (and whatever locks they
// hold) open. Open it with sql.OpenDB, and Close it after the *sql.DB.
type Pooler struct {
	Inner   *sql.DB
	Pin     bool                // each client connection keeps one server connection: session semantics, as without a pooler
	Rewrite func(string) string // if set, applied to every statement

	mu     sync.Mutex
	recent []*sql.Conn // server connections of the latest statements, kept out of the pool for a while
}

// rotation is how many recent server connections stay out of the inner
// pool, whose LIFO order would otherwise hand back the latest one.
const rotation = 2

// Connect returns a new client connection.
func (p *Pooler) Connect(context.Context) (driver.Conn, error) { return &clientConn{p: p}, nil }

// Driver returns p, which opens client connections too.
func (p *Pooler) Driver() driver.Driver { return p }

// Open returns a new client connection.
func (p *Pooler) Open(string) (driver.Conn, error) { return &clientConn{p: p}, nil }

// server runs f on a server connection other than the latest ones.
func (p *Pooler) server(ctx context.Context, f func(*sql.Conn) error) error {
	c, err := p.Inner.Conn(ctx)
	if err != nil {
		return err
	}
	err = f(c)
	p.mu.Lock()
	p.recent = append(p.recent, c)
	var back *sql.Conn
	if len(p.recent) > rotation {
		back, p.recent = p.recent[0], p.recent[1:]
	}
	p.mu.Unlock()
	if back != nil {
		_ = back.Close()
	}
	return err
}

// Close gives the server connections it kept back to Inner.
func (p *Pooler) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.recent {
		_ = c.Close()
	}
	p.recent = nil
}

// clientConn is one client connection to the pooler. It supports plain
// queries and execs only.
type clientConn struct {
	p   *Pooler
	srv *sql.Conn // its server connection, when pinned
}

// run runs f on the client's server connection: its own when pinned,
// else one of the pool's (see Pooler.server).
func (c *clientConn) run(ctx context.Context, f func(*sql.Conn) error) error {
	if !c.p.Pin {
		return c.p.server(ctx, f)
	}
	if c.srv == nil {
		srv, err := c.p.Inner.Conn(ctx)
		if err != nil {
			return err
		}
		c.srv = srv
	}
	return f(c.srv)
}

// statement is query as the server gets it.
func (c *clientConn) statement(query string) string {
	if c.p.Rewrite == nil {
		return query
	}
	return c.p.Rewrite(query)
}

var errUnsupported = errors.New("fakedriver.Pooler: only QueryContext and ExecContext are supported")

func (c *clientConn) Prepare(string) (driver.Stmt, error) { return nil, errUnsupported }
func (c *clientConn) Begin() (driver.Tx, error)           { return nil, errUnsupported }

// Close leaves the server sessions open, as a pooler does; a pinned
// connection ends its own.
func (c *clientConn) Close() error {
	if c.srv != nil {
		_ = c.srv.Raw(func(any) error { return driver.ErrBadConn })
		return c.srv.Close()
	}
	return nil
}

func (c *clientConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	var res sql.Result
	err := c.run(ctx, func(s *sql.Conn) (err error) {
		res, err = s.ExecContext(ctx, c.statement(query), values(args)...)
		return err
	})
	return res, err
}

func (c *clientConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rows := &Table{}
	err := c.run(ctx, func(s *sql.Conn) error {
		rs, err := s.QueryContext(ctx, c.statement(query), values(args)...)
		if err != nil {
			return err
		}
		defer rs.Close()
		if rows.Cols, err = rs.Columns(); err != nil {
			return err
		}
		for rs.Next() {
			row := make([]any, len(rows.Cols))
			ptrs := make([]any, len(row))
			for i := range row {
				ptrs[i] = &row[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				return err
			}
			rows.Data = append(rows.Data, row)
		}
		return rs.Err()
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func values(args []driver.NamedValue) []any {
	vs := make([]any, len(args))
	for i, a := range args {
		vs[i] = a.Value
	}
	return vs
}

// Table is an answer of any number of rows, read in full: Cols names its
// columns, Data holds its rows.
type Table struct {
	Cols []string
	Data [][]any
}

// Columns returns Cols.
func (r *Table) Columns() []string { return r.Cols }

// Close does nothing: the rows are in memory.
func (r *Table) Close() error { return nil }

// Next moves the first row left into dest.
func (r *Table) Next(dest []driver.Value) error {
	if len(r.Data) == 0 {
		return io.EOF
	}
	for i, v := range r.Data[0] {
		dest[i] = v
	}
	r.Data = r.Data[1:]
	return nil
}

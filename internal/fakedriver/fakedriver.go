// Package fakedriver holds database/sql drivers for tests: Connector,
// whose statements run a test's function, for behaviour that neither a
// live server nor sqlmock can play (a driver that ignores its context, a
// grant that races a cancel, an answer that makes no sense); and Pooler,
// which plays a transaction-mode pooler in front of a real server. The
// tests of sqllock, of the packages below it and of conntest import it,
// instead of each writing its own.
package fakedriver

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"sync/atomic"
)

// Connector is the driver: open it with sql.OpenDB. Every query and exec
// of its connections runs Query, whose values are the answer's one row (no
// values: no row).
type Connector struct {
	Query   func(ctx context.Context, q string) ([]driver.Value, error)
	Closed  atomic.Int32 // connections closed
	OnClose func()       // if set, runs on each Close
}

// Connect returns a new Connection.
func (c *Connector) Connect(context.Context) (driver.Conn, error) { return &Connection{C: c}, nil }

// Driver returns nil: the Connector is opened with sql.OpenDB only.
func (c *Connector) Driver() driver.Driver { return nil }

// A Connection is one driver connection of C. It has no prepared
// statements and no transactions; tests embed it to add either.
type Connection struct{ C *Connector }

// Prepare fails: drivers without prepared statements exist.
func (f *Connection) Prepare(string) (driver.Stmt, error) { return nil, errors.New("fake: no Prepare") }

// Begin fails.
func (f *Connection) Begin() (driver.Tx, error) { return nil, errors.New("fake: no Begin") }

// Close counts the close, and runs OnClose.
func (f *Connection) Close() error {
	f.C.Closed.Add(1)
	if f.C.OnClose != nil {
		f.C.OnClose()
	}
	return nil
}

// QueryContext answers with Query's values.
func (f *Connection) QueryContext(ctx context.Context, q string, _ []driver.NamedValue) (driver.Rows, error) {
	vals, err := f.C.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	return &Rows{Vals: vals}, nil
}

// ExecContext runs the test's function too: an unlock statement's answer
// true is one row (released), false none.
func (f *Connection) ExecContext(ctx context.Context, q string, _ []driver.NamedValue) (driver.Result, error) {
	vals, err := f.C.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	if len(vals) == 1 && vals[0] == false {
		return driver.RowsAffected(0), nil
	}
	return driver.RowsAffected(1), nil
}

// Rows is an answer of one row, Vals, or of none when Vals is empty.
type Rows struct {
	Vals []driver.Value
	done bool
}

// Columns names as many columns as Vals has, all unnamed.
func (r *Rows) Columns() []string { return make([]string, len(r.Vals)) }

// Close does nothing.
func (r *Rows) Close() error { return nil }

// Next copies Vals into dest once, then reports io.EOF.
func (r *Rows) Next(dest []driver.Value) error {
	if r.done || len(r.Vals) == 0 { // no values: no row
		return io.EOF
	}
	r.done = true
	copy(dest, r.Vals)
	return nil
}

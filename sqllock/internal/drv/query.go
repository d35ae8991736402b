// Package drv runs sqllock's statements on database/sql/driver
// connections, below database/sql: queries and row counts, statements
// prepared once per connection (StmtCache), interrupting a statement in
// flight, and finding the object that owns a server session under
// wrappers and pool bridges. It knows nothing of locks.
package drv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
)

// The lock statements run on the driver connection itself, inside
// conn.Raw, the way database/sql runs a query on it (QueryerContext, else
// a prepared statement), without database/sql's bookkeeping around each
// statement: a Rows and its context watch, the column list, conversion of
// the answer. Besides costing less, this lets one conn.Raw both find the
// driver connection and run the statement on it. The keep-alive probe,
// off the lock path, goes through database/sql.

// The arguments are the key's, built once per Mutex and shared by
// concurrent calls: int64 and string values, which every driver takes
// as they are (database/sql/driver.Value), and which no driver modifies.

// QueryValue runs query on driver connection dc and returns the
// first column of its first row, or sql.ErrNoRows when it answers no row.
// The statement must answer one column.
func QueryValue(ctx context.Context, dc any, query string, args []driver.NamedValue) (any, error) {
	rows, err := driverQuery(ctx, dc, query, args)
	if err != nil {
		return nil, err
	}
	return firstValue(rows)
}

// firstValue reads the first column of the first row of rows and closes
// them; sql.ErrNoRows when there is no row.
func firstValue(rows driver.Rows) (any, error) {
	dest := make([]driver.Value, 1)
	err := rows.Next(dest)
	if cerr := rows.Close(); err == nil || err == io.EOF && cerr != nil {
		err = cerr
	}
	switch {
	case err == io.EOF:
		return nil, sql.ErrNoRows
	case err != nil:
		return nil, err
	}
	return dest[0], nil
}

// driverQuery starts query on dc as database/sql would.
func driverQuery(ctx context.Context, dc any, query string, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := dc.(driver.QueryerContext); ok {
		rows, err := q.QueryContext(ctx, query, args)
		if !errors.Is(err, driver.ErrSkip) {
			return rows, err
		}
	}
	st, err := Prepare(ctx, dc, query)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil { // as database/sql does before a call without a context
		st.Close()
		return nil, err
	}
	rows, err := stmtQuery(ctx, st, args)
	if err != nil {
		st.Close()
		return nil, err
	}
	return stmtRows{rows, st}, nil
}

// stmtQuery runs prepared statement st as database/sql would.
func stmtQuery(ctx context.Context, st driver.Stmt, args []driver.NamedValue) (driver.Rows, error) {
	if sq, ok := st.(driver.StmtQueryContext); ok {
		return sq.QueryContext(ctx, args)
	}
	//lint:ignore SA1019 the fallback database/sql uses too, for drivers without StmtQueryContext
	return st.Query(values(args))
}

// stmtExecRows runs prepared statement st as database/sql would, and
// returns the number of rows it produced, or -1 if the driver cannot tell.
func stmtExecRows(ctx context.Context, st driver.Stmt, args []driver.NamedValue) (int64, error) {
	if se, ok := st.(driver.StmtExecContext); ok {
		return RowsAffected(se.ExecContext(ctx, args))
	}
	//lint:ignore SA1019 the fallback database/sql uses too, for drivers without StmtExecContext
	return RowsAffected(st.Exec(values(args)))
}

// ExecRows runs query on dc and returns the number of rows it
// produced, or -1 if the driver cannot tell.
func ExecRows(ctx context.Context, dc any, query string, args []driver.NamedValue) (int64, error) {
	if e, ok := dc.(driver.ExecerContext); ok {
		res, err := e.ExecContext(ctx, query, args)
		if !errors.Is(err, driver.ErrSkip) {
			return RowsAffected(res, err)
		}
	}
	st, err := Prepare(ctx, dc, query)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return stmtExecRows(ctx, st, args)
}

// Prepare prepares query on driver connection dc, with its context where
// the driver takes one.
func Prepare(ctx context.Context, dc any, query string) (driver.Stmt, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch c := dc.(type) {
	case driver.ConnPrepareContext:
		return c.PrepareContext(ctx, query)
	case driver.Conn:
		return c.Prepare(query)
	}
	return nil, fmt.Errorf("the driver connection %T is not a database/sql/driver.Conn", dc)
}

func values(args []driver.NamedValue) []driver.Value {
	vs := make([]driver.Value, len(args))
	for i, a := range args {
		vs[i] = a.Value
	}
	return vs
}

// stmtRows closes its statement with its rows.
type stmtRows struct {
	driver.Rows
	st driver.Stmt
}

func (r stmtRows) Close() error {
	err := r.Rows.Close()
	if serr := r.st.Close(); err == nil {
		err = serr
	}
	return err
}

// named returns args as a statement's parameters $1, $2, ...
func Named(args []any) []driver.NamedValue {
	if len(args) == 0 {
		return nil
	}
	nv := make([]driver.NamedValue, len(args))
	for i, a := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return nv
}

// RowsAffected returns the row count of a statement that ran, or -1 if the
// driver cannot tell it.
func RowsAffected(res interface{ RowsAffected() (int64, error) }, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	if res == nil {
		return -1, nil
	}
	n, err := res.RowsAffected()
	if err != nil {
		return -1, nil
	}
	return n, nil
}

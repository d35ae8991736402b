package drv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// oldConn is a driver connection with none of the context interfaces: the
// statements go through Prepare and the deprecated Stmt.Query and
// Stmt.Exec, as database/sql runs them.
type oldConn struct {
	vals   []driver.Value
	closed int // statements closed
}

func (c *oldConn) Prepare(string) (driver.Stmt, error) { return &oldStmt{c}, nil }
func (c *oldConn) Close() error                        { return nil }
func (c *oldConn) Begin() (driver.Tx, error)           { return nil, errors.New("no") }

type oldStmt struct{ c *oldConn }

func (s *oldStmt) Close() error  { s.c.closed++; return nil }
func (s *oldStmt) NumInput() int { return -1 }
func (s *oldStmt) Exec([]driver.Value) (driver.Result, error) {
	return driver.RowsAffected(len(s.c.vals)), nil
}
func (s *oldStmt) Query([]driver.Value) (driver.Rows, error) {
	return &fakedriver.Rows{Vals: s.c.vals}, nil
}

// skipConn's context interfaces answer ErrSkip, which sends database/sql,
// and sqllock, to a prepared statement.
type skipConn struct{ oldConn }

func (c *skipConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return nil, driver.ErrSkip
}

func (c *skipConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return nil, driver.ErrSkip
}

// closeErrRows fails on Close, as a driver reports an error that came
// after the row.
type closeErrRows struct{ fakedriver.Rows }

func (r *closeErrRows) Close() error { return errors.New("boom after the row") }

type closeErrConn struct{}

func (closeErrConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &closeErrRows{fakedriver.Rows{Vals: []driver.Value{int64(1)}}}, nil
}

func TestDriverQueryFallbacks(t *testing.T) {
	ctx := context.Background()
	for _, dc := range []interface {
		driver.Conn
	}{&oldConn{vals: []driver.Value{int64(33)}}, &skipConn{oldConn{vals: []driver.Value{int64(33)}}}} {
		v, err := QueryValue(ctx, dc, "SELECT 33", nil)
		require.NoError(t, err, "%T", dc)
		assert.Equal(t, int64(33), v, "%T", dc)
		n, err := ExecRows(ctx, dc, "SELECT 1", Named([]any{int64(1)}))
		require.NoError(t, err, "%T", dc)
		assert.Equal(t, int64(1), n, "%T", dc)
	}
	old := &oldConn{}
	_, err := QueryValue(ctx, old, "SELECT 1 WHERE false", nil)
	assert.ErrorIs(t, err, sql.ErrNoRows, "no row")
	assert.Equal(t, 1, old.closed, "the statement is closed with its rows")

	_, err = QueryValue(ctx, closeErrConn{}, "SELECT 1", nil)
	assert.ErrorContains(t, err, "boom after the row", "an error on Close is not lost")

	_, err = QueryValue(ctx, struct{}{}, "SELECT 1", nil)
	assert.ErrorContains(t, err, "is not a database/sql/driver.Conn")
	_, err = ExecRows(ctx, struct{}{}, "SELECT 1", nil)
	assert.ErrorContains(t, err, "is not a database/sql/driver.Conn")
}

func TestNamed(t *testing.T) {
	assert.Nil(t, Named(nil))
	assert.Equal(t, []driver.NamedValue{{Ordinal: 1, Value: int64(4)}, {Ordinal: 2, Value: int64(5)}}, Named([]any{int64(4), int64(5)}))
}

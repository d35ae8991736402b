package sqllock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/fakedriver"
)

// socketConnector's connections look like pgx's to drv.Socket (Conn,
// PgConn, Conn down to a net.Conn), and their unlock blocks reading that
// socket, as a driver does on a silent network, until a deadline passes.
type socketConnector struct{ fakedriver.Connector }

func (c *socketConnector) Connect(context.Context) (driver.Conn, error) {
	client, server := net.Pipe()
	return &socketConn{Connection: fakedriver.Connection{C: &c.Connector}, pgx: &sockPgx{&sockPg{client}}, peer: server}, nil
}

type (
	socketConn struct {
		fakedriver.Connection
		pgx  *sockPgx
		peer net.Conn // the server's end: never answers
	}
	sockPgx struct{ pg *sockPg }
	sockPg  struct{ nc net.Conn }
)

func (s *socketConn) Conn() *sockPgx { return s.pgx }
func (p *sockPgx) PgConn() *sockPg   { return p.pg }
func (p *sockPg) Conn() net.Conn     { return p.nc }
func (s *socketConn) Close() error {
	s.pgx.pg.nc.Close()
	s.peer.Close()
	return s.Connection.Close()
}

func (s *socketConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	if strings.Contains(q, "advisory_unlock") {
		_, err := s.pgx.pg.nc.Read(make([]byte, 1))
		return nil, fmt.Errorf("fake: reading the unlock's answer: %w", err)
	}
	return s.Connection.ExecContext(ctx, q, args)
}

// An unlock stuck on its socket, under a context that never ends, is
// ended by the release bound: a deadline set on the socket, not a
// cancelled context. Unlock returns nil (the session is discarded, and the
// lock with it) about one keep-alive timeout after it began.
func TestFakeReleaseBoundOnSocket(t *testing.T) {
	const bound = 100 * time.Millisecond
	c := &socketConnector{}
	c.Query = func(_ context.Context, q string) ([]driver.Value, error) {
		return answerAs(q, 7), nil
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	l := New(db, withPlaceholders(false), WithKeepAlive(0, bound))
	l.boundsContext = true // as with pgx
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))

	start := time.Now()
	err := mu.Unlock(context.Background())
	took := time.Since(start)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, took, bound, "Unlock returned before its bound")
	assert.Less(t, took, bound+5*time.Second, "Unlock outlived its bound")
	assert.Equal(t, int32(drv.InterruptSocket), l.interrupt.Load(), "the bound was kept on the socket")
	assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrNotHeld)
}

package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/settle"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A lock statement that fails leaves the lock state unknown: the session
// is discarded and looked for in pg_locks. A verify statement that fails
// took nothing: the connection is discarded alone.
func TestMockDriverErrorEndsSession(t *testing.T) {
	boom := errors.New("protocol confusion")
	t.Run("lock", func(t *testing.T) {
		l, mock := newMock(t)
		mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
		mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WillReturnError(boom)
		expectEnded(mock, 7)
		err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
		require.ErrorIs(t, err, boom)
		var e *sqllock.Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, "lock", e.Op)
		assert.Equal(t, keyspace.Int64(42), e.Key)
		assert.Equal(t, `sqllock: lock int64(42): protocol confusion`, err.Error())
	})
	t.Run("verify", func(t *testing.T) {
		l, mock := newMock(t)
		mock.ExpectQuery(verifySQL).WillReturnError(boom)
		mock.ExpectClose()
		require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), boom)
	})
}

// A session that the pg_locks look finds still holding the lock is
// terminated, and one that cannot be is reported: the call fails with
// ErrNotReleased rather than returning as if the lock were gone.
func TestMockEndSessionTerminates(t *testing.T) {
	boom := errors.New("protocol confusion")
	l, mock := newMock(t)
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WillReturnError(boom)
	mock.ExpectClose()
	look := func(pid int64) *sqlmock.ExpectedQuery {
		return mock.ExpectQuery(lookSQL(pid)).WithoutArgs()
	}
	look(7).WillReturnRows(sqlmock.NewRows([]string{"state", "exists", "self"}).AddRow("active", true, false))
	mock.ExpectQuery(terminateSQL(7)).WithoutArgs().
		WillReturnRows(sqlmock.NewRows([]string{"pg_terminate_backend"}).AddRow(true))
	look(7).WillReturnRows(sqlmock.NewRows([]string{"state", "exists", "self"}))
	require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), boom)

	denied := errors.New("permission denied to terminate process")
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(8, 0))
	mock.ExpectQuery(guardedSQL(q42.Lock, 8)).WillReturnError(boom)
	mock.ExpectClose()
	look(8).WillReturnRows(sqlmock.NewRows([]string{"state", "exists", "self"}).AddRow("idle", true, false))
	mock.ExpectQuery(terminateSQL(8)).WithoutArgs().WillReturnError(denied)
	err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
	require.ErrorIs(t, err, boom)
	require.ErrorIs(t, err, sqllock.ErrNotReleased)
	require.ErrorIs(t, err, denied)
	assert.Contains(t, err.Error(), "backend 8")
}

func TestMockUnlockFalseIsLoss(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(false))
	expectEnded(mock, 7)
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	err := mu.Unlock(t.Context())
	require.ErrorIs(t, err, sqllock.ErrLockLost)
	require.NotErrorIs(t, err, sqllock.ErrNotHeld, "a lost lock is not the same as one never held")
	assert.Contains(t, err.Error(), "backend 7 took it")
}

func TestMockUnlockErrorIsLoss(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnError(driver.ErrBadConn)
	expectEnded(mock, 7)
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrLockLost)
}

// Unlock with a context that already ended still unlocks, bounded by the
// keep-alive timeout, and keeps the connection: leaving the lock to a
// discarded connection relies on the driver's Close ending the session.
func TestMockUnlockEndedContextStillUnlocks(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.NoError(t, mu.Unlock(ctx))
	assert.Equal(t, 1, sqllock.DBOf(l).Stats().Idle, "the connection went back to the pool")
}

// A release whose context never ends, on a driver whose statements are
// interrupted by closing the connection (lib/pq), runs its unlock in the
// caller's goroutine; at the bound the connection is closed, the stuck
// unlock returns, and the session is ended: Unlock returns about one bound
// after it began, and the connection is discarded.
func TestFakeReleaseBoundByClose(t *testing.T) {
	const bound = 100 * time.Millisecond
	l, c, run := newCloseInterruptedFake(t, func(q string) bool { return strings.Contains(q, "advisory_unlock") }, false,
		sqllock.WithKeepAlive(0, bound))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))

	start := time.Now()
	err := run("the release bound", func() error { return mu.Unlock(context.Background()) })
	took := time.Since(start)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, took, bound, "Unlock returned before its bound")
	assert.Less(t, took, bound+settle.Bound+2*time.Second, "Unlock outlived its bound")
	assert.NotZero(t, c.Closed.Load(), "the connection is discarded")
	assert.Zero(t, sqllock.DBOf(l).Stats().InUse)
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
}

func TestUnlockNotHeld(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
		require.ErrorIs(t, mu.UnlockShared(t.Context()), sqllock.ErrNotHeld)
		require.NoError(t, mu.Lock(t.Context()))
		err := mu.UnlockShared(t.Context())
		require.ErrorIs(t, err, sqllock.ErrNotHeld)
		assert.Contains(t, err.Error(), "use Unlock")
		require.NoError(t, mu.Unlock(t.Context()))
		require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
	})
}

func TestUnlockWithCancelledContextReleases(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.NoError(t, mu.Lock(t.Context()))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		require.NoError(t, mu.Unlock(ctx))
		held, waiting := lockRows(t, db, mu.Key())
		assert.Equal(t, [2]int{0, 0}, [2]int{held, waiting}, "pg_locks right after Unlock: held, waiting")
		assert.Equal(t, 0, inUse(db))
	})
}

// The bound of a statement whose context never ends (a release's, a
// shared session's) is kept by interrupting the driver: on the socket
// under pgx (sqllock reaches it through pgx's accessors), and by closing
// the connection under lib/pq, whose socket is out of reach. If lib/pq
// renamed its connection type, sqllock would fall back to a slower path:
// this test says so.
func TestReleaseBoundInterrupt(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		conn, err := db.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		nc := sqllock.DriverSocket(conn)
		if strings.HasPrefix(t.Name(), "TestReleaseBoundInterrupt/pgx") {
			assert.Equal(t, "socket", sqllock.InterruptKind(conn))
			require.NotNil(t, nc, "pgx's socket")
			if local, ok := nc.LocalAddr().(*net.TCPAddr); ok {
				var port int
				require.NoError(t, conn.QueryRowContext(t.Context(), "SELECT inet_client_port()").Scan(&port))
				assert.Equal(t, port, local.Port, "the socket is this connection's")
			}
		} else {
			assert.Nil(t, nc, "lib/pq's socket is out of reach")
			assert.Equal(t, "close", sqllock.InterruptKind(conn))
		}
	})
}

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
	l := sqllock.New(db, sqllock.WithPlaceholders(false), sqllock.WithKeepAlive(0, bound))
	sqllock.SetBoundsContext(l, true) // as with pgx
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))

	start := time.Now()
	err := mu.Unlock(context.Background())
	took := time.Since(start)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, took, bound, "Unlock returned before its bound")
	assert.Less(t, took, bound+5*time.Second, "Unlock outlived its bound")
	assert.Equal(t, drv.InterruptSocket, sqllock.Interrupt(l), "the bound was kept on the socket")
	assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
	require.ErrorIs(t, mu.Unlock(t.Context()), sqllock.ErrNotHeld)
}

// Stand-ins for pgx's stdlib.Conn, pgx.Conn and pgconn.PgConn.
type (
	fakeStdlibConn struct{ c *fakePgxConn }
	fakePgxConn    struct{ pc *fakePgConn }
	fakePgConn     struct{ nc net.Conn }
	wrongSignature struct{}
)

func (c *fakeStdlibConn) Conn() *fakePgxConn { return c.c }
func (c *fakePgxConn) PgConn() *fakePgConn   { return c.pc }
func (c *fakePgConn) Conn() net.Conn         { return c.nc }
func (wrongSignature) Conn(int) *fakePgxConn { return nil }

// drv.Socket follows Conn, PgConn, Conn down to a net.Conn, and gives
// nil, without a panic, wherever the chain breaks.
func TestDriverSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	full := &fakeStdlibConn{&fakePgxConn{&fakePgConn{a}}}
	if got := drv.Socket(full); got != a {
		t.Errorf("driverSocket(pgx-like chain) = %v, want the net.Conn at its end", got)
	}
	for name, dc := range map[string]any{
		"nil":                  nil,
		"nil pointer":          (*fakeStdlibConn)(nil),
		"nil link":             &fakeStdlibConn{},
		"nil second link":      &fakeStdlibConn{&fakePgxConn{}},
		"nil net.Conn":         &fakeStdlibConn{&fakePgxConn{&fakePgConn{}}},
		"not a driver conn":    42,
		"methods with args":    wrongSignature{},
		"no Conn method":       &fakePgxConn{},
		"chain of wrong types": &fakePgConn{a}, // Conn gives a net.Conn, which has no PgConn
	} {
		if got := drv.Socket(dc); got != nil {
			t.Errorf("driverSocket(%s) = %v, want nil", name, got)
		}
	}
}

// Unlock with a context that never ends is still bounded, by the keep-alive
// timeout, even with the keep-alive off: past it, the connection is
// discarded, which ends the session and the lock.
func TestFakeUnlockBackgroundIsBounded(t *testing.T) {
	const timeout = 50 * time.Millisecond
	l, c := newFake(t, func(ctx context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			return []driver.Value{int64(7)}, nil
		}
		if isUnlock(q) {
			<-ctx.Done() // a silent network, under a driver that honours its context
			return nil, ctx.Err()
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(0, timeout))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	start := time.Now()
	require.NoError(t, mu.Unlock(context.Background()), "the release is assured by discarding the connection")
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, timeout)
	assert.Less(t, elapsed, 20*timeout)
	assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
	assert.ErrorIs(t, mu.Unlock(context.Background()), sqllock.ErrNotHeld)
}

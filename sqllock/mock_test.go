package sqllock

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// newMock returns a Locker over a sqlmock database with exact SQL matching
// and the keep-alive off, unless opts say otherwise.
func newMock(t *testing.T, opts ...Option) (*Locker, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(tokenBlindEqual))
	require.NoError(t, err)
	t.Cleanup(func() {
		db.Close()
		assert.NoError(t, mock.ExpectationsWereMet())
	})
	db.SetMaxIdleConns(1)
	// sqlmock forgets its connection once every database/sql connection
	// to it has closed: one held for the test's life lets a discarded
	// connection be followed by a new one, as endSession needs.
	keep, err := db.Conn(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { keep.Close() })
	return New(db, append([]Option{WithKeepAlive(0, 0), withPlaceholders(false)}, opts...)...), mock
}

// The SQL for key 42; TestBuildQueries and TestBuildVerify pin its exact
// text.
var (
	q42       = sqltext.Build(keyspace.Int64(42), false)
	verifySQL = sqltext.BuildVerify(false, false).TextWith("TOKEN")
	unlockSQL = q42.Unlock
)

// tokenRE matches an owner token written into SQL text.
var tokenRE = regexp.MustCompile(`'[0-9a-f]{16}-[0-9a-z]+'`)

// guardedSQL is s's guarded form for the session of backend pid.
func guardedSQL(s *sqltext.LockStmt, pid int64) string {
	return strings.Join(s.Parts, fmt.Sprint(pid))
}

// tokenBlindEqual matches SQL exactly, but for the owner token, which
// depends on the driver connection's address: a well-formed token in the
// actual SQL matches 'TOKEN' in the expected.
var tokenBlindEqual = sqlmock.QueryMatcherFunc(func(expected, actual string) error {
	if got := tokenRE.ReplaceAllString(actual, "'TOKEN'"); got != expected {
		return fmt.Errorf("SQL %q does not equal %q", actual, expected)
	}
	return nil
})

// ownerTokenArg matches an owner token passed as a bind parameter.
type ownerTokenArg struct{}

func (ownerTokenArg) Match(v driver.Value) bool {
	s, ok := v.(string)
	return ok && tokenRE.MatchString("'"+s+"'")
}

// verified is the verify statement's answer for a session of backend pid
// with the given refusal flags.
func verified(pid, flags int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"answer"}).AddRow(pid<<sqltext.AnswerShift | flags)
}

// granted is a guarded lock statement's answer.
func granted(ok bool) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"granted"}).AddRow(ok)
}

// unlocked is an unlock statement's answer: one row if it released the
// lock, none if the session did not hold it.
func unlocked(released bool) driver.Result {
	if released {
		return sqlmock.NewResult(0, 1)
	}
	return sqlmock.NewResult(0, 0)
}

// expectLock expects a first lock of key 42 on a new connection: the
// verify statement, then the guarded form, granted.
func expectLock(mock sqlmock.Sqlmock, pid int64) {
	mock.ExpectQuery(verifySQL).WithoutArgs().WillReturnRows(verified(pid, 0))
	mock.ExpectQuery(guardedSQL(q42.Lock, pid)).WithoutArgs().WillReturnRows(granted(true))
}

// expectEnded expects a discarded connection, then the look in pg_locks
// for backend pid with key 42, which finds it gone.
func expectEnded(mock sqlmock.Sqlmock, pid int64) {
	mock.ExpectClose()
	mock.ExpectQuery(sqltext.LookSQL).WithArgs(pid, int64(0), int64(42), int64(1)).
		WillReturnRows(sqlmock.NewRows([]string{"state", "exists"}))
}

func TestMockLockUnlockSQL(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WithoutArgs().WillReturnResult(unlocked(true))
	mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WithoutArgs().WillReturnRows(granted(true))
	mock.ExpectExec(unlockSQL).WithoutArgs().WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	for range 2 { // the second lock needs no verify
		require.NoError(t, mu.Lock(t.Context()))
		require.NoError(t, mu.Unlock(t.Context()))
	}
}

func TestMockSharedAndPairSQL(t *testing.T) {
	l, mock := newMock(t)
	q := sqltext.Build(keyspace.Pair(1, -2), false)
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q.TryShared, 7)).WillReturnRows(granted(true))
	mock.ExpectExec(q.UnlockShared).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(1, -2))
	ok, err := mu.TryLockShared(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockPlaceholderSQL(t *testing.T) {
	l, mock := newMock(t, withPlaceholders(true))
	q := sqltext.Build(keyspace.Pair(3, 4), true)
	mock.ExpectQuery(sqltext.BuildVerify(true, false).TextWith("TOKEN")).WithArgs(ownerTokenArg{}).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q.LockShared, 7)).WithArgs(int64(3), int64(4)).WillReturnRows(granted(true))
	mock.ExpectExec(q.UnlockShared).WithArgs(int64(3), int64(4)).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(3, 4))
	require.NoError(t, mu.LockShared(t.Context()))
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockTryLockContended(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, 0))
	mock.ExpectQuery(guardedSQL(q42.Try, 7)).WillReturnRows(granted(false))
	ok, err := l.MutexKey(keyspace.Int64(42)).TryLock(t.Context())
	require.NoError(t, err)
	assert.False(t, ok, "contention is not an error")
}

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
		var e *Error
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
		return mock.ExpectQuery(sqltext.LookSQL).WithArgs(pid, int64(0), int64(42), int64(1))
	}
	look(7).WillReturnRows(sqlmock.NewRows([]string{"state", "exists"}).AddRow("active", true))
	mock.ExpectQuery(sqltext.TerminateSQL).WithArgs(int64(7), int64(0), int64(42), int64(1), sqlmock.AnyArg()).
		WillReturnRows(sqlmock.NewRows([]string{"pg_terminate_backend"}).AddRow(true))
	look(7).WillReturnRows(sqlmock.NewRows([]string{"state", "exists"}))
	require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), boom)

	denied := errors.New("permission denied to terminate process")
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(8, 0))
	mock.ExpectQuery(guardedSQL(q42.Lock, 8)).WillReturnError(boom)
	mock.ExpectClose()
	look(8).WillReturnRows(sqlmock.NewRows([]string{"state", "exists"}).AddRow("idle", true))
	mock.ExpectQuery(sqltext.TerminateSQL).WithArgs(int64(8), int64(0), int64(42), int64(1), sqlmock.AnyArg()).WillReturnError(denied)
	err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
	require.ErrorIs(t, err, boom)
	require.ErrorIs(t, err, ErrNotReleased)
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
	require.ErrorIs(t, err, ErrLockLost)
	require.NotErrorIs(t, err, ErrNotHeld, "a lost lock is not the same as one never held")
	assert.Contains(t, err.Error(), "backend 7 took it")
}

func TestMockUnlockErrorIsLoss(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnError(driver.ErrBadConn)
	expectEnded(mock, 7)
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrLockLost)
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
	assert.Equal(t, 1, l.db.Stats().Idle, "the connection went back to the pool")
}

func TestMockStandbyRefused(t *testing.T) {
	l, mock := newMock(t)
	// The verify statement marks nothing in recovery and no lock is
	// tried, so the connection is clean and goes back to the pool.
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, sqltext.FlagStandby))
	require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), ErrStandby)

	l, mock = newMock(t, WithAllowStandby(true))
	v := sqltext.BuildVerify(false, true).TextWith("TOKEN")
	assert.NotContains(t, v, "pg_is_in_recovery", "allowed standbys keep their locks")
	mock.ExpectQuery(v).WillReturnRows(verified(7, 0)) // the statement does not even ask
	mock.ExpectQuery(guardedSQL(q42.Lock, 7)).WillReturnRows(granted(true))
	mock.ExpectExec(q42.Unlock).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
}

func TestMockKeepAliveSeesOtherBackend(t *testing.T) {
	l, mock := newMock(t, WithKeepAlive(time.Millisecond, time.Second))
	expectLock(mock, 7)
	mock.ExpectQuery(sqltext.ProbeSQL).WillReturnRows(sqlmock.NewRows([]string{"pid"}).AddRow(8))
	expectEnded(mock, 7)
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	<-mu.Done()
	err := mu.Err()
	require.ErrorIs(t, err, ErrLockLost)
	assert.Contains(t, err.Error(), "transaction pooler")
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrLockLost)
}

func TestMockWithLockReleasesOnError(t *testing.T) {
	l, mock := newMock(t)
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(true))
	boom := errors.New("boom")
	err := l.MutexKey(keyspace.Int64(42)).WithLock(t.Context(), func(context.Context) error { return boom })
	require.Same(t, boom, err, "fn's error comes back as is")
}

func TestMockBadInput(t *testing.T) {
	db, _, err := sqlmock.New()
	require.NoError(t, err)
	defer db.Close()
	var nilCtx context.Context
	noop := func(context.Context) error { return nil }
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"nil db", func() error { return New(nil).Mutex("x").Lock(context.Background()) }, ErrNilDB},
		{"nil db trylock", func() error { _, err := New(nil).Mutex("x").TryLock(context.Background()); return err }, ErrNilDB},
		{"nil db withlock", func() error { return New(nil).Mutex("x").WithLock(context.Background(), noop) }, ErrNilDB},
		{"nil context lock", func() error { return New(db).Mutex("x").Lock(nilCtx) }, ErrNilContext},
		{"nil context unlock", func() error { return New(db).Mutex("x").Unlock(nilCtx) }, ErrNilContext},
		{"nil context withlock", func() error { return New(db).Mutex("x").WithLock(nilCtx, noop) }, ErrNilContext},
		{"nil fn", func() error { return New(db).Mutex("x").WithLock(context.Background(), nil) }, ErrNilFunc},
		{"unlock never locked", func() error { return New(db).Mutex("x").Unlock(context.Background()) }, ErrNotHeld},
		{"unlock shared never locked", func() error { return New(db).Mutex("x").UnlockShared(context.Background()) }, ErrNotHeld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			require.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), `"x"`, "the error names the lock")
		})
	}
}

func TestMockStickyErrors(t *testing.T) {
	db, _, err := sqlmock.New()
	require.NoError(t, err)
	defer db.Close()
	panicky := keyspace.Func(func(string) keyspace.Key { panic("bad strategy") })
	empty := keyspace.Func(func(string) keyspace.Key { return keyspace.Key{} })
	tests := []struct {
		name string
		mu   *Mutex
		want string
	}{
		{"nil strategy", New(db, WithKeyspace(nil)).Mutex("x"), "nil keyspace.Strategy"},
		{"negative timeout", New(db, WithKeepAlive(time.Second, -1)).Mutex("x"), "negative timeout"},
		{"nil option", New(db, nil).Mutex("x"), "nil Option"},
		{"panicking strategy", New(db, WithKeyspace(panicky)).Mutex("x"), "panicked: bad strategy"},
		{"invalid key from strategy", New(db, WithKeyspace(empty)).Mutex("x"), "no valid key"},
		{"zero key", New(db).MutexKey(keyspace.Key{}), "zero Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, err := range []error{
				tt.mu.Lock(context.Background()),
				tt.mu.Unlock(context.Background()),
				tt.mu.WithLockShared(context.Background(), func(context.Context) error { return nil }),
			} {
				require.ErrorContains(t, err, tt.want)
			}
			_, err := tt.mu.TryLock(context.Background())
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestMockPoolExhaustedHonoursContext(t *testing.T) {
	l, mock := newMock(t)
	l.db.SetMaxOpenConns(2) // one is newMock's
	expectLock(mock, 7)
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(true))
	a, b := l.MutexKey(keyspace.Int64(42)), l.MutexKey(keyspace.Int64(42))
	require.NoError(t, a.Lock(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, b.Lock(ctx), context.DeadlineExceeded, "waiting for a pooled connection is bounded by ctx")
	require.NoError(t, a.Unlock(t.Context()))
}

func TestMockSharedSessionRefused(t *testing.T) {
	l, mock := newMock(t)
	// The session already carries another client's marker: no lock is
	// tried, and sqllock must refuse and discard.
	mock.ExpectQuery(verifySQL).WillReturnRows(verified(7, sqltext.FlagForeign))
	mock.ExpectClose()
	err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
	require.ErrorIs(t, err, ErrSharedSession)
	assert.Contains(t, err.Error(), "session 7 belongs to another client connection")
}

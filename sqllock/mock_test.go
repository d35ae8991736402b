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
	return New(db, append([]Option{WithKeepAlive(0, 0)}, opts...)...), mock
}

// The SQL for key 42; TestBuildQueries pins its exact text.
var (
	q42       = buildQueries(keyspace.Int64(42), false, false)
	lockSQL   = sqlText(q42.lock)
	unlockSQL = q42.unlock
)

// tokenRE matches an owner token written into SQL text.
var tokenRE = regexp.MustCompile(`'[0-9a-f]{16}-[0-9a-z]+'`)

// sqlText is s's text as the mock sees it: with literals, its owner token
// reads 'TOKEN' (see tokenBlindEqual).
func sqlText(s *lockStmt) string {
	if s.parts == nil {
		return s.text
	}
	return strings.Join(s.parts, "TOKEN")
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

// pidRow is a lock statement's answer: granted, by backend pid.
func pidRow(pid int64, standby bool) *sqlmock.Rows {
	answer := pid<<lockAnswerShift | flagGranted
	if standby {
		answer |= flagStandby
	}
	return sqlmock.NewRows([]string{"answer"}).AddRow(answer)
}

func tryRow(granted bool, pid int64) *sqlmock.Rows {
	answer := pid << lockAnswerShift
	if granted {
		answer |= flagGranted
	}
	return sqlmock.NewRows([]string{"answer"}).AddRow(answer)
}

// unlocked is an unlock statement's answer: one row if it released the
// lock, none if the session did not hold it.
func unlocked(released bool) driver.Result {
	if released {
		return sqlmock.NewResult(0, 1)
	}
	return sqlmock.NewResult(0, 0)
}

func TestMockLockUnlockSQL(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(lockSQL).WithoutArgs().WillReturnRows(pidRow(7, false))
	mock.ExpectExec(unlockSQL).WithoutArgs().WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
}

func TestMockSharedAndPairSQL(t *testing.T) {
	l, mock := newMock(t)
	q := buildQueries(keyspace.Pair(1, -2), false, false)
	mock.ExpectQuery(sqlText(q.tryShared)).WillReturnRows(tryRow(true, 7))
	mock.ExpectExec(q.unlockShared).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(1, -2))
	ok, err := mu.TryLockShared(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockPlaceholderSQL(t *testing.T) {
	l, mock := newMock(t, withPlaceholders(true))
	q := buildQueries(keyspace.Pair(3, 4), true, false)
	mock.ExpectQuery(sqlText(q.lockShared)).WithArgs(int64(3), int64(4), ownerTokenArg{}).WillReturnRows(pidRow(7, false))
	mock.ExpectExec(q.unlockShared).WithArgs(int64(3), int64(4)).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Pair(3, 4))
	require.NoError(t, mu.LockShared(t.Context()))
	require.NoError(t, mu.UnlockShared(t.Context()))
}

func TestMockTryLockContended(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(sqlText(q42.try)).WillReturnRows(tryRow(false, 7))
	ok, err := l.MutexKey(keyspace.Int64(42)).TryLock(t.Context())
	require.NoError(t, err)
	assert.False(t, ok, "contention is not an error")
}

func TestMockDriverErrorDiscardsConnection(t *testing.T) {
	l, mock := newMock(t)
	boom := errors.New("connection reset")
	mock.ExpectQuery(lockSQL).WillReturnError(boom)
	mock.ExpectClose() // the connection is discarded, not pooled
	mu := l.MutexKey(keyspace.Int64(42))
	err := mu.Lock(t.Context())
	require.ErrorIs(t, err, boom)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "lock", e.Op)
	assert.Equal(t, keyspace.Int64(42), e.Key)
	assert.Equal(t, `sqllock: lock int64(42): connection reset`, err.Error())
}

func TestMockUnlockFalseIsLoss(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(lockSQL).WillReturnRows(pidRow(7, false))
	mock.ExpectExec(unlockSQL).WillReturnResult(unlocked(false))
	mock.ExpectClose()
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	err := mu.Unlock(t.Context())
	require.ErrorIs(t, err, ErrLockLost)
	require.NotErrorIs(t, err, ErrNotHeld, "a lost lock is not the same as one never held")
	assert.Contains(t, err.Error(), "backend 7 took it")
}

func TestMockUnlockErrorIsLoss(t *testing.T) {
	l, mock := newMock(t)
	mock.ExpectQuery(lockSQL).WillReturnRows(pidRow(7, false))
	mock.ExpectExec(unlockSQL).WillReturnError(driver.ErrBadConn)
	mock.ExpectClose()
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.ErrorIs(t, mu.Unlock(t.Context()), ErrLockLost)
}

func TestMockStandbyRefused(t *testing.T) {
	l, mock := newMock(t)
	// The statement takes nothing in recovery, so the connection is clean
	// and goes back to the pool.
	mock.ExpectQuery(lockSQL).WillReturnRows(sqlmock.NewRows([]string{"answer"}).AddRow(int64(7<<lockAnswerShift | flagStandby)))
	require.ErrorIs(t, l.MutexKey(keyspace.Int64(42)).Lock(t.Context()), ErrStandby)

	l, mock = newMock(t, WithAllowStandby(true))
	q := buildQueries(keyspace.Int64(42), false, true)
	assert.NotContains(t, sqlText(q.lock), "pg_is_in_recovery", "allowed standbys keep their locks")
	mock.ExpectQuery(sqlText(q.lock)).WillReturnRows(pidRow(7, false)) // the statement does not even ask
	mock.ExpectExec(q.unlock).WillReturnResult(unlocked(true))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	require.NoError(t, mu.Unlock(t.Context()))
}

func TestMockKeepAliveSeesOtherBackend(t *testing.T) {
	l, mock := newMock(t, WithKeepAlive(time.Millisecond, time.Second))
	mock.ExpectQuery(lockSQL).WillReturnRows(pidRow(7, false))
	mock.ExpectQuery(probeSQL).WillReturnRows(sqlmock.NewRows([]string{"pid"}).AddRow(8))
	mock.ExpectClose()
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
	mock.ExpectQuery(lockSQL).WillReturnRows(pidRow(7, false))
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
	l.db.SetMaxOpenConns(1)
	mock.ExpectQuery(lockSQL).WillReturnRows(pidRow(7, false))
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
	// The session already carries another client's marker: the statement
	// took nothing, and sqllock must refuse and discard.
	mock.ExpectQuery(lockSQL).WillReturnRows(
		sqlmock.NewRows([]string{"answer"}).AddRow(int64(7<<lockAnswerShift | flagShared)))
	mock.ExpectClose()
	err := l.MutexKey(keyspace.Int64(42)).Lock(t.Context())
	require.ErrorIs(t, err, ErrSharedSession)
	assert.Contains(t, err.Error(), "session 7 belongs to another client connection")
}

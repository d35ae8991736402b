package sqllock

import (
	"context"
	"database/sql/driver"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// The fenced statements take the lock first and evaluate the token only in
// the branch a grant takes, keep the session guard, and leave shared locks
// and unlocks as they are.
func TestFencedQueries(t *testing.T) {
	plain := buildQueries(keyspace.Pair(1, 2), true)
	q := buildQueries(keyspace.Pair(1, 2), true)
	q.fence()
	lock := strings.Join(q.lock.guarded, "77")
	assert.Equal(t, "SELECT CASE WHEN pg_advisory_lock($1,$2) IS NOT NULL THEN "+fencedToken+" END WHERE pg_backend_pid() = 77", lock)
	try := strings.Join(q.try.guarded, "77")
	assert.Equal(t, "SELECT CASE WHEN pg_try_advisory_lock($1,$2) THEN "+fencedToken+" ELSE 0 END WHERE pg_backend_pid() = 77", try)
	assert.True(t, q.lock.fenced && q.try.fenced)
	assert.Equal(t, kindLock, q.lock.kind)
	assert.Equal(t, kindTry, q.try.kind)
	assert.Equal(t, plain.lockShared.guarded, q.lockShared.guarded)
	assert.Equal(t, plain.tryShared.guarded, q.tryShared.guarded)
	assert.Equal(t, plain.unlock, q.unlock)
	assert.False(t, q.lockShared.fenced || q.tryShared.fenced)
	assert.Less(t, strings.Index(fencedToken, "pg_logical_emit_message"), strings.Index(fencedToken, "pg_current_xact_id"))
}

func TestFencedAnswer(t *testing.T) {
	for _, v := range []any{int64(42), []byte("42"), "42"} {
		tok, err := fencedAnswer(v)
		require.NoError(t, err, "%T", v)
		assert.Equal(t, uint64(42), tok)
	}
	tok, err := fencedAnswer(int64(0))
	require.NoError(t, err)
	assert.Zero(t, tok, "a try that found the lock taken")
	for _, v := range []any{nil, true, int64(-1), "x"} {
		_, err := fencedAnswer(v)
		assert.ErrorContains(t, err, "not a token", "%T %v", v, v)
	}
}

type undefinedFunctionErr struct{}

func (undefinedFunctionErr) Error() string {
	return "ERROR: function pg_current_xact_id() does not exist"
}
func (undefinedFunctionErr) SQLState() string { return "42883" }

// A server older than PostgreSQL 13 refuses the fenced statement: the error
// says what fencing needs, the session is sound and goes back to the pool.
func TestFakeFencingOnOldServer(t *testing.T) {
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if strings.Contains(q, "pg_current_xact_id") {
			return nil, undefinedFunctionErr{}
		}
		return answerAs(q, 7), nil
	}, WithFencing(), WithKeepAlive(0, 0))
	m := l.MutexKey(keyspace.Int64(42))
	err := m.Lock(context.Background())
	require.ErrorIs(t, err, ErrFencingUnsupported)
	assert.ErrorContains(t, err, "PostgreSQL 13")
	assert.ErrorContains(t, err, "int64(42)", "the error names the lock")
	assert.Equal(t, int32(0), c.closed.Load(), "the refused statement took nothing")
	// Shared locks need no token and work.
	require.NoError(t, m.LockShared(context.Background()))
	require.NoError(t, m.UnlockShared(context.Background()))
}

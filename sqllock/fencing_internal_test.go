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
	assert.Equal(t, "SELECT CASE WHEN pg_try_advisory_lock($1,$2) THEN "+fencedToken+" ELSE '0' END WHERE pg_backend_pid() = 77", try)
	assert.True(t, q.lock.fenced && q.try.fenced)
	assert.Equal(t, kindLock, q.lock.kind)
	assert.Equal(t, kindTry, q.try.kind)
	assert.Equal(t, plain.lockShared.guarded, q.lockShared.guarded)
	assert.Equal(t, plain.tryShared.guarded, q.tryShared.guarded)
	assert.Equal(t, plain.unlock, q.unlock)
	assert.False(t, q.lockShared.fenced || q.tryShared.fenced)
	assert.Less(t, strings.Index(fencedToken, "pg_logical_emit_message"), strings.Index(fencedToken, "pg_current_xact_id"))
	assert.Less(t, strings.Index(fencedToken, "pg_logical_emit_message"), strings.Index(fencedToken, "pg_walfile_name"))
}

// The answer is the timeline, in hex as in WAL file names, and the
// transaction id; anything else is not a token.
func TestFencedAnswer(t *testing.T) {
	for _, v := range []any{"00000001 724", []byte("00000001 724")} {
		tok, err := fencedAnswer(v)
		require.NoError(t, err, "%T", v)
		assert.Equal(t, uint64(1<<47|724), tok)
	}
	tok, err := fencedAnswer("0000001A 4294967296")
	require.NoError(t, err)
	assert.Equal(t, uint64(26<<47|1<<32), tok, "timeline 26, epoch 1")
	tok, err = fencedAnswer("0")
	require.NoError(t, err)
	assert.Zero(t, tok, "a try that found the lock taken")
	for _, v := range []any{nil, true, int64(42), "42", "", "1 724", "00000001", "00000001 ", "0000000G 724",
		"00000000 724", "00000001 -1", "00000001 0x10", "100000000 724", "00000001  724"} {
		_, err := fencedAnswer(v)
		assert.ErrorContains(t, err, "not a token", "%T %v", v, v)
	}
}

// Every token of a timeline is above every token of the timelines before
// it, and above every token handed out before timelines were in it (a
// bare transaction id); a timeline or id the layout cannot hold is an
// error, never a token that wraps.
func TestFencingTokenLayout(t *testing.T) {
	const maxInt64 = 1<<63 - 1
	top, err := fencingToken(maxTokenTimeline, maxTokenXid)
	require.NoError(t, err)
	assert.Equal(t, uint64(maxInt64), top, "the largest token is the largest int64")
	assert.Equal(t, uint64(65535), uint64(maxTokenTimeline))
	for tl := uint64(1); tl < maxTokenTimeline; tl *= 3 {
		last, err := fencingToken(tl, maxTokenXid)
		require.NoError(t, err)
		first, err := fencingToken(tl+1, 0)
		require.NoError(t, err)
		assert.Greater(t, first, last, "timeline %d after %d", tl+1, tl)
		a, _ := fencingToken(tl, 724)
		b, _ := fencingToken(tl, 725)
		assert.Greater(t, b, a, "ids grow within timeline %d", tl)
	}
	first, err := fencingToken(1, 3)
	require.NoError(t, err)
	assert.Greater(t, first, uint64(maxTokenXid), "above every bare transaction id below 2^47")

	for _, c := range []struct{ timeline, xid uint64 }{
		{maxTokenTimeline + 1, 724},
		{1, maxTokenXid + 1},
		{1, 1<<64 - 1},
		{1<<32 - 1, 724},
	} {
		tok, err := fencingToken(c.timeline, c.xid)
		assert.ErrorContains(t, err, "no fencing token", "timeline %d, xid %d", c.timeline, c.xid)
		assert.Zero(t, tok)
	}
	_, err = fencedAnswer("00010000 724")
	assert.ErrorContains(t, err, "no fencing token for timeline 65536")
	_, err = fencedAnswer("00000001 140737488355328")
	assert.ErrorContains(t, err, "transaction id 140737488355328")
}

// A grant whose token the layout cannot hold fails, and its session is
// ended, which releases the lock: no holder goes on without a token.
func TestFakeFencingTokenOutOfRange(t *testing.T) {
	for answer, ok := range map[string]bool{"00000002 724": true, "00010000 724": false, "00000001 140737488355328": false} {
		l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
			if strings.Contains(q, "pg_current_xact_id") && strings.HasSuffix(q, " = 7") {
				return []driver.Value{answer}, nil
			}
			return answerAs(q, 7), nil
		}, WithFencing(), WithKeepAlive(0, 0))
		m := l.MutexKey(keyspace.Int64(42))
		err := m.Lock(context.Background())
		if ok {
			require.NoError(t, err, answer)
			tok, held := m.Token()
			assert.True(t, held)
			assert.Equal(t, uint64(2<<47|724), tok)
			require.NoError(t, m.Unlock(context.Background()))
			continue
		}
		require.ErrorContains(t, err, "no fencing token", answer)
		assert.ErrorContains(t, err, "int64(42)", "the error names the lock")
		_, held := m.Token()
		assert.False(t, held)
		assert.Equal(t, int32(1), c.closed.Load(), "%s: the session is ended", answer)
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

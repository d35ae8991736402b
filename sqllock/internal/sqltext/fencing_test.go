package sqltext

import (
	"strings"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fenced statements take the lock first and evaluate the token only in
// the branch a grant takes, keep the session guard, and leave shared locks
// and unlocks as they are.
func TestFencedQueries(t *testing.T) {
	plain := Build(keyspace.Pair(1, 2), true)
	q := Build(keyspace.Pair(1, 2), true)
	q.Fence()
	lock := strings.Join(q.Lock.Parts, "77")
	assert.Equal(t, "SELECT CASE WHEN pg_advisory_lock($1,$2) IS NOT NULL THEN "+FencedToken+" END WHERE pg_backend_pid() = 77", lock)
	try := strings.Join(q.Try.Parts, "77")
	assert.Equal(t, "SELECT CASE WHEN pg_try_advisory_lock($1,$2) THEN "+FencedToken+" ELSE '0' END WHERE pg_backend_pid() = 77", try)
	assert.True(t, q.Lock.Fenced && q.Try.Fenced)
	assert.Equal(t, KindLock, q.Lock.Kind)
	assert.Equal(t, KindTry, q.Try.Kind)
	assert.Equal(t, plain.LockShared.Parts, q.LockShared.Parts)
	assert.Equal(t, plain.TryShared.Parts, q.TryShared.Parts)
	assert.Equal(t, plain.Unlock, q.Unlock)
	assert.False(t, q.LockShared.Fenced || q.TryShared.Fenced)
	assert.Less(t, strings.Index(FencedToken, "pg_logical_emit_message"), strings.Index(FencedToken, "pg_current_xact_id"))
	assert.Less(t, strings.Index(FencedToken, "pg_logical_emit_message"), strings.Index(FencedToken, "pg_walfile_name"))
}

// The answer is the timeline, in hex as in WAL file names, and the
// transaction id; anything else is not a token.
func TestFencedAnswer(t *testing.T) {
	for _, v := range []any{"00000001 724", []byte("00000001 724")} {
		tok, err := FencedAnswer(v)
		require.NoError(t, err, "%T", v)
		assert.Equal(t, uint64(1<<47|724), tok)
	}
	tok, err := FencedAnswer("0000001A 4294967296")
	require.NoError(t, err)
	assert.Equal(t, uint64(26<<47|1<<32), tok, "timeline 26, epoch 1")
	tok, err = FencedAnswer("0")
	require.NoError(t, err)
	assert.Zero(t, tok, "a try that found the lock taken")
	for _, v := range []any{nil, true, int64(42), "42", "", "1 724", "00000001", "00000001 ", "0000000G 724",
		"00000000 724", "00000001 -1", "00000001 0x10", "100000000 724", "00000001  724"} {
		_, err := FencedAnswer(v)
		assert.ErrorContains(t, err, "not a token", "%T %v", v, v)
	}
}

// Every token of a timeline is above every token of the timelines before
// it, and above every token handed out before timelines were in it (a
// bare transaction id); a timeline or id the layout cannot hold is an
// error, never a token that wraps.
func TestFencingTokenLayout(t *testing.T) {
	const maxInt64 = 1<<63 - 1
	top, err := FencingToken(MaxTokenTimeline, MaxTokenXid)
	require.NoError(t, err)
	assert.Equal(t, uint64(maxInt64), top, "the largest token is the largest int64")
	assert.Equal(t, uint64(65535), uint64(MaxTokenTimeline))
	for tl := uint64(1); tl < MaxTokenTimeline; tl *= 3 {
		last, err := FencingToken(tl, MaxTokenXid)
		require.NoError(t, err)
		first, err := FencingToken(tl+1, 0)
		require.NoError(t, err)
		assert.Greater(t, first, last, "timeline %d after %d", tl+1, tl)
		a, _ := FencingToken(tl, 724)
		b, _ := FencingToken(tl, 725)
		assert.Greater(t, b, a, "ids grow within timeline %d", tl)
	}
	first, err := FencingToken(1, 3)
	require.NoError(t, err)
	assert.Greater(t, first, uint64(MaxTokenXid), "above every bare transaction id below 2^47")

	for _, c := range []struct{ timeline, xid uint64 }{
		{MaxTokenTimeline + 1, 724},
		{1, MaxTokenXid + 1},
		{1, 1<<64 - 1},
		{1<<32 - 1, 724},
	} {
		tok, err := FencingToken(c.timeline, c.xid)
		assert.ErrorContains(t, err, "no fencing token", "timeline %d, xid %d", c.timeline, c.xid)
		assert.Zero(t, tok)
	}
	_, err = FencedAnswer("00010000 724")
	assert.ErrorContains(t, err, "no fencing token for timeline 65536")
	_, err = FencedAnswer("00000001 140737488355328")
	assert.ErrorContains(t, err, "transaction id 140737488355328")
}

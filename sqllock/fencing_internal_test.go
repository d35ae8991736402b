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
		assert.Equal(t, int32(1), c.Closed.Load(), "%s: the session is ended", answer)
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
	assert.Equal(t, int32(0), c.Closed.Load(), "the refused statement took nothing")
	// Shared locks need no token and work.
	require.NoError(t, m.LockShared(context.Background()))
	require.NoError(t, m.UnlockShared(context.Background()))
}

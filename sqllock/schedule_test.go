package sqllock

import (
	"context"
	"database/sql/driver"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// Unlock with a context that never ends is still bounded, by the keep-alive
// timeout, even with the keep-alive off: past it, the connection is
// discarded, which ends the session and the lock.
func TestFakeUnlockBackgroundIsBounded(t *testing.T) {
	const timeout = 50 * time.Millisecond
	l, c := newFake(t, func(ctx context.Context, q string) ([]driver.Value, error) {
		if q == sqltext.ProbeSQL {
			return []driver.Value{int64(7)}, nil
		}
		if strings.HasPrefix(q, "SELECT 1 WHERE pg_advisory_unlock(") {
			<-ctx.Done() // a silent network, under a driver that honours its context
			return nil, ctx.Err()
		}
		return answerAs(q, 7), nil
	}, WithKeepAlive(0, timeout))
	mu := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, mu.Lock(t.Context()))
	start := time.Now()
	require.NoError(t, mu.Unlock(context.Background()), "the release is assured by discarding the connection")
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, timeout)
	assert.Less(t, elapsed, 20*timeout)
	assert.Equal(t, int32(1), c.Closed.Load(), "the connection is discarded")
	assert.ErrorIs(t, mu.Unlock(context.Background()), ErrNotHeld)
}

package sqllock

import (
	"context"
	"database/sql/driver"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// The scheduler runs each entry once, at or after its time, in time order
// for entries far enough apart; a cancelled entry never runs; a
// rescheduled one runs at its new time only.
func TestScheduler(t *testing.T) {
	s := scheduler{base: time.Now()}
	var mu sync.Mutex
	var ran []string
	done := make(chan struct{}, 8)
	entry := func(name string) *session {
		h := &session{slot: -1}
		h.releaseCancel = func() {
			mu.Lock()
			ran = append(ran, name)
			mu.Unlock()
			done <- struct{}{}
		}
		return h
	}
	start := time.Now()
	at := s.now()
	a, b, c, d := entry("a"), entry("b"), entry("c"), entry("d")
	s.schedule(c, at+60*time.Millisecond, dueRelease)
	s.schedule(a, at+20*time.Millisecond, dueRelease)
	s.after(b, 40*time.Millisecond, dueRelease)
	s.schedule(d, at+30*time.Millisecond, dueRelease)
	s.cancel(b)
	s.schedule(d, at+80*time.Millisecond, dueRelease) // moved, not added twice
	for range 3 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("an entry did not run")
		}
	}
	assert.GreaterOrEqual(t, time.Since(start), 80*time.Millisecond)
	select {
	case <-done:
		t.Fatal("an entry ran twice, or a cancelled one ran")
	case <-time.After(50 * time.Millisecond):
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"a", "c", "d"}, ran)
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Empty(t, s.holds)
}

// Unlock with a context that never ends is still bounded, by the keep-alive
// timeout, even with the keep-alive off: past it, the connection is
// discarded, which ends the session and the lock.
func TestFakeUnlockBackgroundIsBounded(t *testing.T) {
	const timeout = 50 * time.Millisecond
	l, c := newFake(t, func(ctx context.Context, q string) ([]driver.Value, error) {
		if q == probeSQL {
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
	assert.Equal(t, int32(1), c.closed.Load(), "the connection is discarded")
	assert.ErrorIs(t, mu.Unlock(context.Background()), ErrNotHeld)
}

package sqllock_test

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

type recorder struct {
	mu     sync.Mutex
	events []sqllock.Event
}

func (r *recorder) Observe(e sqllock.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) kinds() []sqllock.EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []sqllock.EventKind
	for _, e := range r.events {
		ks = append(ks, e.Kind)
	}
	return ks
}

func TestObserver(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		rec := &recorder{}
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		l := sqllock.New(db, fastLoss, sqllock.WithObserver(rec), sqllock.WithLogger(logger))
		a, b := l.Mutex(t.Name()), l.Mutex(t.Name())

		require.NoError(t, a.Lock(t.Context()))
		ok, err := b.TryLock(t.Context())
		require.NoError(t, err)
		require.False(t, ok)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		require.Error(t, b.Lock(ctx))
		cancel()
		require.NoError(t, a.Unlock(t.Context()))

		require.NoError(t, a.Lock(t.Context()))
		terminate(t, db, backendOf(t, db, a.Key()))
		<-a.Done()
		require.ErrorIs(t, a.Unlock(t.Context()), sqllock.ErrLockLost)

		assert.Equal(t, []sqllock.EventKind{
			sqllock.EventAcquired, sqllock.EventContended, sqllock.EventFailed, sqllock.EventReleased,
			sqllock.EventAcquired, sqllock.EventLost,
		}, rec.kinds(), "a loss is reported once, by whoever sees it first")
		rec.mu.Lock()
		for _, e := range rec.events {
			assert.Equal(t, t.Name(), e.Name)
			assert.Equal(t, a.Key(), e.Key)
		}
		assert.Positive(t, rec.events[3].Held)
		assert.ErrorIs(t, rec.events[5].Err, sqllock.ErrLockLost)
		rec.mu.Unlock()
		assert.Contains(t, logs.String(), "sqllock: lock acquired")
		assert.Contains(t, logs.String(), "level=WARN msg=\"sqllock: lock lost\"")
	})
}

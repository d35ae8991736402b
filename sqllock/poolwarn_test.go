package sqllock_test

import (
	"bytes"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A lock that fills the pool says so, once: any other query on the pool
// would wait for a connection until its context ends.
func TestPoolFilledByLocksWarnsOnce(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		db.SetMaxOpenConns(1)
		mu := sqllock.New(db, sqllock.WithLogger(logger)).Mutex(t.Name())
		for range 3 {
			require.NoError(t, mu.Lock(t.Context()))
			require.NoError(t, mu.Unlock(t.Context()))
		}
		out := buf.String()
		assert.Equal(t, 1, strings.Count(out, "held locks fill the connection pool"), "one warning per Locker: %s", out)
		assert.Contains(t, out, "max_open_conns=1")
		assert.Contains(t, out, t.Name(), "the warning names the lock")
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// With WithSessions too: a shared session that takes the pool's last
// connection says so, once.
func TestPoolFilledByMultiplexedSessionWarns(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		db.SetMaxOpenConns(1)
		l := sqllock.New(db, sqllock.WithSessions(1), sqllock.WithLogger(logger))
		a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
		require.NoError(t, a.Lock(t.Context()))
		require.NoError(t, b.Lock(t.Context()))
		require.NoError(t, b.Unlock(t.Context()))
		require.NoError(t, a.Unlock(t.Context()))
		out := buf.String()
		assert.Equal(t, 1, strings.Count(out, "held locks fill the connection pool"), "one warning per Locker: %s", out)
		assert.Contains(t, out, "max_open_conns=1")
	})
}

package sqllock_test

import (
	"context"
	"database/sql"
	"flag"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(holderEnv); spec != "" {
		runHolder(spec)
	}
	_ = pgtest.ExportEnv() // for the examples; tests report a missing server themselves
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		// Benchmarks run on pools of one connection, whose first lock
		// warns that the pool is full (see WithLogger): keep their output
		// to results.
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	// No goroutine outlives its lock: keep-alives and abandoned probes end.
	pgtest.Main(m, func() error { return goleak.Find() })
}

// setups are the driver configurations every live test runs on.
var setups = []struct {
	name string
	open func(t *testing.T) *sql.DB
}{
	{"pq", func(t *testing.T) *sql.DB { return pgtest.DB(t, "postgres") }},
	{"pgx", func(t *testing.T) *sql.DB { return pgtest.DB(t, "pgx") }},
	{"pgx-cancelrequest", func(t *testing.T) *sql.DB { return pgtest.DB(t, pgtest.PgxCancelRequest) }},
	{"pgx-poolbridge", func(t *testing.T) *sql.DB { return pgtest.DB(t, pgtest.PgxPoolBridge) }},
}

// eachDriver runs f as a parallel subtest on every driver setup.
func eachDriver(t *testing.T, f func(t *testing.T, db *sql.DB)) {
	t.Helper()
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			f(t, s.open(t))
		})
	}
}

// fastLoss makes losses show within a few tens of milliseconds.
var fastLoss = sqllock.WithKeepAlive(20*time.Millisecond, 2*time.Second)

// lockRows counts the sessions holding (granted) or waiting for k.
func lockRows(t testing.TB, db *sql.DB, k keyspace.Key) (held, waiting int) {
	t.Helper()
	c, o, s := k.LockTag()
	err := db.QueryRowContext(t.Context(), `
		SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted)
		FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = $3`,
		int64(c), int64(o), int64(s)).Scan(&held, &waiting)
	require.NoError(t, err)
	return held, waiting
}

// waitRows waits, by polling pg_locks, until k has the given numbers of
// holders and waiters. The test's deadline bounds it.
func waitRows(t *testing.T, db *sql.DB, k keyspace.Key, held, waiting int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for {
		h, w := lockRows(t, db, k)
		if h == held && w == waiting {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pg_locks for %v: got %d held, %d waiting; want %d, %d", k, h, w, held, waiting)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// backendOf returns the pid of a backend holding k.
func backendOf(t *testing.T, db *sql.DB, k keyspace.Key) int64 {
	t.Helper()
	c, o, s := k.LockTag()
	var pid int64
	err := db.QueryRowContext(t.Context(), `
		SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1 AND objid = $2 AND objsubid = $3 LIMIT 1`, int64(c), int64(o), int64(s)).Scan(&pid)
	require.NoError(t, err)
	return pid
}

func terminate(t *testing.T, db *sql.DB, pid int64) {
	t.Helper()
	var ok bool
	require.NoError(t, db.QueryRowContext(t.Context(), "SELECT pg_terminate_backend($1)", pid).Scan(&ok))
	require.True(t, ok, "pg_terminate_backend(%d)", pid)
}

func inUse(db *sql.DB) int { return db.Stats().InUse }

package sqllock_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
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
			t.Fatalf("pg_locks for %v: got %d held, %d waiting; want %d, %d\n%s", k, h, w, held, waiting, lockSessions(t, db, k))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// lockSessions describes the sessions that hold or wait for k, for a
// failing test's message: which backend, in what state, running what.
func lockSessions(t *testing.T, db *sql.DB, k keyspace.Key) string {
	c, o, s := k.LockTag()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 5*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `
		SELECT l.pid, l.granted, l.mode, coalesce(a.state, '?'), coalesce(now() - a.state_change, '0'),
			coalesce(a.application_name, ''), coalesce(left(a.query, 120), '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = $3 ORDER BY l.granted DESC, l.pid`,
		int64(c), int64(o), int64(s))
	if err != nil {
		return fmt.Sprintf("(sessions unknown: %v)", err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var pid int64
		var granted bool
		var mode, state, since, app, query string
		if err := rows.Scan(&pid, &granted, &mode, &state, &since, &app, &query); err != nil {
			return fmt.Sprintf("(sessions unknown: %v)", err)
		}
		fmt.Fprintf(&b, "backend %d granted=%t %s, %s for %s, application %q, query %q\n", pid, granted, mode, state, since, app, query)
	}
	return b.String()
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

// noConnsInUse waits until db has no connection in use: every pinned
// connection has been returned or discarded. A call that gave up on a
// statement its driver had not returned from (lib/pq while the server
// answers its cancel request, under load) returns once the server shows
// the session ended, and the connection follows when the driver returns.
func noConnsInUse(t *testing.T, db *sql.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for inUse(db) != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("connections in use: got %d, want 0", inUse(db))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

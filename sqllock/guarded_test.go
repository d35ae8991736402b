package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An answer that makes no sense fails the call, naming it, and the
// connection is discarded: a session check's (an integer), which took
// nothing, and a guarded lock statement's (a boolean), which leaves the
// lock state unknown, so the session is also looked for on the server.
func TestFakeOddLockAnswerDiscards(t *testing.T) {
	for _, tc := range []struct {
		answer driver.Value
		want   string
	}{
		{nil, "answered <nil> <nil>, not an integer"},
		{true, "answered bool true, not an integer"},
		{[]byte("x"), "not an integer"},
	} {
		l, c := newFake(t, func(context.Context, string) ([]driver.Value, error) {
			return []driver.Value{tc.answer}, nil
		}, sqllock.WithKeepAlive(0, 0))
		mu := l.MutexKey(keyspace.Int64(42))
		ok, err := mu.TryLock(t.Context())
		assert.False(t, ok)
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorContains(t, err, "the session is discarded")
		assert.Equal(t, int32(1), c.Closed.Load(), "answer %v: the connection is discarded", tc.answer)
	}
	for _, tc := range []struct {
		answer driver.Value
		want   string
	}{
		{nil, "answered <nil> <nil>, not a boolean"},
		{int64(1), "answered int64 1, not a boolean"},
	} {
		l, c, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
			if strings.Contains(q, " WHERE pg_backend_pid() = ") {
				return []driver.Value{tc.answer}, nil
			}
			return answerAs(q, 7), nil
		})
		mu := l.MutexKey(keyspace.Int64(42))
		err := mu.Lock(t.Context())
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorContains(t, err, "so it is discarded")
		assert.Equal(t, int32(1), c.Closed.Load(), "answer %v: the connection is discarded", tc.answer)
		qs := sent()
		assert.True(t, strings.HasPrefix(qs[len(qs)-1], "SELECT a.state, EXISTS"), "the session is looked for: %q", qs)
	}
}

// The first lock on a connection verifies its session, and every lock
// runs the guarded form, which names that session's pid. When the
// connection turns out to lead to another session, the guarded form takes
// nothing, and the new session is verified and the lock taken there, on
// the same connection.
func TestFakeGuardedForm(t *testing.T) {
	var pid atomic.Int64
	pid.Store(7)
	l, c, sentFn := newRecordingFake(t, func(q string) ([]driver.Value, error) {
		return answerAs(q, pid.Load()), nil
	})
	m := l.MutexKey(keyspace.Int64(42))
	cycle := func() {
		t.Helper()
		require.NoError(t, m.Lock(t.Context()))
		require.NoError(t, m.Unlock(t.Context()))
	}
	verify := func(q string) bool { return strings.HasPrefix(q, "SELECT pg_backend_pid()::int8*32 + CASE") }
	cycle()
	cycle()
	pid.Store(8) // a pooler moved the connection to another session
	cycle()
	cycle()
	ok, err := m.TryLock(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, m.Unlock(t.Context()))
	sent := sentFn()
	require.Len(t, sent, 13)
	assert.True(t, verify(sent[0]), "first lock: %s", sent[0])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[1])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[3], "the second lock needs no check")
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 7", sent[5], "the guarded form finds another session")
	assert.True(t, verify(sent[6]), "then the session check runs: %s", sent[6])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 8", sent[7])
	assert.Equal(t, "SELECT pg_advisory_lock(42) IS NOT NULL WHERE pg_backend_pid() = 8", sent[9])
	assert.Equal(t, "SELECT pg_try_advisory_lock(42) WHERE pg_backend_pid() = 8", sent[11], "a try uses the session the lock verified")
	assert.Equal(t, int32(0), c.Closed.Load(), "no connection was discarded")
	// Another Mutex of the Locker uses what the first verified.
	ok, err = l.MutexKey(keyspace.Int64(43)).TryLock(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	sent = sentFn()
	assert.Equal(t, "SELECT pg_try_advisory_lock(43) WHERE pg_backend_pid() = 8", sent[len(sent)-1])
}

// A guarded try that finds the lock taken is not an error, and leaves the
// connection in the pool.
func TestFakeGuardedTryContended(t *testing.T) {
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if strings.HasPrefix(q, "SELECT pg_try_advisory_lock(") {
			return []driver.Value{false}, nil
		}
		return answerAs(q, 7), nil
	}, sqllock.WithKeepAlive(0, 0))
	m := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, m.Lock(t.Context()))
	require.NoError(t, m.Unlock(t.Context()))
	ok, err := m.TryLock(t.Context())
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Equal(t, int32(0), c.Closed.Load())
	assert.Equal(t, 0, sqllock.DBOf(l).Stats().InUse)
}

// A connection moved to a session that the check refuses leaves no
// guarded form behind: the next lock on it checks at once, in one round
// trip, rather than trying the stale guard first.
func TestFakeRefusedMoveForgetsGuard(t *testing.T) {
	var standby atomic.Bool
	l, _, sent := newRecordingFake(t, func(q string) ([]driver.Value, error) {
		if standby.Load() {
			if strings.Contains(q, " WHERE pg_backend_pid() = ") {
				return nil, nil // another session
			}
			return []driver.Value{int64(8<<sqltext.AnswerShift | sqltext.FlagStandby)}, nil
		}
		return answerAs(q, 7), nil
	})
	m := l.MutexKey(keyspace.Int64(42))
	require.NoError(t, m.Lock(t.Context()))
	require.NoError(t, m.Unlock(t.Context()))
	standby.Store(true)
	require.ErrorIs(t, m.Lock(t.Context()), sqllock.ErrStandby)
	n := len(sent())
	require.ErrorIs(t, m.Lock(t.Context()), sqllock.ErrStandby)
	require.Len(t, sent(), n+1, "one statement for the next lock")
	assert.True(t, strings.HasPrefix(sent()[n], "SELECT pg_backend_pid()::int8*32 + CASE"), "the session check: %s", sent()[n])
}

// The first lock on a connection verifies its session; every lock runs
// the guarded form, which names that session's backend, and the server
// shows that form as the session's last statement while the lock is held.
// Locks through a verified connection exclude as ever, in both modes.
func TestGuardedFormLive(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		db.SetMaxOpenConns(1) // every lock on one connection
		l := sqllock.New(db)
		mu, try := l.Mutex(t.Name()), l.Mutex(t.Name()+"/try")
		observer := pgtest.DB(t, "pgx")
		lastStatement := func(k keyspace.Key) (pid int64, query string) {
			pid = backendOf(t, observer, k)
			require.NoError(t, observer.QueryRowContext(t.Context(),
				"SELECT query FROM pg_stat_activity WHERE pid = $1", pid).Scan(&query))
			return pid, query
		}
		require.NoError(t, mu.Lock(t.Context()))
		pid, first := lastStatement(mu.Key())
		assert.True(t, strings.HasPrefix(first, "SELECT CASE WHEN pg_advisory_lock("), "guarded form: %s", first)
		require.NoError(t, mu.Unlock(t.Context()))

		require.NoError(t, mu.Lock(t.Context()))
		again, guarded := lastStatement(mu.Key())
		assert.Equal(t, pid, again, "one connection, one session")
		assert.True(t, strings.HasPrefix(guarded, "SELECT CASE WHEN pg_advisory_lock("), "guarded form: %s", guarded)
		assert.True(t, strings.HasSuffix(guarded, fmt.Sprintf("WHERE pg_backend_pid() = %d", pid)), "guarded form: %s", guarded)
		require.NoError(t, mu.Unlock(t.Context()))

		// A guarded try on the verified connection, against a holder on
		// another session, finds the lock taken.
		holder := sqllock.New(observer).Mutex(try.Name())
		require.NoError(t, holder.Lock(t.Context()))
		ok, err := try.TryLock(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a guarded try on a held key fails")
		require.NoError(t, holder.Unlock(t.Context()))
		ok, err = try.TryLockShared(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		_, shared := lastStatement(try.Key())
		assert.True(t, strings.HasPrefix(shared, fmt.Sprintf("SELECT CASE WHEN pg_try_advisory_lock_shared(%s) THEN ", keyArgs(db, try.Key()))), "guarded form: %s", shared)
		assert.True(t, strings.HasSuffix(shared, fmt.Sprintf("WHERE pg_backend_pid() = %d", pid)), "guarded form: %s", shared)
		require.NoError(t, try.UnlockShared(t.Context()))
		waitRows(t, observer, try.Key(), 0, 0)
	})
}

// keyArgs is how k appears in a lock statement: as parameters, on every
// driver (pgx caches its statements, and sqllock prepares them per
// connection on the others).
func keyArgs(_ *sql.DB, k keyspace.Key) string {
	if _, ok := k.Int64(); ok {
		return "$1"
	}
	return "$1,$2"
}

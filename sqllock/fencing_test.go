package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// fencingModes are the Locker modes fencing is proven in: a connection per
// lock, and locks sharing sessions.
var fencingModes = []struct {
	name string
	opts []sqllock.Option
}{
	{"conn", []sqllock.Option{sqllock.WithFencing()}},
	{"sessions", []sqllock.Option{sqllock.WithFencing(), sqllock.WithSessions(2)}},
}

// Every exclusive grant carries a token larger than every earlier one, for
// any key; shared locks and Lockers without WithFencing carry none.
func TestFencingTokens(t *testing.T) {
	t.Parallel()
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		for _, mode := range fencingModes {
			t.Run(mode.name, func(t *testing.T) {
				l := sqllock.New(db, mode.opts...)
				a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
				_, ok := a.Token()
				assert.False(t, ok, "no token before a lock")

				var last uint64
				next := func(what string, tok uint64, ok bool) {
					t.Helper()
					require.True(t, ok, "%s: no token", what)
					assert.Greater(t, tok, last, "%s: tokens must grow", what)
					last = tok
				}
				for range 3 {
					require.NoError(t, a.Lock(t.Context()))
					tok, ok := a.Token()
					next("Lock", tok, ok)
					require.NoError(t, b.Lock(t.Context()))
					tok, ok = b.Token()
					next("Lock of another key", tok, ok)
					require.NoError(t, a.Unlock(t.Context()))
					_, ok = a.Token()
					assert.False(t, ok, "no token after Unlock")
					require.NoError(t, b.Unlock(t.Context()))
				}

				got, err := a.TryLock(t.Context())
				require.NoError(t, err)
				require.True(t, got)
				tok, ok := a.Token()
				next("TryLock", tok, ok)
				other := l.Mutex(a.Name())
				got, err = other.TryLock(t.Context())
				require.NoError(t, err)
				assert.False(t, got, "a try on a held lock")
				_, ok = other.Token()
				assert.False(t, ok, "no token for a try that took nothing")
				require.NoError(t, a.Unlock(t.Context()))

				require.NoError(t, a.LockShared(t.Context()))
				_, ok = a.Token()
				assert.False(t, ok, "no token for a shared lock")
				require.NoError(t, a.UnlockShared(t.Context()))

				require.NoError(t, a.WithLock(t.Context(), func(ctx context.Context) error {
					tok, ok := sqllock.Token(ctx)
					next("WithLock", tok, ok)
					mt, mok := a.Token()
					assert.True(t, mok)
					assert.Equal(t, tok, mt, "Mutex.Token inside WithLock")
					return nil
				}))
				ran, err := a.TryWithLock(t.Context(), func(ctx context.Context) error {
					tok, ok := sqllock.Token(ctx)
					next("TryWithLock", tok, ok)
					return nil
				})
				require.NoError(t, err)
				require.True(t, ran)
				require.NoError(t, a.WithLockShared(t.Context(), func(ctx context.Context) error {
					_, ok := sqllock.Token(ctx)
					assert.False(t, ok, "no token in WithLockShared")
					return nil
				}))

				plain := sqllock.New(db).Mutex(t.Name() + "/plain")
				require.NoError(t, plain.WithLock(t.Context(), func(ctx context.Context) error {
					_, ok := sqllock.Token(ctx)
					assert.False(t, ok, "no token without WithFencing")
					_, ok = plain.Token()
					assert.False(t, ok, "no token without WithFencing")
					return nil
				}))
				waitRows(t, db, a.Key(), 0, 0)
			})
		}
	})
}

// A token is assigned after the grant: a waiter that queued long before
// the holder's grant still gets a larger token than the holder's.
func TestFencingTokenFollowsGrantOrder(t *testing.T) {
	t.Parallel()
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		l := sqllock.New(db, sqllock.WithFencing())
		first, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
		require.NoError(t, first.Lock(t.Context()))
		waited := make(chan error, 1)
		go func() { waited <- waiter.Lock(t.Context()) }()
		waitRows(t, db, first.Key(), 1, 1)
		// Grants of other keys meanwhile hand out larger ids.
		var between uint64
		for range 3 {
			m := l.Mutex(t.Name() + "/other")
			require.NoError(t, m.Lock(t.Context()))
			between, _ = m.Token()
			require.NoError(t, m.Unlock(t.Context()))
		}
		held, _ := first.Token()
		require.NoError(t, first.Unlock(t.Context()))
		require.NoError(t, <-waited)
		got, ok := waiter.Token()
		require.True(t, ok)
		assert.Greater(t, got, held, "the waiter's grant came after the holder's")
		assert.Greater(t, got, between, "the waiter's grant came after the other keys'")
		require.NoError(t, waiter.Unlock(t.Context()))
	})
}

// Concurrent holders of one key, on every driver at once: the tokens of
// successive grants grow in the order of the grants.
func TestFencingTokensUnderContention(t *testing.T) {
	t.Parallel()
	key := keyspace.SHA256Int64.Key(t.Name())
	var mu sync.Mutex // the lock is held by one goroutine at a time: mu is never contended
	var tokens []uint64
	var wg sync.WaitGroup
	for _, s := range setups {
		db := s.open(t)
		l := sqllock.New(db, sqllock.WithFencing())
		for range 3 {
			wg.Go(func() {
				m := l.MutexKey(key)
				for range 10 {
					err := m.WithLock(t.Context(), func(ctx context.Context) error {
						tok, ok := sqllock.Token(ctx)
						if !ok {
							t.Error("no token in WithLock")
						}
						mu.Lock()
						tokens = append(tokens, tok)
						mu.Unlock()
						return nil
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	require.Len(t, tokens, len(setups)*3*10)
	for i := 1; i < len(tokens); i++ {
		assert.Greater(t, tokens[i], tokens[i-1], "grant %d", i)
	}
}

// The token is durable before it is returned: a server that crashes right
// after a grant (pg_ctl stop -m immediate, WAL not flushed by anyone else)
// and restarts hands out larger tokens, even to a session whose
// synchronous_commit is off. A bare pg_current_xact_id() would be handed
// out again.
func TestFencingTokenSurvivesCrash(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	for _, driver := range []string{"postgres", "pgx"} {
		dsn := c.DSN() + "&options=-c%20synchronous_commit%3Doff"
		db, err := sql.Open(driver, dsn)
		require.NoError(t, err)
		defer db.Close()
		l := sqllock.New(db, sqllock.WithFencing())
		for round := range 3 {
			m := l.Mutex(t.Name())
			require.NoError(t, m.Lock(t.Context()), "%s round %d", driver, round)
			before, ok := m.Token()
			require.True(t, ok)
			out, err := c.PGCtl(t, "stop", "-m", "immediate", "-w")
			require.NoError(t, err, "%s", out)
			c.Start(t)
			select {
			case <-m.Done():
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: the crash was not reported as a loss", driver)
			}
			require.ErrorIs(t, m.Err(), sqllock.ErrLockLost)
			_ = m.Unlock(t.Context())
			after := l.Mutex(t.Name())
			require.NoError(t, after.Lock(t.Context()))
			tok, ok := after.Token()
			require.True(t, ok)
			t.Logf("%s round %d: token %d before the crash, %d after", driver, round, before, tok)
			assert.Greater(t, tok, before, "%s round %d: a token after a crash must be larger", driver, round)
			require.NoError(t, after.Unlock(t.Context()))
		}
	}
}

// WithFencing and WithAllowStandby do not go together: a standby hands out
// no transaction ids.
func TestFencingRefusesStandby(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("postgres", "host=127.0.0.1")
	require.NoError(t, err)
	defer db.Close()
	l := sqllock.New(db, sqllock.WithFencing(), sqllock.WithAllowStandby(true))
	require.ErrorContains(t, l.Err(), "WithFencing cannot be combined with WithAllowStandby")
	require.ErrorContains(t, l.Mutex("x").Lock(t.Context()), "WithFencing cannot be combined")
	var none context.Context
	_, ok := sqllock.Token(none)
	assert.False(t, ok, "a nil context has no token")
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
		}, sqllock.WithFencing(), sqllock.WithKeepAlive(0, 0))
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
	}, sqllock.WithFencing(), sqllock.WithKeepAlive(0, 0))
	m := l.MutexKey(keyspace.Int64(42))
	err := m.Lock(context.Background())
	require.ErrorIs(t, err, sqllock.ErrFencingUnsupported)
	assert.ErrorContains(t, err, "PostgreSQL 13")
	assert.ErrorContains(t, err, "int64(42)", "the error names the lock")
	assert.Equal(t, int32(0), c.Closed.Load(), "the refused statement took nothing")
	// Shared locks need no token and work.
	require.NoError(t, m.LockShared(context.Background()))
	require.NoError(t, m.UnlockShared(context.Background()))
}

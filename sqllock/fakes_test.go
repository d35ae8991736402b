package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newMock returns a Locker over a sqlmock database with exact SQL matching
// and the keep-alive off, unless opts say otherwise.
func newMock(t *testing.T, opts ...sqllock.Option) (*sqllock.Locker, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(tokenBlindEqual))
	require.NoError(t, err)
	t.Cleanup(func() {
		db.Close()
		assert.NoError(t, mock.ExpectationsWereMet())
	})
	db.SetMaxIdleConns(1)
	// sqlmock forgets its connection once every database/sql connection
	// to it has closed: one held for the test's life lets a discarded
	// connection be followed by a new one, as endSession needs.
	keep, err := db.Conn(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { keep.Close() })
	return sqllock.New(db, append([]sqllock.Option{sqllock.WithKeepAlive(0, 0), sqllock.WithPlaceholders(false)}, opts...)...), mock
}

// The SQL for key 42; TestBuildQueries and TestBuildVerify pin its exact
// text.
var (
	q42       = sqltext.Build(keyspace.Int64(42), false)
	verifySQL = sqltext.BuildVerify(false, false).TextWith("TOKEN")
	unlockSQL = guardedSQL(q42.Unlock, 7)
)

// waitRE matches how long a termination waits, which depends on the time
// left: any wait matches any other.
var waitRE = regexp.MustCompile(`(pg_terminate_backend\(pid, )\d+\)`)

// lookSQL and terminateSQL settle the session of backend pid that held
// key 42.
func lookSQL(pid int64) string      { return sqltext.Look(pid, 0, keyspace.Int64(42)) }
func terminateSQL(pid int64) string { return sqltext.Terminate(pid, 0, keyspace.Int64(42), 1) }

// tokenRE matches an owner token written into SQL text.
var tokenRE = regexp.MustCompile(`'[0-9a-f]{16}-[0-9a-z]+'`)

// guardedSQL is s's guarded form for the session of backend pid.
func guardedSQL(s *sqltext.LockStmt, pid int64) string {
	return strings.Join(s.Parts, fmt.Sprint(pid))
}

// tokenBlindEqual matches SQL exactly, but for the owner token, which
// depends on the driver connection's address: a well-formed token in the
// actual SQL matches 'TOKEN' in the expected.
var tokenBlindEqual = sqlmock.QueryMatcherFunc(func(expected, actual string) error {
	got := waitRE.ReplaceAllString(tokenRE.ReplaceAllString(actual, "'TOKEN'"), "${1}0)")
	if got != waitRE.ReplaceAllString(expected, "${1}0)") {
		return fmt.Errorf("SQL %q does not equal %q", actual, expected)
	}
	return nil
})

// ownerTokenArg matches an owner token passed as a bind parameter.
type ownerTokenArg struct{}

func (ownerTokenArg) Match(v driver.Value) bool {
	s, ok := v.(string)
	return ok && tokenRE.MatchString("'"+s+"'")
}

// verified is the verify statement's answer for a session of backend pid
// with the given refusal flags.
func verified(pid, flags int64) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"answer"}).AddRow(pid<<sqltext.AnswerShift | flags)
}

// granted is a guarded lock statement's answer.
func granted(ok bool) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"granted"}).AddRow(ok)
}

// unlocked is an unlock statement's answer: one row if it released the
// lock, none if the session did not hold it.
func unlocked(released bool) driver.Result {
	if released {
		return sqlmock.NewResult(0, 1)
	}
	return sqlmock.NewResult(0, 0)
}

// expectLock expects a first lock of key 42 on a new connection: the
// verify statement, then the guarded form, granted.
func expectLock(mock sqlmock.Sqlmock, pid int64) {
	mock.ExpectQuery(verifySQL).WithoutArgs().WillReturnRows(verified(pid, 0))
	mock.ExpectQuery(guardedSQL(q42.Lock, pid)).WithoutArgs().WillReturnRows(granted(true))
}

// expectEnded expects a discarded connection, then the look in pg_locks
// for backend pid with key 42, which finds it gone.
func expectEnded(mock sqlmock.Sqlmock, pid int64) {
	mock.ExpectClose()
	mock.ExpectQuery(lookSQL(pid)).WithoutArgs().
		WillReturnRows(sqlmock.NewRows([]string{"state", "exists", "self"}))
}

func newFake(t *testing.T, query func(ctx context.Context, q string) ([]driver.Value, error), opts ...sqllock.Option) (*sqllock.Locker, *fakedriver.Connector) {
	c := &fakedriver.Connector{Query: query}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return sqllock.New(db, append([]sqllock.Option{sqllock.WithPlaceholders(false)}, opts...)...), c
}

// answerAs answers statement q as a server whose session has backend pid
// pid would, when it grants every lock: the verify statement with the pid,
// the guarded form true if pid is the one it names, else with no row;
// unlocks as released, the keep-alive with pid, and the look for a
// session to end with no row (it is gone).
func answerAs(q string, pid int64) []driver.Value {
	switch {
	case isUnlock(q):
		return []driver.Value{true}
	case q == sqltext.ProbeSQL:
		return []driver.Value{pid}
	case strings.HasPrefix(q, "SELECT a.state, EXISTS"), strings.HasPrefix(q, "SELECT pg_terminate_backend"):
		return nil
	case strings.Contains(q, " WHERE pg_backend_pid() = "):
		if strings.HasSuffix(q, " = "+strconv.FormatInt(pid, 10)) {
			return []driver.Value{true}
		}
		return nil
	}
	return []driver.Value{pid << sqltext.AnswerShift}
}

// newRecordingFake is newFake, with the keep-alive off, over a driver that
// answers each statement with answer and records it; sent returns the
// statements so far, in order.
func newRecordingFake(t *testing.T, answer func(q string) ([]driver.Value, error)) (l *sqllock.Locker, c *fakedriver.Connector, sent func() []string) {
	var mu sync.Mutex
	var qs []string
	l, c = newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		mu.Lock()
		qs = append(qs, q)
		mu.Unlock()
		return answer(q)
	}, sqllock.WithKeepAlive(0, 0))
	return l, c, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(qs)
	}
}

// newCloseInterruptedFake returns a Locker over a fake driver whose
// statements are interrupted by closing their connection, as lib/pq's are.
// A statement stuck says is stuck: it ignores its context and returns once
// its connection is closed, with net.ErrClosed, or with its answer when
// answered. run calls f, which meets the stuck statement, and returns its
// error; if f has not returned within 5s, what (the bound that should
// have interrupted the statement) failed, and run unsticks it and fails
// the test.
func newCloseInterruptedFake(t *testing.T, stuck func(q string) bool, answered bool, opts ...sqllock.Option) (*sqllock.Locker, *fakedriver.Connector, func(what string, f func() error) error) {
	t.Helper()
	closed := make(chan struct{})
	var once sync.Once
	unstick := func() { once.Do(func() { close(closed) }) }
	l, c := newFake(t, func(_ context.Context, q string) ([]driver.Value, error) {
		if stuck(q) {
			<-closed
			if !answered {
				return nil, net.ErrClosed
			}
		}
		return answerAs(q, 7), nil
	}, opts...)
	c.OnClose = unstick
	sqllock.SetInterrupt(l, drv.InterruptClose) // as for lib/pq
	run := func(what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			unstick()
			t.Fatalf("%s did not interrupt the stuck statement", what)
			return nil
		}
	}
	return l, c, run
}

// isUnlock reports whether q is an unlock statement, in its guarded form.
func isUnlock(q string) bool {
	return strings.HasPrefix(q, "SELECT 1 WHERE CASE WHEN pg_backend_pid() <> ") && strings.Contains(q, "pg_advisory_unlock")
}

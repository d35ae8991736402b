package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// TestElection: several contenders, at most one runs fn at any moment, and
// when the leader's session is killed another takes over within the
// keep-alive bounds.
func TestElection(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		const contenders = 3
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var active atomic.Int32
		type term struct {
			id    int
			start time.Time
		}
		leaders := make(chan term, 16)
		var wg sync.WaitGroup
		elections := make([]*sqllock.Election, contenders)
		for i := range contenders {
			// The default takeover delay is the keep-alive's bound: 20ms + 200ms.
			l := sqllock.New(db, sqllock.WithKeepAlive(20*time.Millisecond, 200*time.Millisecond))
			elections[i] = l.Election(t.Name(), sqllock.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
			wg.Go(func() {
				err := elections[i].Run(ctx, func(ctx context.Context) error {
					if n := active.Add(1); n != 1 {
						t.Errorf("%d leaders at once", n)
					}
					defer active.Add(-1)
					leaders <- term{i, time.Now()}
					<-ctx.Done()
					return nil
				})
				assert.ErrorIs(t, err, context.Canceled)
			})
		}
		first := <-leaders
		assert.True(t, elections[first.id].Leading())
		leader, ok, err := elections[(first.id+1)%contenders].Leader(t.Context())
		require.NoError(t, err)
		require.True(t, ok)

		killed := time.Now()
		terminate(t, db, leader.PID)
		select {
		case next := <-leaders:
			t.Logf("takeover after the leader's backend was terminated: %v", next.start.Sub(killed).Round(time.Millisecond))
			assert.Less(t, next.start.Sub(killed), 5*time.Second)
			assert.GreaterOrEqual(t, next.start.Sub(killed), 200*time.Millisecond, "the takeover delay applies")
		case <-time.After(10 * time.Second):
			t.Fatal("no new leader after the leader's session was killed")
		}
		cancel()
		wg.Wait()
		for _, e := range elections {
			assert.False(t, e.Leading())
		}
	})
}

func TestElectionHandOver(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var states []bool
		var mu sync.Mutex
		e := sqllock.New(db).Election(t.Name(), sqllock.WithBackoff(time.Millisecond, time.Millisecond), sqllock.WithTakeoverDelay(0),
			sqllock.OnLeadership(func(leading bool, err error) {
				mu.Lock()
				states = append(states, leading)
				mu.Unlock()
			}))
		terms := 0
		boom := errors.New("boom")
		err := e.Run(ctx, func(context.Context) error {
			terms++
			if terms == 3 {
				cancel()
			}
			return boom // step down each time; campaign again
		})
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, 3, terms)
		mu.Lock()
		assert.Equal(t, []bool{true, false, true, false, true, false}, states)
		mu.Unlock()
		require.ErrorIs(t, e.Run(ctx, nil), sqllock.ErrNilFunc)
	})
}

// The takeover delay, which the first leader waits too, is logged when it
// starts, so that a first run does not look stuck.
func TestElectionLogsTakeoverDelay(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
		e := sqllock.New(db, sqllock.WithLogger(logger)).Election(t.Name(), sqllock.WithTakeoverDelay(30*time.Millisecond))
		ctx, cancel := context.WithCancel(t.Context())
		err := e.Run(ctx, func(context.Context) error {
			cancel()
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		assert.Contains(t, buf.String(), "waiting the takeover delay")
		assert.Contains(t, buf.String(), "delay=30ms")
	})
}

// State tells a candidate that waits out the takeover delay from one that
// leads, and from one that follows; Run ending with its context (a
// shutdown) steps down at once, releasing the lock for the next.
func TestElectionState(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		newElection := func() *sqllock.Election {
			l := sqllock.New(db, sqllock.WithKeepAlive(50*time.Millisecond, 200*time.Millisecond))
			// A delay long enough to be seen from a test goroutine that a
			// loaded machine may not run for a few hundred milliseconds.
			return l.Election(t.Name(), sqllock.WithTakeoverDelay(time.Second), sqllock.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
		}
		waitState := func(e *sqllock.Election, want sqllock.ElectionState) {
			t.Helper()
			require.Eventually(t, func() bool { return e.State() == want }, 5*time.Second, time.Millisecond, "state %v, want %v", e.State(), want)
		}
		a, b := newElection(), newElection()
		assert.Equal(t, sqllock.ElectionIdle, a.State())
		actx, stopA := context.WithCancel(t.Context())
		aDone := make(chan error, 1)
		go func() {
			aDone <- a.Run(actx, func(ctx context.Context) error { <-ctx.Done(); return context.Cause(ctx) })
		}()
		waitState(a, sqllock.ElectionWaiting)
		assert.False(t, a.Leading(), "a candidate waiting out the delay does not lead")
		_, _, w := sqllock.ElectionKeys(a)
		waitRows(t, db, w, 1, 0) // what shows other processes that it waits
		_, ok, err := a.Leader(t.Context())
		require.NoError(t, err)
		require.False(t, ok, "a candidate waiting out the delay is no leader to others either")
		waitState(a, sqllock.ElectionLeading)
		leader, ok, err := a.Leader(t.Context())
		require.NoError(t, err)
		require.True(t, ok)

		bctx, stopB := context.WithCancel(t.Context())
		defer stopB()
		bDone := make(chan error, 1)
		go func() {
			bDone <- b.Run(bctx, func(ctx context.Context) error { <-ctx.Done(); return nil })
		}()
		waitState(b, sqllock.ElectionFollowing)
		k, _, _ := sqllock.ElectionKeys(b)
		waitRows(t, db, k, 1, 1) // b waits in the server, on a session of its own

		// Shutdown: a's context ends; Run steps down within its release's
		// bound (the keep-alive timeout, 200ms, then at most 500ms to end
		// the session), and b wins.
		stopA()
		start := time.Now()
		select {
		case err := <-aDone:
			assert.ErrorIs(t, err, context.Canceled)
		case <-time.After(2 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
		assert.Less(t, time.Since(start), 2*time.Second)
		assert.Equal(t, sqllock.ElectionIdle, a.State())
		waitState(b, sqllock.ElectionLeading)
		now, ok, err := b.Leader(t.Context())
		require.NoError(t, err)
		require.True(t, ok)
		assert.NotEqual(t, leader.PID, now.PID)
		stopB()
		<-bDone
		assert.Equal(t, sqllock.ElectionIdle, b.State())
	})
}

// OnLeadership hears of a lost leadership once, with the loss said once,
// when fn returns its context's cause as the recipes do.
func TestElectionLossReportedOnce(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		lost := make(chan error, 4)
		l := sqllock.New(db, sqllock.WithKeepAlive(20*time.Millisecond, 200*time.Millisecond))
		e := l.Election(t.Name(), sqllock.WithTakeoverDelay(0), sqllock.WithBackoff(time.Second, time.Second),
			sqllock.OnLeadership(func(leading bool, err error) {
				if !leading && err != nil {
					lost <- err
				}
			}))
		leading := make(chan struct{}, 1)
		done := make(chan error, 1)
		go func() {
			done <- e.Run(ctx, func(ctx context.Context) error {
				leading <- struct{}{}
				<-ctx.Done()
				return context.Cause(ctx)
			})
		}()
		<-leading
		leader, ok, err := e.Leader(t.Context())
		require.NoError(t, err)
		require.True(t, ok)
		terminate(t, db, leader.PID)
		err = <-lost
		require.ErrorIs(t, err, sqllock.ErrLockLost)
		assert.Equal(t, 1, strings.Count(err.Error(), "lock lost"), "said once: %v", err)
		cancel()
		<-done
	})
}

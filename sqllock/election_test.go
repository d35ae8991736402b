package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
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

package sqllock_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// The handover tests' keep-alive, as the targets name it: a
// session's loss is noticed within max(interval, timeout) + timeout, 1s,
// which is the default takeover delay.
const (
	hoInterval = 200 * time.Millisecond
	hoTimeout  = 500 * time.Millisecond
	hoDelay    = time.Second
)

// A terms records every candidate's fn, and fails the test when two run
// at once.
type terms struct {
	t      *testing.T
	mu     sync.Mutex
	active int
}

// A candidate is one process's campaign: its own Locker and Election on
// the test's database, Run in a goroutine.
type candidate struct {
	e        *sqllock.Election
	stop     context.CancelFunc
	done     chan error     // Run's result
	finished chan struct{}  // closed when Run has returned
	started  chan time.Time // when fn started, each term
	returned chan time.Time // when fn returned, each term
	release  chan struct{}  // closed: fn returns at once, whatever ctx
}

// campaign starts a candidate for the election name whose fn runs until
// its context ends or release is closed, then returns its context's cause.
func (ts *terms) campaign(db *sql.DB, name string, opts ...sqllock.ElectionOption) *candidate {
	ts.t.Helper()
	return ts.campaignOn(sqllock.New(db, sqllock.WithKeepAlive(hoInterval, hoTimeout)), name, opts...)
}

// campaignOn is campaign on Locker l.
func (ts *terms) campaignOn(l *sqllock.Locker, name string, opts ...sqllock.ElectionOption) *candidate {
	ts.t.Helper()
	ctx, stop := context.WithCancel(ts.t.Context())
	c := &candidate{
		e: l.Election(name, opts...), stop: stop, done: make(chan error, 1), finished: make(chan struct{}),
		started: make(chan time.Time, 8), returned: make(chan time.Time, 8), release: make(chan struct{}),
	}
	go func() {
		c.done <- c.e.Run(ctx, func(ctx context.Context) error {
			ts.enter()
			c.started <- time.Now()
			select {
			case <-ctx.Done():
			case <-c.release:
			}
			ts.leave()
			c.returned <- time.Now()
			return context.Cause(ctx)
		})
		close(c.finished)
	}()
	ts.t.Cleanup(func() {
		stop()
		<-c.finished
	})
	return c
}

func (ts *terms) enter() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.active++
	if ts.active != 1 {
		ts.t.Errorf("%d leaders' fn run at once", ts.active)
	}
}

func (ts *terms) leave() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.active--
}

// next waits for a time on ch, failing the test after d.
func next(t *testing.T, ch <-chan time.Time, d time.Duration, what string) time.Time {
	t.Helper()
	select {
	case at := <-ch:
		return at
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
		return time.Time{}
	}
}

// eachSetup is eachDriver for tests that open a pool per process.
func eachSetup(t *testing.T, f func(t *testing.T, open func(*testing.T) *sql.DB)) {
	t.Helper()
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			f(t, s.open)
		})
	}
}

// electionKey returns the key of the election's lock.
func electionKey(e *sqllock.Election) keyspace.Key {
	k, _, _ := sqllock.ElectionKeys(e)
	return k
}

// noLocksLeft waits until no session holds or waits for the election's
// locks, the handover's included.
func noLocksLeft(t *testing.T, db *sql.DB, e *sqllock.Election) {
	t.Helper()
	k, y, w := sqllock.ElectionKeys(e)
	for _, key := range []keyspace.Key{k, y, w} {
		waitRows(t, db, key, 0, 0)
	}
}

// Five clean handovers (Run's context ends, fn returns, Run steps down),
// each to a candidate waiting in another "process" (a Locker and pool of
// its own): the new leader's fn starts without the takeover delay. The
// issue's targets: with a 200ms/500ms keep-alive (a 1s delay), a median
// gap from the old fn's return to the new fn's start of at most 100ms,
// none above 300ms; fn never overlaps.
func TestElectionCleanHandover(t *testing.T) {
	eachSetup(t, func(t *testing.T, open func(*testing.T) *sql.DB) {
		ts := &terms{t: t}
		db := open(t)
		cur := ts.campaign(open(t), t.Name())
		first := time.Now()
		at := next(t, cur.started, 10*time.Second, "first leader")
		assert.GreaterOrEqual(t, at.Sub(first), hoDelay, "the first leader waits the delay: nothing proves that no one led a moment ago")
		key := electionKey(cur.e)
		var gaps []time.Duration
		for i := range 5 {
			nxt := ts.campaign(open(t), t.Name())
			waitRows(t, db, key, 1, 1) // it waits in the server
			cur.stop()
			returned := next(t, cur.returned, 5*time.Second, "old fn's return")
			started := next(t, nxt.started, 5*time.Second, "new fn's start")
			gaps = append(gaps, started.Sub(returned))
			require.ErrorIs(t, <-cur.done, context.Canceled)
			assert.Equal(t, sqllock.ElectionIdle, cur.e.State())
			t.Logf("handover %d: %v from the old fn's return to the new fn's start", i+1, gaps[i].Round(100*time.Microsecond))
			cur = nxt
		}
		cur.stop()
		require.ErrorIs(t, <-cur.done, context.Canceled)
		slices.Sort(gaps)
		t.Logf("clean handovers: median %v, max %v (takeover delay %v)", gaps[len(gaps)/2].Round(100*time.Microsecond), gaps[len(gaps)-1].Round(100*time.Microsecond), hoDelay)
		assert.LessOrEqual(t, gaps[len(gaps)/2], 100*time.Millisecond, "median gap")
		assert.LessOrEqual(t, gaps[len(gaps)-1], 300*time.Millisecond, "largest gap")
		noLocksLeft(t, db, cur.e)
	})
}

// The same with default options (keep-alive 2s/5s, a 10s delay), for
// docs/benchmarks.md: five clean handovers, then a leader's session ended.
func TestElectionHandoverDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("waits the default takeover delay, 10s, twice")
	}
	const delay = 10 * time.Second
	eachSetup(t, func(t *testing.T, open func(*testing.T) *sql.DB) {
		ts := &terms{t: t}
		db := open(t)
		cur := ts.campaignOn(sqllock.New(open(t)), t.Name())
		first := time.Now()
		at := next(t, cur.started, 2*delay, "first leader")
		assert.GreaterOrEqual(t, at.Sub(first), delay)
		key := electionKey(cur.e)
		var gaps []time.Duration
		for range 5 {
			nxt := ts.campaignOn(sqllock.New(open(t)), t.Name())
			waitRows(t, db, key, 1, 1)
			cur.stop()
			returned := next(t, cur.returned, 5*time.Second, "old fn's return")
			gaps = append(gaps, next(t, nxt.started, 15*time.Second, "new fn's start").Sub(returned))
			require.ErrorIs(t, <-cur.done, context.Canceled)
			cur = nxt
		}
		nxt := ts.campaignOn(sqllock.New(open(t)), t.Name())
		waitRows(t, db, key, 1, 1)
		killed := time.Now()
		terminate(t, db, backendOf(t, db, key))
		took := next(t, nxt.started, 2*delay, "the killed leader's successor").Sub(killed)
		slices.Sort(gaps)
		t.Logf("%s, default options: clean handovers %v (median %v, max %v); after a killed leader %v",
			t.Name(), gaps, gaps[len(gaps)/2].Round(100*time.Microsecond), gaps[len(gaps)-1].Round(100*time.Microsecond), took.Round(time.Millisecond))
		assert.LessOrEqual(t, gaps[len(gaps)/2], 100*time.Millisecond, "median gap")
		// Issue 27's 300ms bound on every gap is TestElectionCleanHandover's;
		// here, as a figure for the docs, a gap shows only that no handover
		// waited out the delay: with every CPU busy, one took 473ms.
		assert.LessOrEqual(t, gaps[len(gaps)-1], delay/10, "largest gap")
		assert.GreaterOrEqual(t, took, delay, "the killed leader's successor waits the delay")
	})
}

// A leader whose session is ended (pg_terminate_backend: a crash, a lost
// network) has not stepped down: its successor waits the whole takeover
// delay, and the old fn has returned before the new one starts.
func TestElectionKilledLeaderCostsTheDelay(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		a := ts.campaign(db, t.Name())
		next(t, a.started, 10*time.Second, "first leader")
		key := electionKey(a.e)
		b := ts.campaign(db, t.Name())
		waitRows(t, db, key, 1, 1)
		killed := time.Now()
		terminate(t, db, backendOf(t, db, key))
		returned := next(t, a.returned, 5*time.Second, "the killed leader's fn returns")
		started := next(t, b.started, 5*time.Second, "the successor's fn")
		t.Logf("killed leader: its fn returned %v after the kill, the successor's fn started %v after it",
			returned.Sub(killed).Round(time.Millisecond), started.Sub(killed).Round(time.Millisecond))
		assert.GreaterOrEqual(t, started.Sub(killed), hoDelay, "the successor waits the delay")
		assert.True(t, returned.Before(started))
	})
}

// The corner the evidence must not cover: a clean handover from a to b,
// then b's session is ended. c, b's successor, must wait the delay: a's
// evidence (a's process lives on, its pool open) speaks of a's term, not
// b's.
func TestElectionCrashAfterCleanHandover(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		a := ts.campaign(db, t.Name())
		next(t, a.started, 10*time.Second, "first leader")
		key := electionKey(a.e)
		b := ts.campaign(db, t.Name())
		waitRows(t, db, key, 1, 1)
		a.stop()
		returned := next(t, a.returned, 5*time.Second, "a's fn returns")
		started := next(t, b.started, 5*time.Second, "b's fn")
		assert.Less(t, started.Sub(returned), hoDelay/2, "a clean handover: no delay")
		require.ErrorIs(t, <-a.done, context.Canceled)

		// a is back to a plain process with an open pool; c waits for b.
		c := ts.campaign(db, t.Name())
		waitRows(t, db, key, 1, 1)
		killed := time.Now()
		terminate(t, db, backendOf(t, db, key))
		started = next(t, c.started, 5*time.Second, "c's fn")
		t.Logf("after a clean handover, the next leader's session was ended: its successor started %v later", started.Sub(killed).Round(time.Millisecond))
		assert.GreaterOrEqual(t, started.Sub(killed), hoDelay, "c waits the delay")
	})
}

// A leader that lost its lock without noticing (its keep-alive is slow)
// and steps down after another leader took over must leave no evidence:
// its step-down looks on the server first and finds the lock held by
// another session. Were it to leave evidence anyway, the next leader
// after b would skip the delay while b's fn may still run. Here: a's
// session is ended, b leads after the delay, a's fn returns (a steps
// down, late), b's session is ended; c waits the delay.
func TestElectionLateStepDownLeavesNoEvidence(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		zombie := &terms{t: t} // a's fn runs beside b's: a's keep-alive is slow on purpose
		slow := sqllock.New(db, sqllock.WithKeepAlive(5*time.Second, 5*time.Second))
		a := zombie.campaignOn(slow, t.Name(), sqllock.WithTakeoverDelay(hoDelay))
		next(t, a.started, 10*time.Second, "first leader")
		key := electionKey(a.e)
		b := ts.campaign(db, t.Name())
		waitRows(t, db, key, 1, 1)
		terminate(t, db, backendOf(t, db, key))
		next(t, b.started, 5*time.Second, "b's fn")
		c := ts.campaign(db, t.Name())
		waitRows(t, db, key, 1, 1)
		close(a.release) // a steps down now, b leading
		next(t, a.returned, 5*time.Second, "a's fn returns")
		waitRows(t, db, key, 1, 2) // a has stepped down and campaigns again, behind c
		_, y, _ := sqllock.ElectionKeys(a.e)
		held, _ := lockRows(t, db, y)
		assert.Zero(t, held, "a left evidence")
		killed := time.Now()
		terminate(t, db, backendOf(t, db, key))
		started := next(t, c.started, 5*time.Second, "c's fn")
		t.Logf("b's session ended after a's late step-down: c started %v later", started.Sub(killed).Round(time.Millisecond))
		assert.GreaterOrEqual(t, started.Sub(killed), hoDelay, "c waits the delay")
	})
}

// A winner stopped while it waits out its delay leaves no evidence: the
// delay it was waiting out may be what an old leader's fn still needs.
// Its successor waits a delay of its own.
func TestElectionStoppedDuringDelayLeavesNoEvidence(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		a := ts.campaign(db, t.Name(), sqllock.WithTakeoverDelay(time.Minute))
		_, _, w := sqllock.ElectionKeys(a.e)
		waitRows(t, db, w, 1, 0) // a waits out its delay
		b := ts.campaign(db, t.Name())
		waitRows(t, db, electionKey(a.e), 1, 1)
		stopped := time.Now()
		a.stop()
		started := next(t, b.started, 5*time.Second, "b's fn")
		assert.GreaterOrEqual(t, started.Sub(stopped), hoDelay, "b waits the delay")
	})
}

// Evidence held by anyone keeps every new leader's fn from starting: a
// leader that finds it starts at once, but only once it is gone, so
// evidence never outlives the term it speaks of.
func TestElectionEvidenceHoldsBackFn(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		probe := sqllock.New(db).Election(t.Name())
		_, y, _ := sqllock.ElectionKeys(probe)
		evidence := sqllock.New(db).MutexKey(y)
		require.NoError(t, evidence.Lock(t.Context()))
		a := ts.campaign(db, t.Name())
		waitRows(t, db, y, 1, 1) // a's barrier waits for the evidence
		assert.Equal(t, sqllock.ElectionWaiting, a.e.State())
		released := time.Now()
		require.NoError(t, evidence.Unlock(t.Context()))
		started := next(t, a.started, 5*time.Second, "a's fn")
		assert.Less(t, started.Sub(released), hoDelay, "evidence found: no delay")
	})
}

// Leadership, from another process, tells a leader that waits out its
// delay from one that leads, and lists the followers; Leader reports no
// leader while the winner waits.
func TestElectionLeadership(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		observer := sqllock.New(db).Election(t.Name())
		ld, err := observer.Leadership(t.Context())
		require.NoError(t, err)
		assert.Equal(t, sqllock.ElectionIdle, ld.State)

		a := ts.campaign(db, t.Name(), sqllock.WithTakeoverDelay(time.Minute))
		_, _, w := sqllock.ElectionKeys(observer)
		waitRows(t, db, w, 1, 0)
		ld, err = observer.Leadership(t.Context())
		require.NoError(t, err)
		assert.Equal(t, sqllock.ElectionWaiting, ld.State)
		assert.Equal(t, backendOf(t, db, electionKey(a.e)), ld.Leader.PID)
		_, ok, err := observer.Leader(t.Context())
		require.NoError(t, err)
		assert.False(t, ok, "a winner waiting out its delay does not lead")

		b := ts.campaign(db, t.Name())
		waitRows(t, db, electionKey(a.e), 1, 1)
		a.stop() // during its delay: b waits one too, since an old leader's fn may be what a waited for
		next(t, b.started, 5*time.Second, "b's fn")
		ld, err = observer.Leadership(t.Context())
		require.NoError(t, err)
		assert.Equal(t, sqllock.ElectionLeading, ld.State)
		assert.Empty(t, ld.Followers)
		leader, ok, err := observer.Leader(t.Context())
		require.NoError(t, err)
		assert.True(t, ok)
		assert.Equal(t, ld.Leader.PID, leader.PID)

		c := ts.campaign(db, t.Name())
		waitRows(t, db, electionKey(a.e), 1, 1)
		ld, err = observer.Leadership(t.Context())
		require.NoError(t, err)
		require.Len(t, ld.Followers, 1)
		_ = c
	})
}

// Observe reports each change of leader, from another process, within
// about a keep-alive interval, without holding anything the candidates
// wait for.
func TestElectionObserve(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		ts := &terms{t: t}
		observer := sqllock.New(db, sqllock.WithKeepAlive(hoInterval, hoTimeout)).Election(t.Name())
		ctx, cancel := context.WithCancel(t.Context())
		seen := observer.Observe(ctx)
		ld := <-seen
		require.NoError(t, ld.Err)
		assert.Equal(t, sqllock.ElectionIdle, ld.State)

		a := ts.campaign(db, t.Name())
		waitFor := func(want sqllock.ElectionState) sqllock.Leadership {
			t.Helper()
			for {
				select {
				case ld := <-seen:
					require.NoError(t, ld.Err)
					if ld.State == want {
						return ld
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("Observe: no %v within 5s", want)
				}
			}
		}
		waitFor(sqllock.ElectionWaiting)
		aLead := waitFor(sqllock.ElectionLeading)
		next(t, a.started, 5*time.Second, "a's fn")
		b := ts.campaign(db, t.Name())
		waitRows(t, db, electionKey(a.e), 1, 1)
		a.stop()
		bStart := next(t, b.started, 5*time.Second, "b's fn")
		var bLead sqllock.Leadership
		for bLead.Leader.PID == 0 || bLead.Leader.PID == aLead.Leader.PID {
			bLead = waitFor(sqllock.ElectionLeading)
		}
		learnt := time.Now()
		t.Logf("Observe learnt of the new leader %v after its fn started (keep-alive interval %v)", learnt.Sub(bStart).Round(time.Millisecond), hoInterval)
		assert.Less(t, learnt.Sub(bStart), hoInterval+hoTimeout+500*time.Millisecond)
		cancel()
		for range seen { // closed when ctx ends
		}
	})
}

// runLeader campaigns in election name (a holder process: see runHolder,
// with the name "election:<name>") with the handover tests' keep-alive,
// says "leading" when its fn starts, and leads until killed.
// On SIGTERM it returns from fn, saying "returned <unix ns>", and exits
// once Run has stepped down.
func runLeader(db *sql.DB, name string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	e := sqllock.New(db, sqllock.WithKeepAlive(hoInterval, hoTimeout)).Election(name)
	_ = e.Run(ctx, func(ctx context.Context) error {
		fmt.Println("leading")
		<-ctx.Done()
		fmt.Println("returned", time.Now().UnixNano())
		return nil
	})
	_ = db.Close()
	os.Exit(0)
}

// startLeader starts a leader process (see runLeader) on driver d and
// waits until it leads; it returns the process and its lines.
func startLeader(t *testing.T, d, name string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd, lines := startHolder(t, d+" "+pgtest.DSN(t)+" election:"+name)
	select {
	case l := <-lines:
		require.Equal(t, "leading", l)
	case <-time.After(10 * time.Second):
		t.Fatal("the leader process did not lead within 10s")
	}
	return cmd, lines
}

// A leader process stopped with SIGTERM (a rolling deploy: its context
// ends, fn returns, Run steps down, the process exits) hands over
// cleanly: the successor, in this process, starts without the delay.
func TestElectionTerminatedProcessHandsOver(t *testing.T) {
	for _, d := range []string{"postgres", "pgx"} {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			cmd, lines := startLeader(t, d, t.Name())
			db := pgtest.DB(t, d)
			ts := &terms{t: t}
			b := ts.campaign(db, t.Name())
			waitRows(t, db, electionKey(b.e), 1, 1)
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			var ns int64
			select {
			case l := <-lines:
				_, err := fmt.Sscanf(l, "returned %d", &ns)
				require.NoError(t, err, "line %q", l)
			case <-time.After(5 * time.Second):
				t.Fatal("the leader's fn did not return within 5s of SIGTERM")
			}
			started := next(t, b.started, 5*time.Second, "the successor's fn")
			gap := started.Sub(time.Unix(0, ns))
			t.Logf("SIGTERMed leader process (%s): the successor started %v after the old fn returned", d, gap.Round(100*time.Microsecond))
			assert.Less(t, gap, hoDelay/2, "a clean handover: no delay")
			require.NoError(t, cmd.Wait())
		})
	}
}

// A leader whose process is killed (SIGKILL: no step-down at all) costs
// its successor the whole takeover delay.
func TestElectionKilledProcessCostsTheDelay(t *testing.T) {
	for _, d := range []string{"postgres", "pgx"} {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			cmd, _ := startLeader(t, d, t.Name())
			db := pgtest.DB(t, d)
			ts := &terms{t: t}
			b := ts.campaign(db, t.Name())
			waitRows(t, db, electionKey(b.e), 1, 1)
			require.NoError(t, cmd.Process.Kill())
			killed := time.Now()
			started := next(t, b.started, 5*time.Second, "the successor's fn")
			t.Logf("killed leader process (%s): the successor started %v after SIGKILL", d, started.Sub(killed).Round(time.Millisecond))
			assert.GreaterOrEqual(t, started.Sub(killed), hoDelay, "the successor waits the delay")
		})
	}
}

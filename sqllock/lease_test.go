package sqllock_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// holderEnv makes the test binary a lock holder (see runHolder) instead of
// running tests: a process of its own, which a test can stop and resume.
const holderEnv = "SQLLOCK_TEST_HOLDER"

// runHolder takes the lock named by holderEnv ("driver dsn name") with
// default options (with "sessions:<name>", WithSessions(2) and more locks), says "locked", and says "lost: <cause>" and "err:
// <Mutex.Err>" when WithLock's context ends, then "withlock: <error>"
// once WithLock returns.
func runHolder(spec string) {
	driver, rest, _ := strings.Cut(spec, " ")
	dsn, name, _ := strings.Cut(rest, " ")
	db, err := sql.Open(driver, dsn)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	if election, ok := strings.CutPrefix(name, "election:"); ok {
		runLeader(db, election) // election_handover_test.go
	}
	if sem, ok := strings.CutPrefix(name, "semaphore:"); ok {
		runSemWorker(db, sem) // semaphore_procs_test.go
	}
	l := sqllock.New(db)
	if multiplexed, ok := strings.CutPrefix(name, "sessions:"); ok {
		// Many locks on a few sessions: holderSessionLocks more first.
		name, l = multiplexed, sqllock.New(db, sqllock.WithSessions(2))
		for i := range holderSessionLocks {
			if err := l.Mutex(fmt.Sprintf("%s/%d", name, i)).Lock(context.Background()); err != nil {
				fmt.Println("lock:", err)
				os.Exit(1)
			}
		}
	}
	mu := l.Mutex(name)
	err = mu.WithLock(context.Background(), func(ctx context.Context) error {
		fmt.Println("locked")
		<-ctx.Done()
		fmt.Println("lost:", context.Cause(ctx))
		fmt.Println("err:", mu.Err())
		return nil
	})
	fmt.Println("withlock:", err)
	os.Exit(0)
}

// holderSessionLocks is how many locks a holder of "sessions:<name>"
// takes besides name's, on its two sessions (see runHolder).
const holderSessionLocks = 4

// startHolder starts the test binary as a holder process (see runHolder)
// for spec ("driver dsn name"), and returns it with the lines it prints.
// It is resumed and killed when the test ends.
func startHolder(t *testing.T, spec string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+spec)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}

// A holder whose process stops (SIGSTOP: a frozen VM or container is the
// same to the server) loses its lock within the lease, with default
// options and no server setting: another process gets it. Resumed, the
// holder learns of the loss at once, through WithLock's context and
// error and through Mutex.Err.
func TestLeaseFrozenHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("takes the default lease, 10s")
	}
	for _, d := range []string{"postgres", "pgx"} {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			cmd, lines := startHolder(t, d+" "+pgtest.DSN(t)+" "+name)
			require.Equal(t, "locked", <-lines)

			require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
			frozen := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			next := sqllock.New(pgtest.DB(t, d)).Mutex(name)
			require.NoError(t, next.Lock(ctx), "the frozen holder's lock was not freed")
			took := time.Since(frozen)
			t.Logf("lease: driver=%s another process got the lock %v after the holder froze", d, took.Round(time.Millisecond))
			assert.Less(t, took, 15*time.Second)

			require.NoError(t, cmd.Process.Signal(syscall.SIGCONT))
			resumed := time.Now()
			var got []string
			for len(got) < 3 {
				select {
				case l, ok := <-lines:
					require.True(t, ok, "the holder exited after %q", got)
					got = append(got, l)
				case <-time.After(3 * time.Second):
					t.Fatalf("the resumed holder said %q within 3s", got)
				}
			}
			t.Logf("lease: driver=%s the resumed holder reported the loss %v after it resumed", d, time.Since(resumed).Round(time.Millisecond))
			assert.True(t, strings.HasPrefix(got[0], "lost: ") && strings.Contains(got[0], "lock lost"), "WithLock's context: %s", got[0])
			assert.True(t, strings.HasPrefix(got[1], "err: ") && strings.Contains(got[1], "lock lost"), "Mutex.Err: %s", got[1])
			assert.True(t, strings.HasPrefix(got[2], "withlock: ") && strings.Contains(got[2], "lock lost"), "WithLock's error: %s", got[2])
			require.NoError(t, next.Unlock(t.Context()))
		})
	}
}

// A lock's lease and the session's own idle_session_timeout: the grant
// sets the lease on a session with no value of its own and leaves any
// other alone, and the unlock of the session's last lock resets it, so
// that a connection back in the pool carries nothing of sqllock's.
func TestLeaseSettingGivenBack(t *testing.T) {
	show := func(t *testing.T, db *sql.DB) string {
		t.Helper()
		var own string
		require.NoError(t, db.QueryRowContext(t.Context(), "SELECT current_setting('idle_session_timeout')").Scan(&own))
		return own
	}
	for _, own := range []string{"0", "123s", "2s"} {
		t.Run("own="+own, func(t *testing.T) {
			eachDriver(t, func(t *testing.T, db *sql.DB) {
				db.SetMaxOpenConns(1) // the lock's session is the one whose setting is read
				_, err := db.ExecContext(t.Context(), "SET idle_session_timeout = '"+own+"'")
				require.NoError(t, err)
				before := show(t, db)
				for _, opts := range [][]sqllock.Option{nil, {sqllock.WithSessions(1)}} {
					l := sqllock.New(db, opts...)
					a, b := l.Mutex(t.Name()+"/a"), l.Mutex(t.Name()+"/b")
					require.NoError(t, a.Lock(t.Context()))
					if opts != nil {
						// A multiplexed session keeps its lease while it
						// carries a lock.
						require.NoError(t, b.LockShared(t.Context()))
						require.NoError(t, a.Unlock(t.Context()))
						require.NoError(t, b.UnlockShared(t.Context()))
					} else {
						require.NoError(t, a.Unlock(t.Context()))
					}
					assert.Equal(t, before, show(t, db), "the session's own idle_session_timeout, after the unlock (%d options)", len(opts))
				}
			})
		})
	}
}

// A live holder never loses its lock to its own lease, even while its
// process is busy: both cores burnt and the garbage collector running all
// the time. The server's view of the longest idle gap between the holder's
// statements, which is what the lease measures, stays well below it.
func TestLeaseKeptUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a lock under load for 3s")
	}
	const interval, timeout = 200 * time.Millisecond, time.Second // lease: 2s
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db, sqllock.WithKeepAlive(interval, timeout)).Mutex(t.Name())
		require.NoError(t, mu.Lock(t.Context()))
		observer := pgtest.DB(t, "pgx")
		pid := backendOf(t, observer, mu.Key())
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		for range runtime.NumCPU() {
			go burn(ctx)
		}
		go churn(ctx)
		var worst time.Duration
		for ctx.Err() == nil {
			var idle sql.NullFloat64
			require.NoError(t, observer.QueryRowContext(t.Context(),
				"SELECT CASE WHEN state = 'idle' THEN extract(epoch FROM clock_timestamp() - state_change) END FROM pg_stat_activity WHERE pid = $1", pid).Scan(&idle))
			if d := time.Duration(idle.Float64 * float64(time.Second)); d > worst {
				worst = d
			}
			time.Sleep(5 * time.Millisecond)
		}
		require.NoError(t, mu.Err(), "the lock was lost under load")
		t.Logf("lease: the holder's session idled at most %v between statements (interval %v, lease %v)", worst.Round(time.Millisecond), interval, max(interval, timeout)+timeout)
		assert.Less(t, worst, max(interval, timeout)+timeout)
		require.NoError(t, mu.Unlock(t.Context()))
	})
}

// burn keeps a core busy until ctx ends.
func burn(ctx context.Context) {
	for n := 0; ctx.Err() == nil; n++ {
		for i := range 1 << 16 {
			n ^= i
		}
	}
}

// churn makes garbage until ctx ends, so that the collector runs all the
// time.
func churn(ctx context.Context) {
	for ctx.Err() == nil {
		b := make([]byte, 1<<20)
		b[len(b)-1] = 1
	}
}

// A lease the keep-alive cannot keep is refused, naming the option.
func TestLeaseInvalid(t *testing.T) {
	for _, c := range []struct {
		opts []sqllock.Option
		want string
	}{
		{[]sqllock.Option{sqllock.WithLease(-time.Second)}, "negative lease"},
		{[]sqllock.Option{sqllock.WithLease(time.Second)}, "longer than the keep-alive interval"},
		{[]sqllock.Option{sqllock.WithKeepAlive(0, 0), sqllock.WithLease(time.Minute)}, "needs the keep-alive"},
	} {
		mu := sqllock.New(pgtest.DB(t, "pgx"), c.opts...).MutexKey(keyspace.Int64(1))
		err := mu.Lock(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), c.want)
		assert.Contains(t, err.Error(), "WithLease")
	}
}

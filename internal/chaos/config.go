package chaos

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

// Config says how a chaos run goes. [DefaultConfig] is the run of
// `make chaos`; [ShortConfig] the one of the Go test.
type Config struct {
	PQ, PGX, Withlock int // workers of each kind
	// Library workers, of the PQ and PGX ones, whose Locker shares server
	// sessions (sqllock.WithSessions(2)); the others take a connection
	// per lock.
	PQSessions, PGXSessions int
	// Workers that reach the server through a PgBouncer in transaction
	// mode that the run starts (repointed at the promoted standby after a
	// failover), besides the ones above: library workers on lib/pq, each
	// lock held in a transaction of its own; library workers on pgx,
	// sharing sessions (WithSessions(2)), each session's locks in one
	// transaction; withlock workers.
	PooledPQ, PooledPGX, PooledWithlock int

	Grants   int           // run at least until this many grants
	Duration time.Duration // and at least this long
	Timeout  time.Duration // give up (and fail) after this long

	Fenced bool // guard the accesses with the tokens; false shows the damage without

	KeepAlive        time.Duration // sqllock.WithKeepAlive interval, and withlock --keepalive
	KeepAliveTimeout time.Duration // sqllock.WithKeepAlive timeout (withlock's is fixed at 5s)
	Lease            time.Duration // the library workers' sqllock.WithLease: frees a silent or paused holder's lock (withlock's is its default)
	Pause            time.Duration // how long a paused holder stays stopped
	Silence          time.Duration // how long a holder's network stays silent
	GapMin, GapMax   time.Duration // between two faults
	WorkMin, WorkMax time.Duration // the work inside a critical section

	Seed int64 // of the fault schedule; 0 picks one

	Self         string    // this program, run again as workers and sections
	WithlockPath string    // the withlock binary
	Dir          string    // where records and worker logs go
	Log          io.Writer // progress, one line per fault; nil for none
}

// DefaultConfig is the run of make chaos: at least 3,000 grants, every
// fault kind, nine workers: two of each kind connected to the server (of
// each driver's library workers, one shares sessions) and one of each
// kind behind the pooler.
//
// The keep-alive (200ms interval, 400ms timeout) gives a library holder on
// a silent network a loss bound of max(interval, timeout) + timeout =
// 800ms; the library workers' lease, 1.5s, is longer, so the holder learns
// of the loss before the server frees the lock (docs/reliability.md,
// "Silent network"). No server setting frees a paused or silent holder's
// lock: the lease does. withlock's probe timeout is fixed at 5s, and its
// lease is its default, 10s. Pauses and silences last 2.5s, past the
// library lease plus the time for another worker to be granted.
func DefaultConfig() Config {
	return Config{
		PQ: 2, PGX: 2, Withlock: 2,
		PQSessions: 1, PGXSessions: 1,
		PooledPQ: 1, PooledPGX: 1, PooledWithlock: 1,
		Grants:           3000,
		Timeout:          15 * time.Minute,
		Fenced:           true,
		KeepAlive:        200 * time.Millisecond,
		KeepAliveTimeout: 400 * time.Millisecond,
		Lease:            1500 * time.Millisecond,
		Pause:            2500 * time.Millisecond,
		Silence:          2500 * time.Millisecond,
		GapMin:           time.Second,
		GapMax:           3 * time.Second,
		WorkMin:          2 * time.Millisecond,
		WorkMax:          30 * time.Millisecond,
	}
}

// ShortConfig is the run of the Go test: six workers (one of each kind,
// of which the pgx one shares sessions, and one of each kind behind the
// pooler), every fault kind once, at least 100 grants, well under a
// minute.
func ShortConfig() Config {
	c := DefaultConfig()
	c.PQ, c.PGX, c.Withlock = 1, 1, 1
	c.PQSessions, c.PGXSessions = 0, 1
	c.Grants = 100
	c.Timeout = 3 * time.Minute
	c.GapMin, c.GapMax = 300*time.Millisecond, 800*time.Millisecond
	return c
}

func (c *Config) validate() error {
	switch {
	case c.PQ < 0 || c.PGX < 0 || c.Withlock < 0 || c.PooledPQ < 0 || c.PooledPGX < 0 || c.PooledWithlock < 0 ||
		c.PQ+c.PGX+c.Withlock+c.pooled() < 2:
		return errors.New("chaos: need at least two workers")
	case c.PQSessions < 0 || c.PQSessions > c.PQ || c.PGXSessions < 0 || c.PGXSessions > c.PGX:
		return errors.New("chaos: workers sharing sessions are counted among their driver's library workers")
	case c.Self == "":
		return errors.New("chaos: Config.Self (this program) is not set")
	case c.Withlock+c.PooledWithlock > 0 && c.WithlockPath == "":
		return errors.New("chaos: Config.WithlockPath is not set")
	case c.Dir == "":
		return errors.New("chaos: Config.Dir is not set")
	case c.Lease <= max(c.KeepAlive, c.KeepAliveTimeout)+c.KeepAliveTimeout:
		return fmt.Errorf("chaos: the lease %v must exceed the keep-alive's loss bound %v",
			c.Lease, max(c.KeepAlive, c.KeepAliveTimeout)+c.KeepAliveTimeout)
	case c.Pause <= c.Lease || c.Silence <= c.Lease:
		return errors.New("chaos: pauses and silences must outlast the lease")
	case c.GapMax < c.GapMin || c.WorkMax < c.WorkMin:
		return errors.New("chaos: a range's maximum is below its minimum")
	}
	return nil
}

// Servers are the clusters a run uses: its own, never a shared server.
type Servers struct {
	Primary *pgtest.Cluster
	Standby *pgtest.Cluster // a streaming standby of Primary; nil: no failover
	// Resource holds the protected counter, apart from the locks' server,
	// which the run restarts and fails over: then the failover is to an
	// asynchronous standby that loses the primary's last commits. Nil: the
	// counter is on Primary, and the failover is to a synchronous standby,
	// which loses none.
	Resource *pgtest.Cluster
}

// pooled is the number of workers behind the pooler.
func (c *Config) pooled() int { return c.PooledPQ + c.PooledPGX + c.PooledWithlock }

package chaos

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
)

// lockName is the one lock every worker takes.
const lockName = "chaos"

// syncWait bounds the wait for the standby to become synchronous.
const syncWait = 30 * time.Second

// A controller runs one chaos run.
type controller struct {
	cfg      Config
	rng      *rand.Rand
	primary  *pgtest.Cluster
	standby  *pgtest.Cluster
	admin    *sql.DB         // the controller's own connection to the primary
	resource *pgtest.Cluster // where the counter lives, if not on the primary
	res      *sql.DB         // the controller's connection to resource; nil: admin
	fleet    *fleet
	faults   []Fault
	restarts int
	pooler   *pgtest.Bouncer // in front of the primary, for the pooled workers; nil without
}

// Run runs a chaos run on srv's clusters, which it may restart, stop and
// promote, and returns the checked result. An error means the run could
// not be carried out (a server would not restart, a worker could not
// start); what the run found is in the Result, whose Violations say whether
// it passed.
func Run(ctx context.Context, cfg Config, srv Servers) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano()
	}
	c := &controller{
		cfg:      cfg,
		rng:      rand.New(rand.NewPCG(uint64(cfg.Seed), 0)),
		primary:  srv.Primary,
		standby:  srv.Standby,
		resource: srv.Resource,
	}
	if err := c.reopenAdmin(); err != nil {
		return nil, err
	}
	defer func() { c.admin.Close() }()
	if c.resource != nil {
		var err error
		if c.res, err = sql.Open("pgx", c.resource.DSN()); err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
		defer c.res.Close()
	}

	var version string
	if err := c.admin.QueryRowContext(ctx, `SHOW server_version`).Scan(&version); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	workers, err := c.workers()
	if c.pooler != nil {
		defer func() { _ = c.pooler.Stop() }()
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, w := range workers {
			for _, p := range w.proxies {
				p.Close()
			}
		}
	}()
	names := make([]string, len(workers))
	for i, w := range workers {
		names[i] = w.spec.Worker
	}
	if err := createSchema(ctx, c.admin, c.res, names); err != nil {
		return nil, err
	}
	if c.standby != nil {
		if err := c.synchronous(ctx); err != nil {
			return nil, err
		}
	}

	c.fleet = newFleet(workers)
	started := time.Now()
	c.fleet.start()
	runErr := c.injectFaults(ctx, started)
	c.fleet.shutdown()
	elapsed := time.Since(started)
	if runErr != nil && !errors.Is(runErr, errTimedOut) {
		return nil, runErr
	}

	leftover, err := c.waitLocksGone(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	history, counter, err := readHistory(context.WithoutCancel(ctx), c.counterDB())
	if err != nil {
		return nil, err
	}
	records, err := ReadRecords(cfg.Dir)
	if err != nil {
		return nil, err
	}
	exits, problems := c.fleet.results()
	if c.pooler != nil {
		// A pooler that exited fails the run: its workers stopped taking
		// the lock. Its log goes with the records.
		if exited, err := c.pooler.Exited(); exited {
			problems = append(problems, fmt.Sprintf("the pooler exited during the run: %v%s", err, tail(c.pooler.LogFile())))
		}
		if log, err := os.ReadFile(c.pooler.LogFile()); err == nil {
			_ = os.WriteFile(filepath.Join(cfg.Dir, "pgbouncer.log"), log, 0o644)
		}
	}
	if errors.Is(runErr, errTimedOut) {
		problems = append(problems, fmt.Sprintf("the run did not finish within %v", cfg.Timeout))
	}
	required := slices.Clone(FaultKinds)
	if srv.Standby == nil {
		required = slices.DeleteFunc(required, func(k string) bool { return k == FaultFailover })
	}
	res := Check(Input{
		Records: records, History: history, Counter: counter,
		Faults: c.faults, Exits: exits, Leftover: leftover,
		Fenced: cfg.Fenced, RequiredFaults: required, Problems: problems,
	})
	res.Run = RunInfo{
		Config: cfg, Started: started, Elapsed: elapsed, ServerVersion: version,
		Failover: srv.Standby != nil,
		Counter:  srv.Resource != nil,
	}
	return res, nil
}

// sharedSessions is the sqllock.WithSessions of library workers that share
// sessions.
const sharedSessions = 2

// errTimedOut ends a run that reached Config.Timeout.
var errTimedOut = errors.New("chaos: run timed out")

// A slot is one worker's place in the run.
type slot struct {
	kind     string
	sessions int  // sqllock.WithSessions of a library worker; 0: a connection per lock
	pooled   bool // behind the pooler
}

// slots lists the workers of the run, in the order of their names (w1,
// w2, ...): those connected to the server, then those behind the pooler.
func (c *Config) slots() []slot {
	var slots []slot
	for _, k := range []struct {
		kind      string
		n, shared int // shared of n share sessions
		pooled    bool
	}{{KindPQ, c.PQ, c.PQSessions, false}, {KindPGX, c.PGX, c.PGXSessions, false}, {KindWithlock, c.Withlock, 0, false},
		{KindPQ, c.PooledPQ, 0, true}, {KindPGX, c.PooledPGX, c.PooledPGX, true}, {KindWithlock, c.PooledWithlock, 0, true}} {
		for j := range k.n {
			sl := slot{kind: k.kind, pooled: k.pooled}
			if j < k.shared {
				sl.sessions = sharedSessions
			}
			slots = append(slots, sl)
		}
	}
	return slots
}

// poolerSize is the pooler's default_pool_size: room for every pooled
// worker's sessions, waits and fencing draws.
const poolerSize = 20

// startPooler starts the PgBouncer, in transaction mode, that the pooled
// workers reach the primary through, each signing in as its own role.
func (c *controller) startPooler(names []string) error {
	roles := make([]string, len(names))
	for i, n := range names {
		roles[i] = roleName(n)
	}
	p, err := pgtest.StartBouncer(pgtest.BouncerConfig{
		Target: c.primary.DSN(), PoolMode: "transaction", PoolSize: poolerSize, Users: roles,
		// After a restart or failover, try the server again within a
		// second, not PgBouncer's default 15s.
		Settings: []string{"server_login_retry = 1"},
	})
	if err != nil {
		return fmt.Errorf("chaos: starting the pooler: %w", err)
	}
	c.pooler = p
	return nil
}

// workers makes the worker slots: names, specs, proxies, files; and the
// pooler, if any worker is behind one.
func (c *controller) workers() ([]*worker, error) {
	slots := c.cfg.slots()
	names := make([]string, len(slots))
	for i := range slots {
		names[i] = "w" + strconv.Itoa(i+1)
	}
	if c.cfg.pooled() > 0 {
		if err := c.startPooler(names); err != nil {
			return nil, err
		}
	}
	var ws []*worker
	for i, sl := range slots {
		kind := sl.kind
		name := names[i]
		w := &worker{self: c.cfg.Self, withlock: c.cfg.WithlockPath,
			stderr: filepath.Join(c.cfg.Dir, name+".stderr")}
		targets := []string{"127.0.0.1:" + strconv.Itoa(c.primary.Port())}
		if c.standby != nil {
			targets = append(targets, "127.0.0.1:"+strconv.Itoa(c.standby.Port()))
		}
		if sl.pooled {
			u, err := url.Parse(c.pooler.DSN())
			if err != nil {
				return nil, fmt.Errorf("chaos: the pooler's DSN: %w", err)
			}
			targets = []string{u.Host}
		}
		var hosts, ports []string
		for _, t := range targets {
			p, err := tcpproxy.Listen(t)
			if err != nil {
				return nil, fmt.Errorf("chaos: proxy: %w", err)
			}
			w.proxies = append(w.proxies, p)
			host, port, _ := strings.Cut(p.Addr(), ":")
			hosts, ports = append(hosts, host), append(ports, port)
		}
		driver := "pgx"
		// Sections run by withlock alternate drivers, so that both are
		// exercised through withlock too; behind the pooler, pgx, which
		// takes the same connection string as withlock.
		if kind == KindPQ || (kind == KindWithlock && i%2 == 0 && !sl.pooled) {
			driver = "postgres"
		}
		dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=5",
			strings.Join(hosts, ","), strings.Join(ports, ","), roleName(name))
		switch {
		case !sl.pooled:
			// Both drivers follow the promoted standby.
			dsn += " target_session_attrs=read-write"
		case driver == "postgres":
			// lib/pq sends a query with parameters in two round trips,
			// which the pooler may send to two server sessions, unless
			// its parameters go in binary (docs/drivers.md).
			dsn += " binary_parameters=yes"
		default:
			// pgx's default caches named statements, which PgBouncer
			// before 1.21 does not carry between server sessions.
			dsn += " default_query_exec_mode=exec"
		}
		w.spec = Spec{
			Worker: name, Kind: kind, Driver: driver, Pooled: sl.pooled,
			DSN:              dsn,
			ResourceDSN:      c.resourceDSN(name),
			Records:          filepath.Join(c.cfg.Dir, name+".jsonl"),
			LockName:         lockName,
			Fenced:           c.cfg.Fenced,
			KeepAlive:        c.cfg.KeepAlive,
			KeepAliveTimeout: c.cfg.KeepAliveTimeout,
			Lease:            c.cfg.Lease,
			Sessions:         sl.sessions,
			WorkMin:          c.cfg.WorkMin,
			WorkMax:          c.cfg.WorkMax,
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// synchronous makes the standby a synchronous one and waits until the
// primary says so.
func (c *controller) synchronous(ctx context.Context) error {
	for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '*'`, `SELECT pg_reload_conf()`} {
		if _, err := c.admin.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("chaos: making the standby synchronous: %w", err)
		}
	}
	_, err := c.waitSync(ctx)
	return err
}

// waitSync waits until the primary reports a synchronous standby (after a
// restart of the primary, the standby takes a moment to reconnect) and
// returns its sync_state.
func (c *controller) waitSync(ctx context.Context) (string, error) {
	deadline := time.Now().Add(syncWait)
	for {
		var state string
		err := c.admin.QueryRowContext(ctx, `SELECT sync_state FROM pg_stat_replication LIMIT 1`).Scan(&state)
		if err == nil && state == "sync" {
			return state, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return state, fmt.Errorf("chaos: the standby is not synchronous after %v (state %q, %v)", syncWait, state, err)
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

// injectFaults injects faults one at a time, with random gaps, until the
// run has its grants, its duration and every fault kind: first every kind
// once in random order, then kinds at random (the failover only once: it
// uses up the standby).
func (c *controller) injectFaults(ctx context.Context, started time.Time) error {
	kinds := slices.Clone(FaultKinds)
	if c.standby == nil {
		kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == FaultFailover })
	}
	// Every worker takes the lock at least once before the first fault.
	for countBegins(c.cfg.Dir) < len(c.fleet.workers) && time.Since(started) < c.cfg.Timeout {
		if sleep(ctx, 100*time.Millisecond); ctx.Err() != nil {
			return ctx.Err()
		}
	}
	plan := slices.Clone(kinds)
	c.rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	for {
		gap := c.cfg.GapMin + time.Duration(c.rng.Int64N(int64(c.cfg.GapMax-c.cfg.GapMin)+1))
		sleep(ctx, gap)
		if err := ctx.Err(); err != nil {
			return err
		}
		grants := countBegins(c.cfg.Dir)
		if len(plan) == 0 && grants >= c.cfg.Grants && time.Since(started) >= c.cfg.Duration {
			return nil
		}
		if time.Since(started) > c.cfg.Timeout {
			return errTimedOut
		}
		var kind string
		if len(plan) > 0 {
			kind = plan[0]
		} else {
			others := slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k == FaultFailover })
			kind = others[c.rng.IntN(len(others))]
		}
		f, err := c.inject(ctx, kind)
		if errors.Is(err, errNoHolder) {
			continue
		}
		if err != nil {
			return err
		}
		if len(plan) > 0 {
			plan = plan[1:]
		}
		c.faults = append(c.faults, f)
		c.logf("%6.1fs %-9s %-3s %s (grants so far: %d)", time.Since(started).Seconds(), f.Kind, f.Worker, f.Detail, grants)
	}
}

// waitLocksGone waits until no advisory lock is left on the server, for
// at most the longest lease (withlock's default, max(interval, 5s) + 5s)
// plus a margin, and returns how many are left.
func (c *controller) waitLocksGone(ctx context.Context) (int, error) {
	deadline := time.Now().Add(max(c.cfg.Lease, max(c.cfg.KeepAlive, 5*time.Second)+5*time.Second) + 5*time.Second)
	for {
		var n int
		if err := c.admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'`).Scan(&n); err != nil {
			return 0, fmt.Errorf("chaos: counting leftover locks: %w", err)
		}
		if n == 0 || time.Now().After(deadline) {
			return n, nil
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

// counterDB is the controller's connection to the counter's server.
func (c *controller) counterDB() *sql.DB {
	if c.res != nil {
		return c.res
	}
	return c.admin
}

// reopenAdmin (re)connects the controller to the current primary.
func (c *controller) reopenAdmin() error {
	if c.admin != nil {
		c.admin.Close()
	}
	db, err := sql.Open("pgx", c.primary.DSN())
	if err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	c.admin = db
	return nil
}

func (c *controller) logf(format string, args ...any) {
	if c.cfg.Log != nil {
		fmt.Fprintf(c.cfg.Log, format+"\n", args...)
	}
}

// resourceDSN is how worker name reaches the counter: on its own server,
// directly, or through the same proxies as its locks.
func (c *controller) resourceDSN(name string) string {
	if c.resource == nil {
		return ""
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable connect_timeout=5", c.resource.Port(), roleName(name))
}

package chaos

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Fault kinds.
const (
	FaultPause     = "pause"     // the holder's process group stopped (SIGSTOP) past the loss bound, then resumed
	FaultKill      = "kill"      // the holder's process group killed (SIGKILL); the worker starts again
	FaultTerminate = "terminate" // the holder's backend ended (pg_terminate_backend)
	FaultRestart   = "restart"   // the server restarted, -m immediate and -m fast in turn
	FaultSilence   = "silence"   // the holder's network silenced (tcpproxy.Blackhole) past the loss bound, then resumed
	FaultFailover  = "failover"  // the primary stopped (-m immediate), its standby promoted (asynchronous, losing commits, when the counter has a server of its own)
)

// FaultKinds lists every fault kind, in report order.
var FaultKinds = []string{FaultPause, FaultKill, FaultTerminate, FaultRestart, FaultSilence, FaultFailover}

// A Fault is one injected fault.
type Fault struct {
	Kind   string
	Worker string // the worker hit, "" for the whole server
	Start  int64  // Unix nanoseconds
	End    int64  // when the fault was over: the process resumed, the server answered again, ...
	Detail string
}

// errNoHolder means that the worker a fault aimed at did not hold the
// lock in time; the fault is tried again later.
var errNoHolder = errors.New("chaos: nobody holds the lock")

// holderSQL finds the session holding the lock, and whose it is.
const holderSQL = `SELECT a.usename, l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' LIMIT 1`

// holderWait bounds the wait for a fault's target to hold the lock.
const holderWait = 3 * time.Second

// holding waits until worker w holds the lock, for up to holderWait, and
// returns its backend's pid.
func (c *controller) holding(ctx context.Context, w *worker) (int, error) {
	deadline := time.Now().Add(holderWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var role string
		var pid int
		err := c.admin.QueryRowContext(ctx, holderSQL).Scan(&role, &pid)
		switch {
		case err == nil && role == roleName(w.spec.Worker):
			return pid, nil
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return 0, fmt.Errorf("chaos: looking for the holder: %w", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, errNoHolder
}

// inject injects one fault of kind and returns it once it is over.
func (c *controller) inject(ctx context.Context, kind string) (Fault, error) {
	switch kind {
	case FaultRestart:
		return c.restart()
	case FaultFailover:
		return c.failover(ctx)
	}
	// The target is a worker at random, hit while it holds the lock.
	w := c.fleet.workers[c.rng.IntN(len(c.fleet.workers))]
	backend, err := c.holding(ctx, w)
	if err != nil {
		return Fault{}, err
	}
	f := Fault{Kind: kind, Worker: w.spec.Worker, Start: time.Now().UnixNano()}
	switch kind {
	case FaultPause:
		pid := w.signal(syscall.SIGSTOP, true)
		if pid == 0 {
			return Fault{}, errNoHolder
		}
		sleep(ctx, c.cfg.Pause)
		if err := syscall.Kill(-pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			return Fault{}, fmt.Errorf("chaos: resuming %d: %w", pid, err)
		}
		f.Detail = fmt.Sprintf("process group %d stopped for %v", pid, c.cfg.Pause)
	case FaultKill:
		pid := w.signal(syscall.SIGKILL, true)
		if pid == 0 {
			return Fault{}, errNoHolder
		}
		f.Detail = fmt.Sprintf("process group %d killed", pid)
	case FaultTerminate:
		var ok bool
		if err := c.admin.QueryRowContext(ctx, `SELECT pg_terminate_backend($1)`, backend).Scan(&ok); err != nil {
			return Fault{}, fmt.Errorf("chaos: terminating backend %d: %w", backend, err)
		}
		if !ok {
			return Fault{}, errNoHolder
		}
		f.Detail = fmt.Sprintf("backend %d terminated", backend)
	case FaultSilence:
		for _, p := range w.proxies {
			p.Blackhole()
		}
		sleep(ctx, c.cfg.Silence)
		for _, p := range w.proxies {
			p.Resume()
		}
		f.Detail = fmt.Sprintf("network silent for %v", c.cfg.Silence)
	default:
		return Fault{}, fmt.Errorf("chaos: unknown fault kind %q", kind)
	}
	f.End = time.Now().UnixNano()
	return f, nil
}

// restart restarts the primary, in immediate (crash) and fast mode in
// turn.
func (c *controller) restart() (Fault, error) {
	mode := "immediate"
	if c.restarts%2 == 1 {
		mode = "fast"
	}
	c.restarts++
	f := Fault{Kind: FaultRestart, Start: time.Now().UnixNano(), Detail: "pg_ctl restart -m " + mode}
	if err := c.primary.RestartMode(mode); err != nil {
		return Fault{}, fmt.Errorf("chaos: restarting the server: %w", err)
	}
	f.End = time.Now().UnixNano()
	return f, c.reopenAdmin()
}

// failover stops the primary as a crash would and promotes its standby;
// the workers' multi-host connection strings (target_session_attrs
// read-write) find it. With the counter on a server of its own, the
// standby is first made asynchronous and its replication frozen while the
// workers go on taking the lock on the primary alone: the promoted standby
// has lost those commits, and hands out their transaction ids again.
func (c *controller) failover(ctx context.Context) (Fault, error) {
	state, err := c.waitSync(ctx)
	if err != nil {
		return Fault{}, fmt.Errorf("chaos: before the failover: %w", err)
	}
	f := Fault{Kind: FaultFailover, Start: time.Now().UnixNano(),
		Detail: fmt.Sprintf("primary stopped (-m immediate), standby (replication %s) promoted", state)}
	if c.resource != nil {
		lost, err := c.freezeReplication(ctx)
		if err != nil {
			return Fault{}, err
		}
		f.Detail = fmt.Sprintf("standby made asynchronous and cut off, %d grants on the primary alone (their commits lost), primary stopped (-m immediate), standby promoted", lost)
	}
	if err := c.primary.StopMode("immediate"); err != nil {
		return Fault{}, fmt.Errorf("chaos: stopping the primary: %w", err)
	}
	sdb, err := sql.Open("pgx", c.standby.DSN())
	if err != nil {
		return Fault{}, err
	}
	defer sdb.Close()
	var promoted bool
	if err := sdb.QueryRowContext(ctx, `SELECT pg_promote(true, 60)`).Scan(&promoted); err != nil || !promoted {
		return Fault{}, fmt.Errorf("chaos: promoting the standby: %v (promoted %v)", err, promoted)
	}
	// The standby's configuration is a copy of the primary's: make sure it
	// waits for no synchronous standby of its own.
	if _, err := sdb.ExecContext(ctx, `ALTER SYSTEM RESET synchronous_standby_names`); err != nil {
		return Fault{}, fmt.Errorf("chaos: configuring the new primary: %w", err)
	}
	if _, err := sdb.ExecContext(ctx, `SELECT pg_reload_conf()`); err != nil {
		return Fault{}, fmt.Errorf("chaos: configuring the new primary: %w", err)
	}
	c.primary, c.standby = c.standby, nil
	if c.pooler != nil {
		// PgBouncer 1.18 has no target_session_attrs: the run repoints it.
		if err := c.pooler.Retarget(c.primary.DSN()); err != nil {
			return Fault{}, fmt.Errorf("chaos: repointing the pooler: %w", err)
		}
		f.Detail += "; the pooler repointed at it"
	}
	f.End = time.Now().UnixNano()
	return f, c.reopenAdmin()
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// frozenFor is how long the workers take the lock on the primary alone
// before an asynchronous failover.
const frozenFor = time.Second

// freezeReplication makes the standby asynchronous and cuts it off from
// the primary, then lets the workers take the lock on the primary alone
// for frozenFor, and returns how many grants began meanwhile.
func (c *controller) freezeReplication(ctx context.Context) (int, error) {
	for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = ''`, `SELECT pg_reload_conf()`} {
		if _, err := c.admin.ExecContext(ctx, q); err != nil {
			return 0, fmt.Errorf("chaos: making the standby asynchronous: %w", err)
		}
	}
	sdb, err := sql.Open("pgx", c.standby.DSN())
	if err != nil {
		return 0, err
	}
	defer sdb.Close()
	for _, q := range []string{`ALTER SYSTEM SET primary_conninfo = ''`, `SELECT pg_reload_conf()`} {
		if _, err := sdb.ExecContext(ctx, q); err != nil {
			return 0, fmt.Errorf("chaos: cutting the standby off: %w", err)
		}
	}
	deadline := time.Now().Add(syncWait)
	for {
		var n int
		err := c.admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_replication`).Scan(&n)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("chaos: the standby still replicates after %v (%d, %v)", syncWait, n, err)
		}
		sleep(ctx, 20*time.Millisecond)
	}
	before := countBegins(c.cfg.Dir)
	sleep(ctx, frozenFor)
	return countBegins(c.cfg.Dir) - before, nil
}

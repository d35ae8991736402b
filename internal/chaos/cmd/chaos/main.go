// Command chaos runs the chaos run of go-advisory-lock (make chaos): worker
// processes contend for one lock on a throwaway cluster with a synchronous
// standby while faults are injected, and the checker's report is printed
// as markdown. It exits 1 if the run found a violation. See package
// internal/chaos.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/advisorylock/go-advisory-lock/internal/chaos"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

func main() {
	if code, ok := chaos.Child(); ok {
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := chaos.DefaultConfig()
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Grants, "grants", cfg.Grants, "run until at least this many grants")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "and for at least this long")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "fail if the run takes longer than this")
	fs.IntVar(&cfg.PQ, "pq", cfg.PQ, "library workers on lib/pq")
	fs.IntVar(&cfg.PGX, "pgx", cfg.PGX, "library workers on pgx")
	fs.IntVar(&cfg.Withlock, "withlock", cfg.Withlock, "withlock workers")
	fs.IntVar(&cfg.PQSessions, "pq-sessions", cfg.PQSessions, "of the lib/pq library workers, how many share sessions (sqllock.WithSessions)")
	fs.IntVar(&cfg.PGXSessions, "pgx-sessions", cfg.PGXSessions, "of the pgx library workers, how many share sessions (sqllock.WithSessions)")
	fs.IntVar(&cfg.PooledPQ, "pooled-pq", cfg.PooledPQ, "library workers on lib/pq behind a PgBouncer in transaction mode")
	fs.IntVar(&cfg.PooledPGX, "pooled-pgx", cfg.PooledPGX, "library workers on pgx, sharing sessions, behind the PgBouncer")
	fs.IntVar(&cfg.PooledWithlock, "pooled-withlock", cfg.PooledWithlock, "withlock workers behind the PgBouncer")
	fs.Int64Var(&cfg.Seed, "seed", 0, "seed of the fault schedule (0: random)")
	unfenced := fs.Bool("unfenced", false, "do not guard writes with the tokens, to show the damage")
	noFailover := fs.Bool("no-failover", false, "run without a standby (no failover fault)")
	keep := fs.Bool("keep", false, "keep the records directory")
	quiet := fs.Bool("q", false, "do not log each fault on stderr")
	if err := fs.Parse(args); err != nil {
		return 64
	}
	cfg.Fenced = !*unfenced
	if !*quiet {
		cfg.Log = stderr
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "chaos: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "chaos-")
	if err != nil {
		return fail(err)
	}
	if *keep {
		fmt.Fprintf(stderr, "chaos: records in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	cfg.Dir = dir
	if cfg.Self, err = os.Executable(); err != nil {
		return fail(err)
	}
	if cfg.Withlock+cfg.PooledWithlock > 0 {
		if cfg.WithlockPath, err = chaos.BuildWithlock(ctx, dir); err != nil {
			return fail(err)
		}
	}

	primary, err := pgtest.StartCluster()
	if err != nil {
		return fail(err)
	}
	defer destroy(stderr, primary)
	resource, err := pgtest.StartCluster()
	if err != nil {
		return fail(err)
	}
	defer destroy(stderr, resource)
	srv := chaos.Servers{Primary: primary, Resource: resource}
	if !*noFailover {
		if srv.Standby, err = pgtest.StartStandby(primary); err != nil {
			return fail(err)
		}
		defer destroy(stderr, srv.Standby)
	}

	res, err := chaos.Run(ctx, cfg, srv)
	if err != nil {
		return fail(err)
	}
	res.Run.Command = "make chaos"
	if len(args) > 0 {
		res.Run.Command = "make chaos CHAOSFLAGS='" + strings.Join(args, " ") + "'"
	}
	if err := res.WriteReport(stdout); err != nil {
		return fail(err)
	}
	if res.Failed() {
		return 1
	}
	return 0
}

func destroy(stderr io.Writer, c *pgtest.Cluster) {
	if err := c.Destroy(); err != nil {
		fmt.Fprintf(stderr, "chaos: %v\n", err)
	}
}

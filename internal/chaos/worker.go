package chaos

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	_ "github.com/lib/pq"              // the "postgres" database/sql driver

	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// Bounds of a library worker's loop.
const (
	maxWait      = 2 * time.Second        // one WithLock's wait, so that a stop request is seen soon
	retryPause   = 50 * time.Millisecond  // after a lock attempt failed (server down, ...)
	connMaxIdle  = 500 * time.Millisecond // idle pooled connections close soon: a restart or failover leaves few dead ones to find
	tokenEnvName = "WITHLOCK_TOKEN"       // where withlock --fencing puts the token
)

// runWorker is a library worker: it takes the lock with WithLock, on the
// Spec's driver, and runs one critical section per grant, until SIGTERM.
func runWorker(s Spec) int {
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	rec, db, err := openWorker(s, s.DSN)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos worker %s: %v\n", s.Worker, err)
		return 2
	}
	defer rec.Close()
	defer db.Close()
	db.SetConnMaxIdleTime(connMaxIdle)
	counter := db
	if s.ResourceDSN != "" {
		if counter, err = sql.Open(s.Driver, s.ResourceDSN); err != nil {
			fmt.Fprintf(os.Stderr, "chaos worker %s: %v\n", s.Worker, err)
			return 2
		}
		defer counter.Close()
	}

	opts := []sqllock.Option{sqllock.WithFencing(), sqllock.WithKeepAlive(s.KeepAlive, s.KeepAliveTimeout), sqllock.WithLease(s.Lease)}
	if s.Sessions > 0 {
		opts = append(opts, sqllock.WithSessions(s.Sessions))
	}
	locker := sqllock.New(db, opts...)
	mu := locker.Mutex(s.LockName)
	sec := newSection(s, counter, rec, os.Getpid())
	for stop.Err() == nil {
		var token uint64
		// The section's context is not stop's: a stop request lets the
		// section in progress finish.
		err := mu.WithLock(context.Background(), func(ctx context.Context) error {
			start := time.Now()
			tok, ok := sqllock.Token(ctx)
			if !ok {
				return errors.New("chaos: no fencing token in WithLock's context")
			}
			token = tok
			return sec.run(ctx, tok, start)
		}, sqllock.MaxWait(maxWait))
		switch {
		case errors.Is(err, sqllock.ErrLockLost):
			if werr := rec.Write(Record{Ev: EvLoss, Worker: s.Worker, PID: os.Getpid(), Holder: os.Getpid(), Token: token, T: time.Now().UnixNano(), Err: err.Error()}); werr != nil {
				fmt.Fprintf(os.Stderr, "chaos worker %s: %v\n", s.Worker, werr)
				return 1
			}
		case err != nil:
			// Not acquired (the server is down or failing over, or the
			// wait was bounded), or a release that failed. Try again.
			fmt.Fprintf(os.Stderr, "chaos worker %s: %v\n", s.Worker, err)
			time.Sleep(retryPause)
		}
	}
	return 0
}

// runSectionCommand is the command withlock runs: one critical section
// under the token withlock --fencing gives it. SIGTERM from withlock means
// the lock was lost.
func runSectionCommand(s Spec) int {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		if _, ok := <-sig; ok {
			cancel(errTerminated)
		}
	}()
	defer signal.Stop(sig)

	start := time.Now()
	token, err := strconv.ParseUint(os.Getenv(tokenEnvName), 10, 64)
	if err != nil || token == 0 {
		fmt.Fprintf(os.Stderr, "chaos section %s: bad %s %q\n", s.Worker, tokenEnvName, os.Getenv(tokenEnvName))
		return 2
	}
	dsn := s.DSN
	if s.ResourceDSN != "" {
		dsn = s.ResourceDSN
	}
	rec, db, err := openWorker(s, dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos section %s: %v\n", s.Worker, err)
		return 2
	}
	defer rec.Close()
	defer db.Close()
	if err := newSection(s, db, rec, withlockPID()).run(ctx, token, start); err != nil {
		fmt.Fprintf(os.Stderr, "chaos section %s: %v\n", s.Worker, err)
		return 1
	}
	return 0
}

// withlockPID is the pid of the withlock that runs this section: its
// parent, or its grandparent where withlock runs commands under a guard
// (Linux: the parent is then "withlock (guard)").
func withlockPID() int {
	ppid := os.Getppid()
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
	if err != nil || !strings.HasPrefix(string(cmdline), "withlock (guard)\x00") {
		return ppid
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", ppid))
	if err != nil {
		return ppid
	}
	// The fields after the command name, which is in parentheses: state,
	// then the parent's pid.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return ppid
	}
	if gp, err := strconv.Atoi(f[1]); err == nil {
		return gp
	}
	return ppid
}

// openWorker opens what a worker process records to, and the database at
// dsn.
func openWorker(s Spec, dsn string) (*Recorder, *sql.DB, error) {
	rec, err := OpenRecorder(s.Records)
	if err != nil {
		return nil, nil, err
	}
	db, err := sql.Open(s.Driver, dsn)
	if err != nil {
		_ = rec.Close()
		return nil, nil, err
	}
	return rec, db, nil
}

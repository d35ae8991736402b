package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// NewStandby starts a hot standby of primary: a streaming replica made with
// pg_basebackup -R, on a port of its own, answering read-only queries while
// in recovery. It is stopped and deleted when the test ends.
func NewStandby(tb testing.TB, primary *Cluster) *Cluster {
	tb.Helper()
	start := time.Now()
	s, err := startStandby(primary)
	if err != nil {
		if errors.Is(err, errUnavailable) {
			skipOrFatal(tb, "pgtest: NewStandby: %v", err)
		}
		tb.Fatalf("pgtest: NewStandby: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.destroy(); err != nil {
			tb.Errorf("pgtest: cleaning up standby: %v", err)
		}
	})
	tb.Logf("pgtest: standby of port %d on port %d ready in %v", primary.port, s.port, time.Since(start).Round(time.Millisecond))
	return s
}

// StartStandby starts a hot standby of primary, as [NewStandby] does, for
// programs outside tests (the chaos run). The caller must call Destroy.
func StartStandby(primary *Cluster) (*Cluster, error) { return startStandby(primary) }

// startStandby makes and starts a standby of primary. On failure nothing is
// left behind.
func startStandby(primary *Cluster) (_ *Cluster, err error) {
	// pg_basebackup of the same installation as pg_ctl, which may be a
	// symbolic link into it.
	pgCtl, lerr := filepath.EvalSymlinks(primary.pgCtl)
	if lerr != nil {
		pgCtl = primary.pgCtl
	}
	basebackup := filepath.Join(filepath.Dir(pgCtl), "pg_basebackup")
	if _, err := os.Stat(basebackup); err != nil {
		return nil, fmt.Errorf("%w: no pg_basebackup beside %s: %v", errUnavailable, pgCtl, err)
	}
	base, err := os.MkdirTemp(tempRoot(primary.runAs != nil), "pgtest-standby-")
	if err != nil {
		return nil, err
	}
	s := &Cluster{
		pgCtl:   primary.pgCtl,
		base:    base,
		dataDir: filepath.Join(base, "data"),
		logFile: filepath.Join(base, "postgres.log"),
		runAs:   primary.runAs,
	}
	defer func() {
		if err != nil {
			if derr := s.destroy(); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
		}
	}()
	if err := s.chown(base); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	out, err := s.run(ctx, basebackup, "-D", s.dataDir, "-R", "-X", "stream", "--no-sync",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", superuser)
	if err != nil {
		return nil, fmt.Errorf("pg_basebackup: %v\n%s", err, out)
	}
	// The copy includes the primary's pgtest.conf, whose socket directory
	// is the primary's; point it at the standby's own.
	if err := s.configure(nil); err != nil {
		return nil, err
	}
	if s.port, err = freePort(); err != nil {
		return nil, err
	}
	if err := s.writePortConf(); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, fmt.Errorf("starting standby: %w", err)
	}
	return s, nil
}

package chaos_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/advisorylock/go-advisory-lock/internal/chaos"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

// TestMain lets the test binary be the run's workers and sections too.
func TestMain(m *testing.M) {
	if code, ok := chaos.Child(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestChaosShort is a short chaos run (ShortConfig: one worker of each
// kind, every fault kind once, at least 100 grants) on a cluster of its own
// with a standby, which it fails over to asynchronously, losing commits;
// the counter lives on a third. It fails on any violation the checker finds.
// Without PostgreSQL's server binaries it skips, or fails when CI is true.
func TestChaosShort(t *testing.T) {
	primary := pgtest.NewCluster(t)
	standby := pgtest.NewStandby(t, primary)
	resource := pgtest.NewCluster(t)
	dir := t.TempDir()
	cfg := chaos.ShortConfig()
	cfg.Dir = dir
	var err error
	if cfg.Self, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	if cfg.WithlockPath, err = chaos.BuildWithlock(t.Context(), dir); err != nil {
		t.Fatal(err)
	}
	cfg.Log = logWriter{t}

	res, err := chaos.Run(t.Context(), cfg, chaos.Servers{Primary: primary, Standby: standby, Resource: resource})
	if err != nil {
		t.Fatal(err)
	}
	res.Run.Command = "go test -run TestChaosShort ./internal/chaos"
	var report bytes.Buffer
	if err := res.WriteReport(&report); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", report.String())
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	if res.Grants < cfg.Grants {
		t.Errorf("got %d grants, want at least %d", res.Grants, cfg.Grants)
	}
	for _, k := range chaos.FaultKinds {
		if res.Faults[k] == 0 {
			t.Errorf("no %s fault injected", k)
		}
	}
}

// logWriter sends the run's progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Environment variables that make this program a child of the run.
const (
	envRole = "CHAOS_ROLE" // "worker" or "section"
	envSpec = "CHAOS_SPEC" // the Spec, as JSON
)

// Child roles.
const (
	roleWorker  = "worker"  // a library worker: takes the lock in a loop
	roleSection = "section" // one critical section, run by withlock
)

// Worker kinds.
const (
	KindPQ       = "pq"       // library worker on lib/pq
	KindPGX      = "pgx"      // library worker on pgx's database/sql driver
	KindWithlock = "withlock" // withlock in a loop; sections on the Spec's driver
)

// A Spec tells a child process what to do. The controller passes it in the
// environment, so that it survives withlock, which passes its environment
// on to the command it runs.
type Spec struct {
	Worker           string        `json:"worker"`
	Kind             string        `json:"kind"`
	Driver           string        `json:"driver"`       // database/sql driver name: "postgres" (lib/pq) or "pgx"
	DSN              string        `json:"dsn"`          // the locks' server
	ResourceDSN      string        `json:"resource_dsn"` // the protected counter's server
	Records          string        `json:"records"`
	LockName         string        `json:"lock"`
	Fenced           bool          `json:"fenced"`
	KeepAlive        time.Duration `json:"keepalive"`
	KeepAliveTimeout time.Duration `json:"keepalive_timeout"`
	Lease            time.Duration `json:"lease"`    // a library worker's sqllock.WithLease
	Sessions         int           `json:"sessions"` // a library worker's sqllock.WithSessions; 0: a connection per lock
	Pooled           bool          `json:"pooled"`   // DSN reaches the server through a transaction-mode pooler
	WorkMin          time.Duration `json:"work_min"`
	WorkMax          time.Duration `json:"work_max"`
}

// env returns the environment of a child with role r.
func (s Spec) env(r string) ([]string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return append(os.Environ(), envRole+"="+r, envSpec+"="+string(b)), nil
}

// Child runs this process as a child of a chaos run, if its environment
// says it is one: it then returns the exit code and true. Otherwise it
// returns false at once. Call it first thing in main (and in TestMain of a
// test that calls [Run], since the children are the test binary again).
func Child() (code int, ok bool) {
	role := os.Getenv(envRole)
	if role == "" {
		return 0, false
	}
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv(envSpec)), &s); err != nil {
		fmt.Fprintf(os.Stderr, "chaos %s: bad %s: %v\n", role, envSpec, err)
		return 2, true
	}
	switch role {
	case roleWorker:
		return runWorker(s), true
	case roleSection:
		return runSectionCommand(s), true
	}
	fmt.Fprintf(os.Stderr, "chaos: unknown %s %q\n", envRole, role)
	return 2, true
}

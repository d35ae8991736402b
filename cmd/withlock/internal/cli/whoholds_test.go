package cli

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// TestReportHoldersBounded checks that the -v lookup of a lock's holders
// gives up when the server stops answering, instead of holding up
// withlock's exit.
func TestReportHoldersBounded(t *testing.T) {
	u, err := url.Parse(pgtest.DSN(t))
	if err != nil || u.Host == "" {
		t.Skipf("the test server's connection string is not a URL with a host")
	}
	p, err := tcpproxy.Listen(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	u.Host = p.Addr()
	cfg, err := parseDB(dbSource{dsn: u.String(), from: "test"}, "withlock-test")
	if err != nil {
		t.Fatal(err)
	}
	db, err := connect(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := lookupScheme(defaultScheme)
	if err != nil {
		t.Fatal(err)
	}
	o := &runOptions{lockName: t.Name(), scheme: s}
	mu := sqllock.New(db, sqllock.WithKeyspace(s.strategy)).Mutex(o.lockName)
	var out bytes.Buffer
	log := &logger{w: &out, verbose: true}

	reportHolders(t.Context(), mu, o, log) // answered: the lock is free
	if want := "has no holder now"; !strings.Contains(out.String(), want) {
		t.Errorf("free lock: got %q, want it to contain %q", out.String(), want)
	}

	out.Reset()
	p.Blackhole()
	start := time.Now()
	reportHolders(t.Context(), mu, o, log)
	if took, limit := time.Since(start), holdersTimeout+2*time.Second; took > limit {
		t.Errorf("the lookup took %v with a silent server, want at most %v", took, limit)
	}
	if want := "cannot tell who holds lock"; !strings.Contains(out.String(), want) {
		t.Errorf("silent server: got %q, want it to contain %q", out.String(), want)
	}
}

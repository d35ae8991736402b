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
	l := sqllock.New(db, sqllock.WithKeyspace(s.strategy))
	lock := newHold(l, &runOptions{lockName: t.Name(), scheme: s})
	semOpts := &runOptions{lockName: t.Name() + "/sem", scheme: s, slots: 2}
	if semOpts.semKeys, err = s.semaphoreKeys(semOpts.lockName, semOpts.slots); err != nil {
		t.Fatal(err)
	}
	sem := newHold(l, semOpts)
	var out bytes.Buffer
	log := &logger{w: &out, verbose: true}

	// Answered: the lock and the slots are free.
	for h, want := range map[*hold]string{lock: "has no holder now", sem: "has 2 free slots now"} {
		out.Reset()
		h.reportHolders(t.Context(), log)
		if !strings.Contains(out.String(), want) {
			t.Errorf("free %s: got %q, want it to contain %q", h.noun(), out.String(), want)
		}
	}

	p.Blackhole()
	for h, want := range map[*hold]string{lock: "cannot tell who holds lock", sem: "cannot tell who holds the slots of semaphore"} {
		out.Reset()
		start := time.Now()
		h.reportHolders(t.Context(), log)
		if took, limit := time.Since(start), holdersTimeout+2*time.Second; took > limit {
			t.Errorf("%s: the lookup took %v with a silent server, want at most %v", h.noun(), took, limit)
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("%s, silent server: got %q, want it to contain %q", h.noun(), out.String(), want)
		}
	}
}

package pgtest

import (
	"net/url"
	"testing"
	"time"
)

// A pooler started for a program passes each client's own role on to the
// server, and Retarget points it at another server: connections opened
// after the reload reach the new one.
func TestBouncerRetarget(t *testing.T) {
	t.Parallel()
	a, b := NewCluster(t), NewCluster(t)
	const role = "pgtest_pooled"
	for _, c := range []*Cluster{a, b} {
		if _, err := open(t, "pgx", c.DSN()).Exec("CREATE ROLE " + role + " LOGIN"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := StartBouncer(BouncerConfig{Target: a.DSN(), PoolMode: "transaction", PoolSize: 2, Users: []string{role}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	u, err := url.Parse(p.DSN())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	dsn := u.String() + "&default_query_exec_mode=exec"
	port := func() int64 {
		db := open(t, "pgx", dsn) // a client connection of its own each time
		var user string
		if err := db.QueryRow("SELECT current_user").Scan(&user); err != nil {
			t.Fatal(err)
		}
		if user != role {
			t.Errorf("signed in to the server as %q, want %q", user, role)
		}
		n := queryInt(t, db, "SELECT inet_server_port()")
		db.Close()
		return n
	}
	if got := port(); got != int64(a.Port()) {
		t.Fatalf("through the pooler: server port %d, want %d", got, a.Port())
	}
	if err := p.Retarget(b.DSN()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := port()
		if got == int64(b.Port()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Retarget: server port %d, want %d", got, b.Port())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package interop_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/advisorylock/go-advisory-lock/interop/harness"
)

// A client in another language, driven through a script of testdata/ or
// node/ that takes the lock as the library's users do: "hold" prints held
// and keeps the lock until its input ends; "try" prints acquired or refused.
type client struct {
	what    string   // the library, for messages
	install string   // how to install it
	probe   []string // a command that exits 0 when it is installed
	cmd     []string // the script, before its mode argument
	args    func(db *harness.DB, name string) []string
}

// check proves that c and `withlock --keyspace ks` contend for name in both
// directions; name "" stands for the database's name.
func (c client) check(t *testing.T, ks, name string) {
	harness.RequireCommand(t, c.what, c.install, c.probe...)
	lockName := func(db *harness.DB) string {
		if name == "" {
			return db.Name
		}
		return name
	}
	run := func(mode string, db *harness.DB) []string {
		return append(append(append([]string(nil), c.cmd[1:]...), mode), c.args(db, lockName(db))...)
	}
	t.Run("ClientHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		release := harness.Hold(t, c.cmd[0], run("hold", db)...)
		db.WantHeld(t, harness.Key(t, ks, lockName(db)))
		if got := db.TryWithlock(t, ks, lockName(db)); got != 75 {
			t.Errorf("withlock -n --keyspace %s while %s holds the lock: exit %d, want 75", ks, c.what, got)
		}
		release()
		if got := db.TryWithlock(t, ks, lockName(db)); got != 0 {
			t.Errorf("withlock -n after %s released: exit %d, want 0", c.what, got)
		}
	})
	t.Run("WithlockHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		release := db.HoldWithlock(t, ks, lockName(db))
		if got := harness.Run(t, c.cmd[0], run("try", db)...); got != "refused" {
			t.Errorf("%s while withlock holds the lock: %q, want refused", c.what, got)
		}
		release()
		if got := harness.Run(t, c.cmd[0], run("try", db)...); got != "acquired" {
			t.Errorf("%s after withlock released: %q, want acquired", c.what, got)
		}
	})
}

// Rails' migrator (Debian ruby-activerecord 6.1, ruby-pg): keyspace
// rails-migrations, whose lock name is the database name.
func TestRailsMigrations(t *testing.T) {
	c := client{
		what:    "Rails' ActiveRecord with ruby-pg under /usr/bin/ruby",
		install: "apt-get install ruby-activerecord ruby-pg (scripts/provision)",
		probe:   []string{"/usr/bin/ruby", "-e", `require "active_record"; require "pg"`},
		cmd:     []string{"/usr/bin/ruby", "testdata/rails_migrate.rb"},
		args:    func(db *harness.DB, _ string) []string { return []string{db.DSN} },
	}
	c.check(t, "rails-migrations", "")
}

// Python's django-pglocks (Debian python3-django-pglocks 1.0.4): keyspace
// django-pglocks, with a name whose CRC-32 has its top bit clear and one
// whose CRC-32 has it set (a negative key).
func TestDjangoPGLocks(t *testing.T) {
	c := client{
		what:    "django-pglocks with psycopg2 under /usr/bin/python3",
		install: "apt-get install python3-django-pglocks python3-psycopg2 (scripts/provision)",
		probe:   []string{"/usr/bin/python3", "-c", "import django, django_pglocks, psycopg2"},
		cmd:     []string{"/usr/bin/python3", "testdata/djangolock.py"},
		args:    func(db *harness.DB, name string) []string { return []string{db.DSN, name} },
	}
	for _, name := range []string{"dbmigration", "myapp_production"} { // CRC-32 0x7b8d2177, 0xf8d32a13
		t.Run(name, func(t *testing.T) { c.check(t, "django-pglocks", name) })
	}
}

// The npm package advisory-lock 2.0.0 (interop/node, npm ci): keyspace node.
func TestNodeAdvisoryLock(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		harness.Require(t, false, "node", "apt-get install nodejs npm (scripts/provision)")
	}
	_, err = os.Stat(filepath.Join("node", "node_modules", "advisory-lock", "package.json"))
	harness.Require(t, err == nil, "interop/node/node_modules/advisory-lock", "cd interop/node && npm ci (scripts/provision)")
	c := client{
		what:    "npm advisory-lock 2.0.0",
		install: "cd interop/node && npm ci",
		probe:   []string{node, "-e", `require("./node/node_modules/advisory-lock")`},
		cmd:     []string{node, "node/lock.js"},
		args:    func(db *harness.DB, name string) []string { return []string{db.DSN, name} },
	}
	c.check(t, "node", "dbmigration")
}

package sqllock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"

	"github.com/advisorylock/go-advisory-lock/internal/fakedriver"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

func addrOf(conn *sql.Conn) uintptr {
	return sqltext.ConnAddr(sqllock.DriverConn(conn))
}

// Wrappers as instrumentation libraries write them: otelsql keeps the
// driver it wraps in an unexported field, sqlhooks embeds it.
type (
	fieldWrapper  struct{ wrapped driver.Driver }
	embedWrapper  struct{ driver.Driver }
	wrapConnector struct{ d driver.Driver }
)

func (w fieldWrapper) Open(name string) (driver.Conn, error) { return w.wrapped.Open(name) }

func (c wrapConnector) Connect(context.Context) (driver.Conn, error) { return nil, driver.ErrBadConn }
func (c wrapConnector) Driver() driver.Driver                        { return c.d }

// pgx is recognised under wrappers, so that they do not silently turn its
// one statement per operation into one prepared statement per key.
func TestIsPgxUnderWrappers(t *testing.T) {
	pgx := stdlib.GetDefaultDriver()
	for _, tc := range []struct {
		name string
		d    driver.Driver
		want bool
	}{
		{"pgx", pgx, true},
		{"field", fieldWrapper{pgx}, true},
		{"embedded", embedWrapper{pgx}, true},
		{"pointer to nested", &fieldWrapper{embedWrapper{pgx}}, true},
		{"lib/pq", &pq.Driver{}, false},
		{"wrapped lib/pq", fieldWrapper{&pq.Driver{}}, false},
		{"nil inside", fieldWrapper{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := sql.OpenDB(wrapConnector{tc.d})
			defer db.Close()
			if got := drv.IsPgx(db); got != tc.want {
				t.Errorf("isPgx(%T) = %v, want %v", tc.d, got, tc.want)
			}
		})
	}
}

// Each driver connection has its own owner token, the same on every
// checkout; lock statements do not share their argument slices.
func TestOwnerToken(t *testing.T) {
	db := sql.OpenDB(&fakedriver.Connector{})
	defer db.Close()
	ctx := context.Background()
	a, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ta, tb := sqltext.OwnerToken(addrOf(a)), sqltext.OwnerToken(addrOf(b))
	if ta == tb || !strings.HasPrefix(ta, sqltext.ProcessToken()) {
		t.Errorf("tokens %q and %q: want distinct, with the process token %q", ta, tb, sqltext.ProcessToken())
	}
	a.Close()
	again, err := db.Conn(ctx) // the pool hands back a's driver connection
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	defer b.Close()
	if got := sqltext.OwnerToken(addrOf(again)); got != ta {
		t.Errorf("same driver connection, token %q then %q", ta, got)
	}

	v := sqltext.BuildVerify(true, false)
	_, args1 := v.Statement(1)
	_, args2 := v.Statement(2)
	if args1[0].Value != sqltext.OwnerToken(1) || args2[0].Value != sqltext.OwnerToken(2) {
		t.Errorf("argument slices shared: %v %v", args1, args2)
	}
}

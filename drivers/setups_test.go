package drivers_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"testing"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/XSAM/otelsql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/qustavo/sqlhooks/v2"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// A setup is one row of docs/drivers.md: how an application opens its
// *sql.DB. dsn gives the connection string it opens (the test server's,
// with parameters, or a PgBouncer's); open opens it, in the test process
// or in a child process that contends with it. close releases what open
// made beyond the *sql.DB (a pgxpool).
type setup struct {
	name string
	dsn  func(tb testing.TB) string
	open func(dsn string) (db *sql.DB, close func(), err error)
}

// modes gives, for the rows that prove a mode of the library rather than
// of the driver, the options their Lockers get.
var modes = map[string][]sqllock.Option{
	"libpq-sessions":                       {sqllock.WithSessions(2)},
	"pgx-sessions":                         {sqllock.WithSessions(2)},
	"pgbouncer-transaction-sessions":       {sqllock.WithSessions(2)},
	"pgbouncer-transaction-libpq-sessions": {sqllock.WithSessions(2)},
	"pgbouncer-transaction-bun-sessions":   {sqllock.WithSessions(2)},
}

// opts returns the options of s's Lockers.
func (s setup) opts() []sqllock.Option { return modes[s.name] }

// setups are the rows of the matrix, in the order of docs/drivers.md.
var setups = []setup{
	{"libpq", serverDSN(""), sqlOpen("postgres")},
	{"libpq-connector", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		c, err := pq.NewConnector(dsn)
		if err != nil {
			return nil, nil, err
		}
		return sql.OpenDB(c), nil, nil
	}},
	{"libpq-binary-parameters", serverDSN("binary_parameters=yes"), sqlOpen("postgres")},
	{"pgx", serverDSN(""), sqlOpen("pgx")},
	{"pgx-opendb", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, nil, err
		}
		return stdlib.OpenDB(*cfg), nil, nil
	}},
	{"pgx-poolbridge", serverDSN("pool_max_conns=20"), func(dsn string) (*sql.DB, func(), error) {
		pool, err := pgxpool.New(context.Background(), dsn)
		if err != nil {
			return nil, nil, err
		}
		return stdlib.OpenDBFromPool(pool), pool.Close, nil
	}},
	{"pgx-simple-protocol", serverDSN("default_query_exec_mode=simple_protocol"), sqlOpen("pgx")},
	{"pgx-exec", serverDSN("default_query_exec_mode=exec"), sqlOpen("pgx")},
	{"pgx-cache-describe", serverDSN("default_query_exec_mode=cache_describe"), sqlOpen("pgx")},
	{"pgx-cancel-request", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, nil, err
		}
		cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: time.Second}
		}
		return stdlib.OpenDB(*cfg), nil, nil
	}},
	{"otelsql-pgx", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		db, err := otelsql.Open("pgx", dsn)
		return db, nil, err
	}},
	{"otelsql-libpq", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		db, err := otelsql.Open("postgres", dsn)
		return db, nil, err
	}},
	{"sqlhooks-pgx", serverDSN(""), sqlOpen(hooksDriver)},
	{"bun-pgdriver", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		return sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn))), nil, nil
	}},
	{"gorm", serverDSN(""), openGorm(false)},
	{"gorm-prepare-stmt", serverDSN(""), openGorm(true)},
	{"sqlx", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		db, err := sqlx.Open("pgx", dsn)
		if err != nil {
			return nil, nil, err
		}
		return db.DB, nil, nil
	}},
	{"bun", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, nil, err
		}
		return bun.NewDB(db, pgdialect.New()).DB, nil, nil
	}},
	{"ent", serverDSN(""), func(dsn string) (*sql.DB, func(), error) {
		drv, err := entsql.Open(dialect.Postgres, dsn)
		if err != nil {
			return nil, nil, err
		}
		return drv.DB(), nil, nil
	}},
	{"libpq-sessions", serverDSN(""), sqlOpen("postgres")},
	{"pgx-sessions", serverDSN(""), sqlOpen("pgx")},
	{"pgbouncer-session", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "session", 8).DSN()
	}, sqlOpen("pgx")},
	// Behind a transaction pooler each lock is held in a transaction of its
	// own; each driver's own queries there need a mode that the pooler
	// carries (docs/drivers.md).
	{"pgbouncer-transaction", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN() + "&default_query_exec_mode=exec"
	}, sqlOpen("pgx")},
	{"pgbouncer-transaction-libpq", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN() + "&binary_parameters=yes"
	}, sqlOpen("postgres")},
	{"pgbouncer-transaction-bun-pgdriver", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN()
	}, func(dsn string) (*sql.DB, func(), error) {
		return sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn))), nil, nil
	}},
	// WithSessions behind a transaction pooler: each session carries its
	// locks in a transaction it holds open while it carries any.
	{"pgbouncer-transaction-sessions", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN() + "&default_query_exec_mode=exec"
	}, sqlOpen("pgx")},
	{"pgbouncer-transaction-libpq-sessions", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN() + "&binary_parameters=yes"
	}, sqlOpen("postgres")},
	{"pgbouncer-transaction-bun-sessions", func(tb testing.TB) string {
		return pgtest.NewBouncer(tb, "transaction", 8).DSN()
	}, func(dsn string) (*sql.DB, func(), error) {
		return sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn))), nil, nil
	}},
}

// hooksDriver is pgx's driver wrapped by sqlhooks with hooks that do
// nothing, registered once for the test binary (database/sql's registry
// is global: this is the one registration the tests make).
const hooksDriver = "pgx-sqlhooks"

func init() {
	sql.Register(hooksDriver, sqlhooks.Wrap(stdlib.GetDefaultDriver(), noHooks{}))
}

type noHooks struct{}

func (noHooks) Before(ctx context.Context, _ string, _ ...any) (context.Context, error) {
	return ctx, nil
}

func (noHooks) After(ctx context.Context, _ string, _ ...any) (context.Context, error) {
	return ctx, nil
}

// serverDSN returns the test server's connection string with params added.
func serverDSN(params string) func(tb testing.TB) string {
	return func(tb testing.TB) string {
		dsn := pgtest.DSN(tb)
		if params == "" {
			return dsn
		}
		return dsn + sep(dsn) + params
	}
}

func sep(dsn string) string {
	for _, r := range dsn {
		if r == '?' {
			return "&"
		}
	}
	return "?"
}

func sqlOpen(driverName string) func(dsn string) (*sql.DB, func(), error) {
	return func(dsn string) (*sql.DB, func(), error) {
		db, err := sql.Open(driverName, dsn)
		return db, nil, err
	}
}

func openGorm(prepareStmt bool) func(dsn string) (*sql.DB, func(), error) {
	return func(dsn string) (*sql.DB, func(), error) {
		gdb, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard, PrepareStmt: prepareStmt})
		if err != nil {
			return nil, nil, err
		}
		db, err := gdb.DB()
		return db, nil, err
	}
}

// openSetup opens s for a test: the database and whatever else open made
// are closed when the test ends.
func openSetup(tb testing.TB, s setup) (*sql.DB, string) {
	tb.Helper()
	dsn := s.dsn(tb)
	db, closeMore, err := s.open(dsn)
	if err != nil {
		tb.Fatalf("opening %s: %v", s.name, err)
	}
	tb.Cleanup(func() {
		_ = db.Close()
		if closeMore != nil {
			closeMore()
		}
	})
	return db, dsn
}

func setupNamed(name string) (setup, error) {
	for _, s := range setups {
		if s.name == name {
			return s, nil
		}
	}
	return setup{}, fmt.Errorf("no setup %q", name)
}

// The driver types must stay what the rows claim, or the matrix proves
// the wrong thing.
var _ driver.Driver = sqlhooks.Wrap(stdlib.GetDefaultDriver(), noHooks{})

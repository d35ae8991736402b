package cli

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/stdlib"
)

// Environment variables that name the database when --db is absent, in
// order. When none is set, pgx reads the libpq variables (PGHOST, PGPORT,
// PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...) and ~/.pgpass itself.
const (
	envConnectionString = "PG_CONNECTION_STRING"
	envDatabaseURL      = "DATABASE_URL"
)

// defaultConnectTimeout bounds connecting and the first ping when the
// connection string sets no connect_timeout.
const defaultConnectTimeout = 10 * time.Second

// A dbSource is a connection string and where it came from, for messages.
type dbSource struct {
	dsn  string
	from string
}

// resolveDB picks the connection string: --db, then PG_CONNECTION_STRING,
// then DATABASE_URL, else the empty string, which makes pgx read the libpq
// environment. Empty values count as absent.
func resolveDB(flagValue string, lookupEnv func(string) (string, bool)) dbSource {
	if flagValue != "" {
		return dbSource{flagValue, "--db"}
	}
	for _, name := range []string{envConnectionString, envDatabaseURL} {
		if v, ok := lookupEnv(name); ok && v != "" {
			return dbSource{v, name}
		}
	}
	for _, name := range libpqVars {
		if v, ok := lookupEnv(name); ok && v != "" {
			return dbSource{"", "the libpq environment (PGHOST, PGUSER, ...)"}
		}
	}
	return dbSource{"", "the libpq defaults (no --db, PG_CONNECTION_STRING, DATABASE_URL or PG* variable is set)"}
}

// libpqVars are the libpq environment variables that name a server or how
// to reach it.
var libpqVars = []string{"PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGSSLMODE", "PGPASSFILE"}

// parseDB parses the connection string into a pgx configuration for a pool
// whose sessions call themselves appName in pg_stat_activity.
//
// A cancelled query (a wait given up on --timeout or a signal) is cancelled
// in the server with a cancel request, so that no orphaned backend stays
// queued for the lock after withlock has gone: a backend blocked in
// pg_advisory_lock does not notice that its client closed the socket.
func parseDB(src dbSource, appName string) (*pgx.ConnConfig, error) {
	if scheme, _, ok := strings.Cut(src.dsn, "://"); ok && scheme != "postgres" && scheme != "postgresql" && !strings.ContainsAny(scheme, " =") {
		err := fmt.Errorf("unknown scheme %q: a connection URL starts with postgres:// or postgresql://", scheme)
		if s := nearest(scheme, []string{"postgres", "postgresql"}); s != "" {
			err = fmt.Errorf("%w (did you mean %s://?)", err, s)
		}
		return nil, err
	}
	cfg, err := pgx.ParseConfig(src.dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = appName
	// pgx's default caches named prepared statements per connection, which
	// a transaction-mode pooler (PgBouncer before 1.21, Supavisor, RDS
	// Proxy) breaks: the next statement reaches another server session
	// (42P05, 26000). withlock runs a handful of statements, so it uses
	// unnamed ones, each parsed and run in one round trip, unless the
	// connection string chooses a mode itself.
	if !strings.Contains(src.dsn, "default_query_exec_mode") {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: time.Second}
	}
	return cfg, nil
}

// connect opens a pool for cfg and pings it, within cfg.ConnectTimeout and
// ctx. The pool is closed if the ping fails.
func connect(ctx context.Context, cfg *pgx.ConnConfig) (*sql.DB, error) {
	db := stdlib.OpenDB(*cfg)
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// describeDB says which database a configuration reaches, without any
// password: user@host:port/database.
func describeDB(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// mask replaces passwords in messages.
const mask = "xxxxx"

// A redactor removes passwords from withlock's own messages. It knows the
// connection strings it was given (replaced by masked forms) and every
// password found in them or in the parsed configuration (replaced wherever
// they appear, as drivers can echo parts of a connection string in errors).
// It is safe for concurrent use.
type redactor struct {
	mu    sync.Mutex
	pairs [][2]string // old, new; applied in order
}

// addDSN teaches r a connection string and the passwords in it.
func (r *redactor) addDSN(dsn string) {
	if dsn == "" {
		return
	}
	safe, secrets := maskDSN(dsn)
	r.mu.Lock()
	if safe != dsn {
		r.pairs = append(r.pairs, [2]string{dsn, safe})
	}
	r.mu.Unlock()
	for _, s := range secrets {
		r.addSecret(s)
	}
}

// addSecret teaches r a password, in its plain and URL-escaped spellings.
func (r *redactor) addSecret(s string) {
	if s == "" || s == mask {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range []string{s, url.QueryEscape(s), url.PathEscape(s), url.UserPassword("", s).String()[1:]} {
		if v != "" && !slices.Contains(r.pairs, [2]string{v, mask}) {
			r.pairs = append(r.pairs, [2]string{v, mask})
		}
	}
	// Longer secrets first, so that one containing another is masked whole.
	slices.SortStableFunc(r.pairs, func(a, b [2]string) int {
		if (a[1] == mask) != (b[1] == mask) { // connection strings before bare secrets
			if a[1] != mask {
				return -1
			}
			return 1
		}
		return len(b[0]) - len(a[0])
	})
}

// redact returns s with every known connection string and password masked.
func (r *redactor) redact(s string) string {
	if r == nil {
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pairs {
		s = strings.ReplaceAll(s, p[0], p[1])
	}
	return s
}

var (
	// kvPassword matches password and sslpassword settings in a keyword/value
	// connection string, quoted or not.
	kvPassword = regexp.MustCompile(`(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']\S*)`)
	// urlUserinfoPassword matches the password of a URL that net/url cannot
	// parse, such as a multi-host one.
	urlUserinfoPassword = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:@/]*):([^@/]*)@`)
	// urlQueryPassword matches password and sslpassword query parameters.
	urlQueryPassword = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)([^&#]*)`)
)

// maskDSN returns dsn with its passwords masked, and the passwords, as
// written and unescaped, without repeats.
func maskDSN(dsn string) (safe string, secrets []string) {
	defer func() { secrets = uniq(secrets) }()
	if !strings.Contains(dsn, "://") {
		safe = kvPassword.ReplaceAllStringFunc(dsn, func(m string) string {
			sub := kvPassword.FindStringSubmatch(m)
			v := sub[2]
			if strings.HasPrefix(v, "'") {
				v = strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(strings.Trim(v, "'"))
				secrets = append(secrets, sub[2])
			}
			secrets = append(secrets, v)
			return sub[1] + mask
		})
		return safe, secrets
	}
	safe = dsn
	if m := urlUserinfoPassword.FindStringSubmatch(safe); m != nil {
		secrets = append(secrets, m[2])
		if v, err := url.PathUnescape(m[2]); err == nil {
			secrets = append(secrets, v)
		}
		safe = m[1] + ":" + mask + "@" + safe[len(m[0]):]
	}
	safe = urlQueryPassword.ReplaceAllStringFunc(safe, func(m string) string {
		sub := urlQueryPassword.FindStringSubmatch(m)
		secrets = append(secrets, sub[2])
		if v, err := url.QueryUnescape(sub[2]); err == nil {
			secrets = append(secrets, v)
		}
		return sub[1] + mask
	})
	return safe, secrets
}

// newRedactor returns a redactor that knows the connection strings withlock
// may print: every --db value in args, and every other argument before "--"
// that holds a password, found before flag parsing so that even usage
// errors (a misplaced or misspelt --db, a connection string given to
// another flag) are masked; then PG_CONNECTION_STRING, DATABASE_URL and
// PGPASSWORD.
func newRedactor(args []string) *redactor {
	r := &redactor{}
	for i, a := range args {
		if a == "--" {
			break
		}
		r.addDSN(embeddedDSN(a))
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "db" {
			continue
		}
		if hasValue {
			r.addDSN(value)
		} else if i+1 < len(args) {
			r.addDSN(args[i+1])
		}
	}
	for _, name := range []string{envConnectionString, envDatabaseURL} {
		r.addDSN(os.Getenv(name))
	}
	r.addSecret(os.Getenv("PGPASSWORD"))
	return r
}

// embeddedDSN returns the part of a command-line argument that may be a
// connection string holding a password: from a URL's scheme on (so that
// "-wpostgres://u:pw@h" and "--timeout=postgres://..." count), else the
// whole argument (keyword/value passwords are found anywhere). It returns
// "" when there is no password to find.
func embeddedDSN(arg string) string {
	if i := strings.Index(arg, "://"); i > 0 {
		j := i
		for j > 0 && strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-", rune(arg[j-1])) {
			j--
		}
		for j < i && !isLetter(arg[j]) { // a scheme starts with a letter
			j++
		}
		arg = arg[j:]
	}
	if _, secrets := maskDSN(arg); len(secrets) == 0 {
		return ""
	}
	return arg
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// uniq removes repeated strings, keeping the first of each.
func uniq(ss []string) []string {
	var out []string
	for _, s := range ss {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// connectError is err's text with repeated lines said once: pgx lists
// every attempt of a connect, and with sslmode=prefer (the default) it
// tries each address twice, with TLS and without, failing the same way.
func connectError(err error) string {
	lines := strings.Split(err.Error(), "\n")
	out := lines[:0]
	seen := make(map[string]bool, len(lines))
	for _, l := range lines {
		if seen[l] {
			continue
		}
		seen[l] = true
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

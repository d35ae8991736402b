package keyspace_test

import (
	"crypto/fips140"
	"errors"
	"math"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// Vectors computed by the Node package advisory-lock itself.
func TestNodeVectors(t *testing.T) {
	tests := []struct {
		strategy keyspace.Strategy
		name     string
		want     keyspace.Key
	}{
		{keyspace.Node, "dbmigration", keyspace.Pair(-1682085387, -1149921686)},
		{keyspace.Node, "test-lock", keyspace.Pair(-107789403, -1898803861)},
		{keyspace.Node, "", keyspace.Pair(1120186595, 337443992)},
		{keyspace.Default, "dbmigration", keyspace.Pair(-1682085387, -1149921686)},
		{keyspace.NodeLegacy, "test-lock", keyspace.Pair(-107789403, 1811518275)},
	}
	for _, tt := range tests {
		if got := tt.strategy.Key(tt.name); got != tt.want {
			t.Errorf("Key(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestSHA256Int64(t *testing.T) {
	// First 8 bytes of SHA-256("") = e3 b0 c4 42 98 fc 1c 14, little-endian.
	want := keyspace.Int64(0x141cfc9842c4b0e3)
	if got := keyspace.SHA256Int64.Key(""); got != want {
		t.Errorf("SHA256Int64.Key(\"\") = %v, want %v", got, want)
	}
	if got := keyspace.SHA256Int64.Key("x").Space(); got != keyspace.SpaceInt64 {
		t.Errorf("space = %v, want int64", got)
	}
}

func TestKeyAccessors(t *testing.T) {
	k := keyspace.Pair(math.MinInt32, -1)
	a, b, ok := k.Pair()
	if !ok || a != math.MinInt32 || b != -1 {
		t.Errorf("Pair() = %d, %d, %v, want %d, -1, true", a, b, ok, math.MinInt32)
	}
	if _, ok := k.Int64(); ok {
		t.Error("Int64() ok on a pair key")
	}
	n, ok := keyspace.Int64(math.MinInt64).Int64()
	if !ok || n != math.MinInt64 {
		t.Errorf("Int64() = %d, %v", n, ok)
	}
	if keyspace.Int64(1) == keyspace.Pair(0, 1) {
		t.Error("Int64(1) == Pair(0, 1): the spaces must stay disjoint")
	}
	var zero keyspace.Key
	if zero.Valid() || zero.String() != "invalid" {
		t.Errorf("zero Key: Valid=%v String=%q", zero.Valid(), zero.String())
	}
}

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want keyspace.Key
	}{
		{"42", keyspace.Int64(42)},
		{"-9223372036854775808", keyspace.Int64(math.MinInt64)},
		{"int64(7)", keyspace.Int64(7)},
		{"1,-2", keyspace.Pair(1, -2)},
		{"pair(-2147483648, 2147483647)", keyspace.Pair(math.MinInt32, math.MaxInt32)},
	}
	for _, tt := range good {
		got, err := keyspace.Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "x", "1,2,3", "2147483648,1", "int64(1,2)", "pair(3)", "9223372036854775808"} {
		if _, err := keyspace.Parse(in); !errors.Is(err, keyspace.ErrSyntax) {
			t.Errorf("Parse(%q) error = %v, want ErrSyntax", in, err)
		}
	}
}

func TestLockTagRoundTrip(t *testing.T) {
	keys := []keyspace.Key{
		keyspace.Int64(0), keyspace.Int64(-1), keyspace.Int64(math.MaxInt64), keyspace.Int64(math.MinInt64),
		keyspace.Pair(0, 0), keyspace.Pair(-1, 1), keyspace.Pair(math.MinInt32, math.MaxInt32),
	}
	for _, k := range keys {
		c, o, s := k.LockTag()
		got, err := keyspace.FromLockTag(c, o, s)
		if err != nil || got != k {
			t.Errorf("FromLockTag(LockTag(%v)) = %v, %v", k, got, err)
		}
	}
	// pg_locks shows pg_advisory_lock(1) as classid 0, objid 1, objsubid 1.
	if c, o, s := keyspace.Int64(1).LockTag(); c != 0 || o != 1 || s != 1 {
		t.Errorf("Int64(1).LockTag() = %d, %d, %d, want 0, 1, 1", c, o, s)
	}
	if _, err := keyspace.FromLockTag(0, 0, 3); err == nil {
		t.Error("FromLockTag with objsubid 3: no error")
	}
}

func FuzzStrategies(f *testing.F) {
	for _, s := range []string{"", "dbmigration", "test-lock", "\xff\xfe", "日本語", "42", "int64(-7)", "1,-2", "pair(3, 4)", " 9 ", "1,", ","} {
		f.Add(s)
	}
	// Strategies that hash: every name maps to a valid key.
	hashed := map[string]keyspace.Strategy{
		"Node":                  keyspace.Node,
		"NodeLegacy":            keyspace.NodeLegacy,
		"SHA256Int64":           keyspace.SHA256Int64,
		"SQLx":                  keyspace.SQLx,
		"WithAdvisoryLock(0)":   keyspace.WithAdvisoryLock(0),
		"WithAdvisoryLock(-9)":  keyspace.WithAdvisoryLock(-9),
		"RailsMigrations":       keyspace.RailsMigrations,
		"GolangMigrate()":       keyspace.GolangMigrate(),
		"GolangMigrate(public)": keyspace.GolangMigrate("public", "schema_migrations"),
		"GolangMigrateURL()":    keyspace.GolangMigrateURL(),
		"DjangoPGLocks":         keyspace.DjangoPGLocks,
		"Goose":                 keyspace.Goose,
		"GooseLegacy":           keyspace.GooseLegacy,
		"DjangoPGLock":          keyspace.DjangoPGLock,
		"Scoped(7)":             keyspace.Scoped(7),
	}
	if !fips140.Enforced() { // pals needs SHA-1
		hashed["Pals(app)"] = keyspace.Pals("app")
	}
	unsetenv(f, "WITH_ADVISORY_LOCK_PREFIX")
	for _, name := range keyspace.Names() {
		if name != "int64" && name != "pair" {
			s, err := keyspace.Lookup(name)
			if err != nil {
				f.Fatalf("Lookup(%q): %v", name, err)
			}
			hashed["Lookup("+name+")"] = s
		}
	}
	explicit := map[keyspace.Space]keyspace.Strategy{
		keyspace.SpaceInt64: keyspace.ExplicitInt64,
		keyspace.SpacePair:  keyspace.ExplicitPair,
	}
	f.Fuzz(func(t *testing.T, name string) {
		for label, s := range hashed {
			k := s.Key(name)
			if !k.Valid() || k != s.Key(name) {
				t.Fatalf("%s.Key(%q) = %v: not valid or not deterministic", label, name, k)
			}
			back, err := keyspace.Parse(k.String())
			if err != nil || back != k {
				t.Fatalf("Parse(%q) = %v, %v, want %v", k.String(), back, err, k)
			}
		}
		checkRanges(t, name)
		// Explicit strategies: Parse's key in their space, else the zero Key.
		parsed, err := keyspace.Parse(name)
		for space, s := range explicit {
			k := s.Key(name)
			want := keyspace.Key{}
			if err == nil && parsed.Space() == space {
				want = parsed
			}
			if k != want || k != s.Key(name) {
				t.Fatalf("explicit %v Key(%q) = %v, want %v", space, name, k, want)
			}
		}
	})
}

// checkRanges checks the value ranges the foreign schemes promise.
func checkRanges(t *testing.T, name string) {
	t.Helper()
	if a, b, _ := keyspace.WithAdvisoryLock(-9).Key(name).Pair(); a < 0 || b != math.MaxInt32-8 {
		t.Fatalf("WithAdvisoryLock(-9).Key(%q) = (%d, %d): want a ≥ 0 and b = 2³¹−9", name, a, b)
	}
	if n, _ := keyspace.GolangMigrate("s", "t").Key(name).Int64(); n < 0 || n > math.MaxUint32 {
		t.Fatalf("GolangMigrate.Key(%q) = %d: outside [0, 2³²)", name, n)
	}
	if n, _ := keyspace.GolangMigrateURL("s", "t").Key(name).Int64(); n < 0 || n > math.MaxUint32 {
		t.Fatalf("GolangMigrateURL.Key(%q) = %d: outside [0, 2³²)", name, n)
	}
	if n, _ := keyspace.DjangoPGLocks.Key(name).Int64(); n < math.MinInt32 || n > math.MaxInt32 {
		t.Fatalf("DjangoPGLocks.Key(%q) = %d: outside the int32 range", name, n)
	}
	if n, _ := keyspace.RailsMigrations.Key(name).Int64(); n < 0 || n%2053462845 != 0 {
		t.Fatalf("RailsMigrations.Key(%q) = %d: not a non-negative multiple of the salt", name, n)
	}
	if a, _, _ := keyspace.Scoped(-3).Key(name).Pair(); a != -3 {
		t.Fatalf("Scoped(-3).Key(%q) has namespace %d", name, a)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"42", "1,2", "int64(-1)", "pair(1,2)", "", "pair(", ",", "1,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := keyspace.Parse(s)
		if err != nil {
			if !errors.Is(err, keyspace.ErrSyntax) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrSyntax", s, err)
			}
			return
		}
		if back, err := keyspace.Parse(k.String()); err != nil || back != k {
			t.Fatalf("round trip of %q: %v, %v", s, back, err)
		}
	})
}

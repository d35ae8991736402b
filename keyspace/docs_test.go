package keyspace_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// docsStrategies maps the Go expressions of the "Go" column of
// docs/keyspace.md's published-vectors table to the strategies they name.
var docsStrategies = map[string]keyspace.Strategy{
	"Node":                           keyspace.Node,
	"SQLx":                           keyspace.SQLx,
	"WithAdvisoryLock(0)":            keyspace.WithAdvisoryLock(0),
	"WithAdvisoryLock(42)":           keyspace.WithAdvisoryLock(42),
	"RailsMigrations":                keyspace.RailsMigrations,
	"GolangMigrate()":                keyspace.GolangMigrate(),
	`GolangMigrate("schema_name_1")`: keyspace.GolangMigrate("schema_name_1"),
	`GolangMigrate("schema_name_2")`: keyspace.GolangMigrate("schema_name_2"),
	`GolangMigrate("schema_name_1", "schema_name_2")`: keyspace.GolangMigrate("schema_name_1", "schema_name_2"),
	`GolangMigrate("public", "schema_migrations")`:    keyspace.GolangMigrate("public", "schema_migrations"),
	`GolangMigrateURL("public", "schema_migrations")`: keyspace.GolangMigrateURL("public", "schema_migrations"),
	"DjangoPGLocks":    keyspace.DjangoPGLocks,
	"Goose":            keyspace.Goose,
	"GooseLegacy":      keyspace.GooseLegacy,
	"DjangoPGLock":     keyspace.DjangoPGLock,
	`Pals("TestLock")`: keyspace.Pals("TestLock"),
}

// TestDocsKeys checks every example key in docs/keyspace.md: each row of a
// table with "Lock name" and "Key" columns, whose strategy is named by a
// "Lookup name" column (passed to Lookup) or else a "Go" column.
func TestDocsKeys(t *testing.T) {
	unsetenv(t, "WITH_ADVISORY_LOCK_PREFIX")
	md, err := os.ReadFile("../docs/keyspace.md")
	if err != nil {
		t.Fatal(err)
	}
	looked := map[string]bool{}
	rows := 0
	for _, table := range markdownTables(string(md)) {
		header := table[0]
		lookupCol, goCol := slices.Index(header, "Lookup name"), slices.Index(header, "Go")
		nameCol, keyCol := slices.Index(header, "Lock name"), slices.Index(header, "Key")
		if nameCol < 0 || keyCol < 0 {
			continue
		}
		for _, row := range table[1:] {
			rows++
			var s keyspace.Strategy
			var label string
			if lookupCol >= 0 {
				label, _, _ = strings.Cut(unquote(row[lookupCol]), " ")
				if s, err = keyspace.Lookup(label); err != nil {
					t.Errorf("docs row %q: %v", row, err)
					continue
				}
				looked[label] = true
			} else {
				label = unquote(row[goCol])
				if s = docsStrategies[label]; s == nil {
					t.Errorf("docs row %q: no strategy for Go expression %q; add it to docsStrategies", row, label)
					continue
				}
			}
			want, err := keyspace.Parse(unquote(row[keyCol]))
			if err != nil {
				t.Errorf("docs row %q: key: %v", row, err)
				continue
			}
			name := unquote(row[nameCol])
			if got := s.Key(name); got != want {
				t.Errorf("docs/keyspace.md: %s.Key(%q) = %v, the docs say %v", label, name, got, want)
			}
		}
	}
	if rows < 25 {
		t.Errorf("checked %d rows of docs/keyspace.md, want at least 25: tables not found?", rows)
	}
	for _, name := range keyspace.Names() {
		if !looked[name] {
			t.Errorf("docs/keyspace.md has no compatibility row for %q", name)
		}
	}
}

// markdownTables returns the tables of md, each as rows of trimmed cells,
// the header first and the delimiter row dropped.
func markdownTables(md string) [][][]string {
	var tables [][][]string
	var cur [][]string
	for line := range strings.Lines(md) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if cur != nil {
				tables = append(tables, cur)
				cur = nil
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if strings.HasPrefix(cells[0], "---") {
			continue
		}
		cur = append(cur, cells)
	}
	if cur != nil {
		tables = append(tables, cur)
	}
	return tables
}

// unquote strips the backticks around a code span.
func unquote(cell string) string {
	if s, ok := strings.CutPrefix(cell, "`"); ok {
		if i := strings.Index(s, "`"); i >= 0 {
			return s[:i] + s[i+1:]
		}
	}
	return cell
}

package sqllock_test

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeQuickStart keeps README.md's quick start identical to the body
// of Example, so the README always shows code that compiles and runs.
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- quickstart -->\n```go\n")
	if !ok {
		t.Fatal("README.md has no <!-- quickstart --> block")
	}
	quick, _, _ := strings.Cut(rest, "```\n<!-- /quickstart -->")

	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(src), "\nfunc Example() {\n")
	if !ok {
		t.Fatal("example_test.go has no func Example")
	}
	body, _, _ = strings.Cut(body, "\t// Output:")
	var lines []string
	for _, line := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(line, "\t"))
	}
	want := strings.Join(lines, "\n") + "\n"
	if quick != want {
		t.Errorf("README quick start differs from Example.\nREADME:\n%s\nExample:\n%s", quick, want)
	}
}

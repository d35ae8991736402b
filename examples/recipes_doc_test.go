package examples_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// recipesPath is the document whose Go snippets are Example bodies.
const recipesPath = "../docs/recipes.md"

// TestRecipes keeps docs/recipes.md and the examples identical: every Go
// snippet there follows a <!-- example: Name --> line and is the body of
// Example Name, less its Output comment and one level of indentation; every
// example appears there once.
func TestRecipes(t *testing.T) {
	bodies := exampleBodies(t)
	doc, err := os.ReadFile(recipesPath)
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	lines := strings.Split(string(doc), "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "```go") {
			continue
		}
		var name string
		if i > 0 {
			name = marker(lines[i-1])
		}
		if name == "" {
			t.Errorf("%s:%d: Go snippet without a <!-- example: Name --> line before it", recipesPath, i+1)
		}
		start := i + 1
		for i++; i < len(lines) && lines[i] != "```"; i++ {
		}
		snippet := strings.Join(lines[start:i], "\n") + "\n"
		want, ok := bodies[name]
		switch {
		case name == "":
		case !ok:
			t.Errorf("%s:%d: no function %s in the examples", recipesPath, start, name)
		case shown[name]:
			t.Errorf("%s:%d: %s shown twice", recipesPath, start, name)
		case snippet != want:
			t.Errorf("%s:%d: snippet differs from the body of %s.\ngot:\n%s\nwant:\n%s", recipesPath, start, name, snippet, want)
		}
		shown[name] = true
	}
	var missing []string
	for name := range bodies {
		if !shown[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%s does not show %s", recipesPath, strings.Join(missing, ", "))
	}
}

// marker returns Name from a line "<!-- example: Name -->", else "".
func marker(line string) string {
	rest, ok := strings.CutPrefix(line, "<!-- example: ")
	name, ok2 := strings.CutSuffix(rest, " -->")
	if !ok || !ok2 {
		return ""
	}
	return name
}

// exampleBodies returns the body of every Example function in this
// directory's test files, as docs/recipes.md shows it.
func exampleBodies(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string]string{}
	fset := token.NewFileSet()
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, file, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Example") {
				continue
			}
			body := string(src[fset.Position(fn.Body.Lbrace).Offset+1 : fset.Position(fn.Body.Rbrace).Offset])
			body, _, _ = strings.Cut(body, "\n\t// Output:")
			body, _, _ = strings.Cut(body, "\n\t// Unordered output:")
			var out []string
			for _, line := range strings.Split(strings.Trim(body, "\n"), "\n") {
				out = append(out, strings.TrimPrefix(line, "\t"))
			}
			bodies[fn.Name.Name] = strings.Join(out, "\n") + "\n"
		}
	}
	if len(bodies) == 0 {
		t.Fatal("no Example functions found")
	}
	return bodies
}

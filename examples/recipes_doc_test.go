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
// example appears there once. A snippet that follows a
// <!-- declaration: A, B --> line instead is the source of the examples'
// declarations A and B (a method as Type.Method), doc comments included,
// one blank line apart.
func TestRecipes(t *testing.T) {
	bodies := exampleBodies(t)
	decls := declarations(t)
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
		var declNames []string
		if i > 0 {
			name = marker(lines[i-1])
			declNames = declMarker(lines[i-1])
		}
		if declNames != nil {
			start := i + 1
			for i++; i < len(lines) && lines[i] != "```"; i++ {
			}
			snippet := strings.Join(lines[start:i], "\n") + "\n"
			var want []string
			for _, d := range declNames {
				src, ok := decls[d]
				if !ok {
					t.Errorf("%s:%d: no declaration %s in the examples", recipesPath, start, d)
				}
				want = append(want, src)
			}
			if w := strings.Join(want, "\n\n") + "\n"; snippet != w {
				t.Errorf("%s:%d: snippet differs from the source of %s.\ngot:\n%s\nwant:\n%s", recipesPath, start, strings.Join(declNames, ", "), snippet, w)
			}
			continue
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

// declMarker returns the names of a line "<!-- declaration: A, B -->", else
// nil.
func declMarker(line string) []string {
	rest, ok := strings.CutPrefix(line, "<!-- declaration: ")
	names, ok2 := strings.CutSuffix(rest, " -->")
	if !ok || !ok2 {
		return nil
	}
	return strings.Split(names, ", ")
}

// declarations returns the source, doc comment included, of every
// top-level declaration in this directory's test files, by name: a method
// as Type.Method.
func declarations(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	decls := map[string]string{}
	fset := token.NewFileSet()
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, file, src, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		text := func(from, to token.Pos) string {
			return string(src[fset.Position(from).Offset:fset.Position(to).Offset])
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				name, from := d.Name.Name, d.Pos()
				if d.Doc != nil {
					from = d.Doc.Pos()
				}
				if d.Recv != nil && len(d.Recv.List) == 1 {
					typ := d.Recv.List[0].Type
					if star, ok := typ.(*ast.StarExpr); ok {
						typ = star.X
					}
					if id, ok := typ.(*ast.Ident); ok {
						name = id.Name + "." + name
					}
				}
				decls[name] = text(from, d.End())
			case *ast.GenDecl:
				if len(d.Specs) != 1 {
					continue
				}
				from := d.Pos()
				if d.Doc != nil {
					from = d.Doc.Pos()
				}
				switch spec := d.Specs[0].(type) {
				case *ast.TypeSpec:
					decls[spec.Name.Name] = text(from, d.End())
				case *ast.ValueSpec:
					decls[spec.Names[0].Name] = text(from, d.End())
				}
			}
		}
	}
	return decls
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

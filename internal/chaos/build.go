package chaos

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
)

// goBuild runs go build -o out pkg.
func goBuild(ctx context.Context, out, pkg string) ([]byte, error) {
	return exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput()
}

// BuildWithlock builds the withlock command into dir and returns its path.
// It runs the go command, from the current directory, which must be inside
// this module.
func BuildWithlock(ctx context.Context, dir string) (string, error) {
	path := filepath.Join(dir, "withlock")
	out, err := goBuild(ctx, path, "github.com/advisorylock/go-advisory-lock/cmd/withlock")
	if err != nil {
		return "", fmt.Errorf("chaos: building withlock: %v\n%s", err, out)
	}
	return path, nil
}

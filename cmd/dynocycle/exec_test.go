package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandThatCannotBeExecutedExits126(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MAX_RSS", "1GB")
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noexec := write("noexec", "#!/bin/sh\necho ran\n", 0o644)
	garbage := write("garbage", "\x7fELF not really\x00\x01", 0o755)
	badInterp := write("bad-interp", "#!/nonexistent/interpreter\n", 0o755)
	subdir := filepath.Join(dir, "subdir")
	if err := os.Mkdir(subdir, 0o755); err != nil {
		t.Fatal(err)
	}
	onPath := t.TempDir()
	if err := os.WriteFile(filepath.Join(onPath, "dynocycle-noexec-on-path"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", onPath+string(os.PathListSeparator)+os.Getenv("PATH"))

	for _, tc := range []struct {
		name, command string
		code          int
		want          string
	}{
		{"no exec permission", noexec, 126, "cannot be executed (no execute permission"},
		{"no exec permission, found on PATH", "dynocycle-noexec-on-path", 126, "cannot be executed"},
		{"not an executable", garbage, 126, "not a program for this machine"},
		{"a directory", subdir, 126, "cannot be executed"},
		{"missing", filepath.Join(dir, "missing"), 127, "not found"},
		{"missing on PATH", "no-such-command-dynocycle", 127, "not found"},
		// As a shell: the file is there, its interpreter is not.
		{"missing interpreter", badInterp, 127, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, "run", "--", tc.command)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("code %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
		})
	}
	// A one-off dyno runs the command without the agent; same codes.
	t.Setenv("DYNO", "run.1")
	if code, _, errOut := runCLI(t, "run", "--", garbage); code != 126 {
		t.Errorf("one-off: code %d, want 126; stderr %q", code, errOut)
	}
}

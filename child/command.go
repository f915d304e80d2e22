package child

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Exit codes of a worker command that could not be run, as a shell reports
// them (POSIX, "Command Search and Execution"; bash alike): 127 when it was
// not found, 126 when it was found but cannot be executed.
const (
	ExitNotFound      = 127
	ExitNotExecutable = 126
)

// CommandError is a worker command that could not be run.
type CommandError struct {
	Name string
	Code int // ExitNotFound or ExitNotExecutable
	Err  error
}

func (e *CommandError) Error() string {
	if e.Code == ExitNotFound {
		return fmt.Sprintf("worker command %q not found: %v", e.Name, e.Err)
	}
	return fmt.Sprintf("worker command %q cannot be executed (%s): %v", e.Name, why(e.Err), e.Err)
}

func (e *CommandError) Unwrap() error { return e.Err }

// ExitCode is the agent's exit code for an error of LookPath or Start:
// ExitNotFound or ExitNotExecutable, and ExitNotFound for any other error.
func ExitCode(err error) int {
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ExitNotFound
}

// LookPath finds the worker command as exec.LookPath does. It tells a
// command that is not there from one that is there but cannot be run: a
// file without execute permission (named by path, or the only one of that
// name on PATH, where exec.LookPath only says "not found"), or a directory.
func LookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	if errors.Is(err, exec.ErrNotFound) && !strings.Contains(name, "/") {
		if found := nonExecutableOnPath(name); found != "" {
			return "", &CommandError{Name: name, Code: ExitNotExecutable, Err: &fs.PathError{Op: "exec", Path: found, Err: fs.ErrPermission}}
		}
	}
	return "", &CommandError{Name: name, Code: codeFor(err), Err: err}
}

// nonExecutableOnPath returns the first file of that name on PATH, if any.
func nonExecutableOnPath(name string) string {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" {
			continue // exec.LookPath never runs a command from "." either
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// codeFor classifies a failure to find or execute a command. ENOENT from
// execve after the file was found means its #! interpreter is missing,
// which a shell also reports as 127.
func codeFor(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return ExitNotFound
	}
	return ExitNotExecutable
}

// why names the common causes in the words an operator would search for.
func why(err error) string {
	switch {
	case errors.Is(err, syscall.ENOEXEC):
		return "not a program for this machine, nor a script starting with #!"
	case errors.Is(err, syscall.EISDIR):
		return "a directory"
	case errors.Is(err, fs.ErrPermission):
		return "no execute permission, a directory, or a noexec mount"
	case errors.Is(err, exec.ErrDot):
		return "found relative to the current directory through PATH; give its path"
	}
	return "exec failed"
}

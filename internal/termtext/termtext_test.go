package termtext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCell(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"worker.1", "worker.1"},
		{"", ""},
		{"a\tb\nc", `a\tb\nc`},
		{"\x1b[31m", `\x1b[31m`},
		{"\x1b[31mred", `\x1b[31mr…`},
		{"bad\xffb", `bad\xffb`},
		{"ünïcödé ok", "ünïcödé ok"},
		{"a\u2028b", `a\u2028b`},
		{"0123456789", "0123456789"},
		{"0123456789a", "012345678…"},
		{"\n\n\n\n\n", `\n\n\n\n\n`}, {"\n\n\n\n\n\n", `\n\n\n\n\…`},
	} {
		if got := Cell(tc.in, 10); got != tc.want {
			t.Errorf("Cell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := Cell(strings.Repeat("\x00", 20000), MaxCell)
	if n := utf8.RuneCountInString(long); n > MaxCell {
		t.Errorf("a 20000-byte cell printed as %d runes, want at most %d", n, MaxCell)
	}
}

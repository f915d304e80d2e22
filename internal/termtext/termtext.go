// Package termtext makes text read from Redis safe to print on a terminal:
// bounded in length and with control characters escaped, so one hostile or
// broken record cannot flood the output or drive the terminal.
package termtext

import (
	"strconv"
	"unicode"
	"unicode/utf8"
)

// MaxCell is the longest cell `dynocycle status` prints, in runes.
const MaxCell = 64

// Cell returns s with control and other unprintable characters escaped the
// way Go quotes them (\n, \x1b, \u2028) and cut to at most max runes, the
// cut marked with "…". Invalid UTF-8 is escaped byte by byte.
func Cell(s string, max int) string {
	out := make([]rune, 0, min(len(s), max+1))
	// Stop reading once past max: a 20 MB value costs no more than a short one.
	for i := 0; i < len(s) && len(out) <= max; {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			out = append(out, []rune(`\x`+strconv.FormatUint(uint64(s[i]), 16))...)
		case !unicode.IsPrint(r) && r != ' ':
			q := strconv.QuoteRune(r)
			out = append(out, []rune(q[1:len(q)-1])...)
		default:
			out = append(out, r)
		}
		i += size
	}
	if len(out) > max {
		out = append(out[:max-1], '…')
	}
	return string(out)
}

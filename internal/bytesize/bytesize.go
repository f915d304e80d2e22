// Package bytesize renders memory sizes the way Heroku names them (binary
// units, "MB" for MiB), so logs, `dynocycle check` and `dynocycle status`
// agree on one spelling.
package bytesize

import (
	"fmt"
	"strconv"
)

// MB renders b in megabytes with one decimal ("512.0MB"), the unit of
// Heroku's own memory logs; logs and the configuration use it.
func MB(b uint64) string {
	return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + "MB"
}

// Human renders b in the largest unit that keeps it readable in a table
// column: 900KB, 512MB, 1.5GB, 12GB.
func Human(b uint64) string {
	const mb = 1 << 20
	switch {
	case b >= 10<<30:
		return fmt.Sprintf("%dGB", b>>30)
	case b >= 1<<30:
		return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + "GB"
	case b >= mb:
		return fmt.Sprintf("%dMB", b/mb)
	default:
		return fmt.Sprintf("%dKB", b>>10)
	}
}

package harness

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dynocycle/dynocycle/internal/dynosim"
)

// palette is Tableau 10, one color a dyno.
var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"}

var faultStyle = map[string]struct{ fill, label string }{
	FaultRedisDown: {"#d62728", "redis down"},
	FaultDBDown:    {"#8c564b", "postgres down"},
	FaultAPI429:    {"#ff7f0e", "API 429"},
	FaultAPI500:    {"#9467bd", "API 500"},
	FaultFlushAll:  {"#8c564b", "FLUSHALL"},
	FaultSecondApp: {"#17becf", "second app starts"},
}

// WriteSVG draws the memory of every dyno's worker over the run, the
// MAX_RSS line, a dot where each restart took the lease, the faults as
// shaded bands, and below, one lane a dyno showing when it was out of
// service (colored: restarted by dynocycle; black: crashed or killed).
func WriteSVG(w io.Writer, res *Result) error {
	dynos := make([]string, 0, len(res.Samples))
	for i := 1; i <= res.Config.Dynos; i++ {
		dynos = append(dynos, fmt.Sprintf("worker.%d", i))
	}
	color := func(dyno string) string {
		i := slices.Index(dynos, dyno)
		return palette[max(i, 0)%len(palette)]
	}
	const (
		left, top, plotW, plotH = 70.0, 50.0, 900.0, 380.0
		laneH                   = 14.0
	)
	lanesTop := top + plotH + 62
	width := left + plotW + 190
	height := lanesTop + laneH*float64(len(dynos)) + 40

	span := res.End.Sub(res.Start).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 { return left + plotW*t.Sub(res.Start).Seconds()/span }
	limitMB := float64(res.Config.MaxRSSMB)
	maxMB := limitMB * 1.4
	for _, ss := range res.Samples {
		for _, s := range ss {
			maxMB = math.Max(maxMB, float64(s.RSS)/(1<<20)*1.05)
		}
	}
	stepMB := 50.0
	if maxMB > 600 {
		stepMB = 100
	}
	maxMB = math.Ceil(maxMB/stepMB) * stepMB
	y := func(mb float64) float64 { return top + plotH - plotH*mb/maxMB }

	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...); b.WriteByte('\n') }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>`)
	p(`<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`, left, html.EscapeString(fmt.Sprintf(
		"dynocycle fleet chaos run: %d Sidekiq dynos, MAX_CONCURRENT_RESTARTS=%d, seed %d", res.Config.Dynos, res.Config.Slots, res.Config.Seed)))
	p(`<text x="%.0f" y="36" fill="#555">worker memory (RSS of each dyno's Sidekiq, sampled every second); dots: restart lease taken; bands: faults</text>`, left)

	// Faults first, under everything else.
	for _, f := range res.Faults {
		if f.Kind == FaultKillAgent {
			xx := x(f.Start)
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-dasharray="2,3"/>`, xx, top, xx, top+plotH)
			p(`<text x="%.1f" y="%.1f" font-size="9" transform="rotate(-90 %.1f %.1f)">kill agent %s</text>`, xx-2, top+plotH-4, xx-2, top+plotH-4, f.Dyno)
			continue
		}
		st := faultStyle[f.Kind]
		p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.12"/>`, x(f.Start), top, math.Max(x(f.End)-x(f.Start), 1), plotH, st.fill)
		p(`<text x="%.1f" y="%.1f" font-size="9" fill="%s">%s</text>`, x(f.Start)+2, top+10, st.fill, st.label)
	}
	// Axes and grid.
	for mb := 0.0; mb <= maxMB; mb += stepMB {
		p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#eee"/>`, left, y(mb), left+plotW, y(mb))
		p(`<text x="%.0f" y="%.1f" text-anchor="end">%.0f MB</text>`, left-6, y(mb)+4, mb)
	}
	tick := 30.0
	if span > 400 {
		tick = 60
	}
	for s := 0.0; s <= span; s += tick {
		xx := left + plotW*s/span
		p(`<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#999"/>`, xx, top+plotH, xx, top+plotH+4)
		p(`<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`, xx, top+plotH+16, fmtClock(s))
	}
	p(`<text x="%.0f" y="%.0f" text-anchor="middle" fill="#555">time since start (load ends at %s)</text>`, left+plotW/2, top+plotH+32, fmtClock(res.LoadEnd.Sub(res.Start).Seconds()))
	p(`<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, left, top, plotW, plotH)
	if !res.LoadEnd.IsZero() {
		xx := x(res.LoadEnd)
		p(`<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#555" stroke-width="1.2"/>`, xx, top, xx, top+plotH)
		p(`<text x="%.1f" y="%.0f" font-size="9" fill="#555" text-anchor="end">load ends</text>`, xx-3, top+22)
	}
	// The limit.
	p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#d62728" stroke-width="1.5" stroke-dasharray="8,4"/>`, left, y(limitMB), left+plotW, y(limitMB))
	p(`<text x="%.0f" y="%.1f" fill="#d62728">MAX_RSS %d MB</text>`, left+plotW+4, y(limitMB)+4, res.Config.MaxRSSMB)

	// Memory, one polyline a dyno, broken where the dyno had no worker.
	for _, dyno := range dynos {
		var pts []string
		flush := func() {
			if len(pts) > 1 {
				p(`<polyline fill="none" stroke="%s" stroke-width="1.3" points="%s"/>`, color(dyno), strings.Join(pts, " "))
			}
			pts = pts[:0]
		}
		var last time.Time
		for _, s := range res.Samples[dyno] {
			if !last.IsZero() && s.At.Sub(last) > 2500*time.Millisecond {
				flush()
			}
			last = s.At
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At), y(float64(s.RSS)/(1<<20))))
		}
		flush()
	}
	// Restart moments: a dot on the dyno's curve where it took the lease.
	for _, iv := range res.Intervals {
		if iv.Kind != dynosim.KindRestart {
			continue
		}
		mb := rssAt(res.Samples[iv.Dyno], iv.Start)
		p(`<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" stroke="black" stroke-width="0.8"><title>%s restart at %s</title></circle>`,
			x(iv.Start), y(mb), color(iv.Dyno), iv.Dyno, fmtClock(iv.Start.Sub(res.Start).Seconds()))
	}
	// Legend.
	for i, dyno := range dynos {
		yy := top + 14*float64(i) + 30
		p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="%s" stroke-width="3"/>`, left+plotW+8, yy, left+plotW+28, yy, color(dyno))
		label := dyno
		if dyno == res.TSTPDyno {
			label += " (ignores TSTP)"
		}
		p(`<text x="%.0f" y="%.1f">%s</text>`, left+plotW+32, yy+4, html.EscapeString(label))
	}

	// Lanes: out of service.
	p(`<text x="%.0f" y="%.0f" fill="#555">out of service: colored = restart by dynocycle (lease taken to new worker started), black = crash (agent killed or exited)</text>`, left, lanesTop-6)
	for i, dyno := range dynos {
		yy := lanesTop + laneH*float64(i)
		p(`<text x="%.0f" y="%.1f" text-anchor="end" font-size="10">%s</text>`, left-6, yy+laneH-4, dyno)
		p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#eee"/>`, left, yy+laneH/2, left+plotW, yy+laneH/2)
	}
	for _, iv := range res.Intervals {
		i := slices.Index(dynos, iv.Dyno)
		if i < 0 {
			continue
		}
		end := iv.End
		if end.IsZero() {
			end = res.End
		}
		fill := color(iv.Dyno)
		if iv.Kind == dynosim.KindCrash {
			fill = "black"
		}
		yy := lanesTop + laneH*float64(i)
		p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s %.1fs</title></rect>`,
			x(iv.Start), yy+2, math.Max(x(end)-x(iv.Start), 1.5), laneH-4, fill, iv.Dyno, iv.Kind, end.Sub(iv.Start).Seconds())
	}
	p(`</svg>`)
	_, err := io.WriteString(w, b.String())
	return err
}

// rssAt is the memory of the last sample at or before t, in MB.
func rssAt(ss []Sample, t time.Time) float64 {
	mb := 0.0
	for _, s := range ss {
		if s.At.After(t) {
			break
		}
		mb = float64(s.RSS) / (1 << 20)
	}
	return mb
}

func fmtClock(s float64) string {
	d := time.Duration(s) * time.Second
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

package training

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable writes the results as an aligned text table, with the GRU's
// gain over the Markov baseline when both are present.
func (r *Report) WriteTable(w io.Writer) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "dataset %s: %d sessions (%d train, %d held out), vocabulary %d\n\n",
		r.Dataset, r.Sessions, r.TrainSessions, r.TestSessions, r.VocabSize)
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\tRecall@1\tRecall@5\tRecall@20\tMRR@20\tprecision\tcoverage\tprefetch/click\tval MRR@20\ttrain s\t")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.2f\t%.3f\t%.1f\t\n", res.Model, res.RecallAt1, res.RecallAt5,
			res.RecallAt20, res.MRRAt20, res.Precision, res.Coverage, res.PrefetchesPerClick, res.ValMRRAt20, res.TrainSeconds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Results) > 0 {
		res := r.Results[0]
		fmt.Fprintf(&sb, "\n%d held-out transitions, %d to pages outside the vocabulary; prefetch at threshold %.2f, at most %d pages per click\n",
			res.Transitions, res.UnknownTargets, res.Threshold, res.TopK)
	}
	for _, res := range r.Results {
		if len(res.Params) > 0 {
			fmt.Fprintf(&sb, "%s tuned on validation: %s\n", res.Model, res.Params)
		}
	}
	if r.Verdict != "" {
		fmt.Fprintf(&sb, "%s\n", r.Verdict)
	}
	if m, g := r.Result(ModelMarkov), r.Result(ModelGRU); m != nil && g != nil {
		fmt.Fprintf(&sb, "gru vs markov1: Recall@1 %+.3f, Recall@5 %+.3f, Recall@20 %+.3f, MRR@20 %+.3f (%+.1f%%)\n",
			g.RecallAt1-m.RecallAt1, g.RecallAt5-m.RecallAt5, g.RecallAt20-m.RecallAt20, g.MRRAt20-m.MRRAt20,
			100*(g.MRRAt20-m.MRRAt20)/max(m.MRRAt20, 1e-12))
	}
	if s := r.GRU; s != nil {
		fmt.Fprintf(&sb, "gru training: %s\n", s.Summary())
	}
	_, err := io.WriteString(w, sb.String())
	return err
}

// WriteSVG draws the Recall@k curves (k = 1..MaxK) of every model, with
// MRR@20 in the legend, as a standalone SVG picture.
func (r *Report) WriteSVG(w io.Writer) error {
	const (
		width, height          = 720, 420
		left, right, top, bott = 60, 230, 40, 50
	)
	colors := []string{"#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#d62728"}
	pw, ph := float64(width-left-right), float64(height-top-bott)
	maxK := 1
	for _, res := range r.Results {
		maxK = max(maxK, len(res.RecallCurve))
	}
	x := func(k int) float64 {
		if maxK == 1 {
			return float64(left)
		}
		return float64(left) + pw*float64(k-1)/float64(maxK-1)
	}
	y := func(v float64) float64 { return float64(top) + ph*(1-v) }
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&sb, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&sb, `<text x="%d" y="22" font-size="14">Recall@k on held-out transitions: %s</text>`+"\n", left, xmlEscape(r.Dataset))
	for i := 0; i <= 10; i += 2 {
		v := float64(i) / 10
		fmt.Fprintf(&sb, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), float64(left)+pw, y(v))
		fmt.Fprintf(&sb, `<text x="%d" y="%.1f" text-anchor="end">%.1f</text>`+"\n", left-6, y(v)+4, v)
	}
	for k := 1; k <= maxK; k++ {
		if k == 1 || k%5 == 0 {
			fmt.Fprintf(&sb, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(k), top+int(ph)+18, k)
		}
	}
	fmt.Fprintf(&sb, `<text x="%.1f" y="%d" text-anchor="middle">k</text>`+"\n", float64(left)+pw/2, height-10)
	fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	for i, res := range r.Results {
		c := colors[i%len(colors)]
		var pts []string
		for k, v := range res.RecallCurve {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(k+1), y(v)))
		}
		fmt.Fprintf(&sb, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), c)
		ly := top + 20 + 36*i
		fmt.Fprintf(&sb, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", width-right+10, ly, width-right+30, ly, c)
		fmt.Fprintf(&sb, `<text x="%d" y="%d">%s</text>`+"\n", width-right+36, ly+4, xmlEscape(res.Model))
		fmt.Fprintf(&sb, `<text x="%d" y="%d" font-size="10">MRR@20 %.3f, R@5 %.3f</text>`+"\n", width-right+36, ly+17, res.MRRAt20, res.RecallAt5)
	}
	sb.WriteString("</svg>\n")
	_, err := io.WriteString(w, sb.String())
	return err
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}

package training

import (
	"bytes"
	"encoding/xml"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// upper is a Canonicalizer for tests.
type upper struct{}

func (upper) Canonical(p string) string { return strings.ToUpper(strings.TrimSpace(p)) }

func TestReadJSONLSessions(t *testing.T) {
	const log = `{"user_id":"b","page":"/x","ts":"2026-11-01T10:00:00Z"}
{"user_id":"a","page":"/1","ts":"2026-11-01T09:00:00Z"}
{"user_id":"a","page":"/3","ts":"2026-11-01T09:20:00Z"}
{"user_id":"a","page":"/2","ts":"2026-11-01t09:10:00z"}
not json
{"user_id":"a","page":"","ts":"2026-11-01T09:11:00Z"}
{"user_id":"a","page":"/4","ts":"yesterday"}
{"user_id":"a","page":"/5","ts":"2026-11-01T10:00:00.5Z"}

{"user_id":"b","page":"/y","ts":"2026-11-01T10:29:00Z"}
`
	tests := []struct {
		name  string
		cfg   JSONLConfig
		pages [][]string
	}{
		{"default gap", JSONLConfig{}, [][]string{{"/1", "/2", "/3"}, {"/x", "/y"}, {"/5"}}},
		{"short gap", JSONLConfig{Gap: 15 * time.Minute}, [][]string{{"/1", "/2", "/3"}, {"/x"}, {"/5"}, {"/y"}}},
		{"canonicalizer", JSONLConfig{Canonicalizer: upper{}}, [][]string{{"/1", "/2", "/3"}, {"/X", "/Y"}, {"/5"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sessions, st, err := ReadJSONL(strings.NewReader(log), tc.cfg)
			if err != nil {
				t.Fatalf("ReadJSONL: %v", err)
			}
			if st.Lines != 9 || st.Events != 6 || st.Skipped != 3 {
				t.Errorf("stats = %+v, want 9 lines, 6 events, 3 skipped", st)
			}
			var got [][]string
			for _, s := range sessions {
				got = append(got, s.Pages)
			}
			if !reflect.DeepEqual(got, tc.pages) {
				t.Fatalf("sessions = %v, want %v (ordered by start time)", got, tc.pages)
			}
			if sessions[0].User != "a" || !sessions[0].Start.Equal(time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC)) {
				t.Errorf("first session user %q start %s, want a at 09:00", sessions[0].User, sessions[0].Start)
			}
		})
	}
}

func TestReadMSNBCAndCollapse(t *testing.T) {
	const text = "% Different categories found in input file:\r\n\r\nfrontpage news tech\r\n\r\n% Sequences:\r\n\r\n1 1 \r\n2 \r\n3 2 2 3 3 \r\n"
	sessions, err := ReadMSNBC(strings.NewReader(text))
	if err != nil {
		t.Fatalf("ReadMSNBC: %v", err)
	}
	want := []Session{pages("/page/1", "/page/1"), pages("/page/2"), pages("/page/3", "/page/2", "/page/2", "/page/3", "/page/3")}
	if !reflect.DeepEqual(sessions, want) {
		t.Fatalf("sessions = %v, want %v", sessions, want)
	}
	collapsed := CollapseRepeats(sessions)
	wantC := []Session{pages("/page/1"), pages("/page/2"), pages("/page/3", "/page/2", "/page/3")}
	if !reflect.DeepEqual(collapsed, wantC) {
		t.Fatalf("collapsed = %v, want %v", collapsed, wantC)
	}
	if !reflect.DeepEqual(sessions, want) {
		t.Error("CollapseRepeats modified its input")
	}
	header := "% Different categories found in input file:\n\nfrontpage news tech\n\n% Sequences:\n\n"
	for _, bad := range []string{"no header\n1 2\n", "% Sequences:\n1 x 2\n", "% Sequences:\n1 0 2\n", header + "1 4\n", header + "0\n"} {
		if _, err := ReadMSNBC(strings.NewReader(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("ReadMSNBC(%q) error = %v, want ErrFormat", bad, err)
		}
	}
}

// TestReadMSNBCWithoutNames: without a line of category names any id
// from 1 is taken.
func TestReadMSNBCWithoutNames(t *testing.T) {
	sessions, err := ReadMSNBC(strings.NewReader("% Sequences:\n1 40\n"))
	if err != nil || len(sessions) != 1 || !reflect.DeepEqual(sessions[0], pages("/page/1", "/page/40")) {
		t.Fatalf("ReadMSNBC = %v, %v; want one session 1 40", sessions, err)
	}
}

func TestReportRendering(t *testing.T) {
	rep := &Report{Dataset: "d & <x>", Sessions: 10, TrainSessions: 8, TestSessions: 2, VocabSize: 5,
		Results: []Result{
			{Model: ModelMarkov, RecallAt1: 0.2, RecallAt5: 0.5, RecallAt20: 0.8, MRRAt20: 0.3, RecallCurve: []float64{0.2, 0.3, 0.4, 0.45, 0.5}},
			{Model: ModelGRU, RecallAt1: 0.3, RecallAt5: 0.6, RecallAt20: 0.9, MRRAt20: 0.4, RecallCurve: []float64{0.3, 0.4, 0.5, 0.55, 0.6}},
		},
		GRU: &GRUStats{Embedding: 4, Hidden: 8, Epochs: 2, BestEpoch: 2},
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"markov1", "gru", "0.600", "gru vs markov1: Recall@1 +0.100", "MRR@20 +0.100 (+33.3%)", "hidden 8"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var svg bytes.Buffer
	if err := rep.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&svg)
	lines := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 2 {
		t.Errorf("SVG has %d curves, want 2", lines)
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"dataset"`, `"results"`, `"model": "gru"`, `"recall_at_1"`, `"recall_at_5"`, `"recall_at_20"`, `"mrr_at_20"`} {
		if !strings.Contains(js.String(), key) {
			t.Errorf("report.json lacks %s", key)
		}
	}
}

// TestReadJSONLTooLongLine: a line over the reader's limit is an error
// naming its line number.
func TestReadJSONLTooLongLine(t *testing.T) {
	in := `{"user_id":"a","page":"/1","ts":"2026-11-01T09:00:00Z"}` + "\n\n" + strings.Repeat("x", maxLineBytes+1) + "\n"
	_, _, err := ReadJSONL(strings.NewReader(in), JSONLConfig{})
	if err == nil || !strings.Contains(err.Error(), "line 3 is longer than") {
		t.Fatalf("err %v, want line 3 named", err)
	}
}

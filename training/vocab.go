package training

import (
	"fmt"
	"sort"
	"strings"

	"github.com/prefetchd/prefetchd/model"
)

// VocabConfig bounds a vocabulary built from training sessions.
type VocabConfig struct {
	// MinCount is the fewest page views a page needs to get its own index;
	// rarer pages map to the unknown index. Default 1.
	MinCount int
	// MaxSize caps the vocabulary, the padding and unknown entries
	// included; the most viewed pages are kept. 0 means no cap.
	MaxSize int
}

// Validate checks the configuration.
func (c VocabConfig) Validate() error {
	if c.MinCount < 0 {
		return fmt.Errorf("vocab min count %d is negative", c.MinCount)
	}
	if c.MaxSize != 0 && c.MaxSize < 3 {
		return fmt.Errorf("vocab max size %d leaves no room for pages (need at least 3 or 0 for no cap)", c.MaxSize)
	}
	return nil
}

// BuildVocab ranks pages by views in sessions (ties by key, so the result
// is deterministic) and returns a vocabulary with model.PadKey at index 0,
// model.UnknownKey at index 1 and pages from index 2 in descending
// frequency. Pages that vocab.txt cannot hold as one line (empty, or
// holding '\n' or '\r', which a JSON page or a Kafka message may carry)
// never enter it: like rare pages they map to the unknown index.
func BuildVocab(sessions []Session, cfg VocabConfig) (*model.Vocab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	minCount := max(cfg.MinCount, 1)
	counts := make(map[string]int)
	for _, s := range sessions {
		for _, p := range s.Pages {
			counts[p]++
		}
	}
	type pc struct {
		page  string
		count int
	}
	ranked := make([]pc, 0, len(counts))
	for p, c := range counts {
		if c >= minCount && p != model.PadKey && p != model.UnknownKey && vocabLine(p) {
			ranked = append(ranked, pc{p, c})
		}
	}
	sort.Slice(ranked, func(i, j int) bool {
		if ranked[i].count != ranked[j].count {
			return ranked[i].count > ranked[j].count
		}
		return ranked[i].page < ranked[j].page
	})
	if cfg.MaxSize > 0 && len(ranked) > cfg.MaxSize-2 {
		ranked = ranked[:cfg.MaxSize-2]
	}
	pages := make([]string, 0, len(ranked)+2)
	pages = append(pages, model.PadKey, model.UnknownKey)
	for _, r := range ranked {
		pages = append(pages, r.page)
	}
	v, err := model.NewVocab(pages)
	if err != nil {
		return nil, fmt.Errorf("build vocabulary: %w", err)
	}
	return v, nil
}

// vocabLine reports whether page can be one line of vocab.txt.
func vocabLine(page string) bool {
	return page != "" && !strings.ContainsAny(page, "\r\n")
}

// Encode maps every session to vocabulary indices; pages outside the
// vocabulary become model.UnknownIndex.
func Encode(v *model.Vocab, sessions []Session) [][]int64 {
	out := make([][]int64, len(sessions))
	for i, s := range sessions {
		seq := make([]int64, len(s.Pages))
		for j, p := range s.Pages {
			seq[j] = v.Index(p)
		}
		out[i] = seq
	}
	return out
}

package model

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Reserved vocabulary indices shared by every bundle: sequences are left-padded
// with PadIndex, and pages outside the vocabulary map to UnknownIndex.
const (
	PadIndex     = 0
	UnknownIndex = 1
)

// Reserved vocabulary keys written at lines 0 and 1 of vocab.txt.
const (
	PadKey     = "<pad>"
	UnknownKey = "<unk>"
)

// MaxVocab bounds the size of a vocabulary read from a file, so that a hostile
// file cannot make the loader allocate without limit.
const MaxVocab = 1 << 22

// ErrBadVocab is returned (wrapped) when a vocabulary file breaks the contract.
var ErrBadVocab = errors.New("bad vocabulary")

// Vocab maps canonical page keys to model indices and back. Line i of
// vocab.txt is index i. A Vocab is immutable and safe for concurrent use.
type Vocab struct {
	pages []string
	index map[string]int64
}

// NewVocab builds a vocabulary from page keys in index order. pages[0] and
// pages[1] are the padding and unknown entries; keys must be unique.
func NewVocab(pages []string) (*Vocab, error) {
	if len(pages) < 2 {
		return nil, fmt.Errorf("%w: %d entries, need at least the padding and unknown entries", ErrBadVocab, len(pages))
	}
	if len(pages) > MaxVocab {
		return nil, fmt.Errorf("%w: %d entries exceeds the limit of %d", ErrBadVocab, len(pages), MaxVocab)
	}
	if pages[PadIndex] != PadKey || pages[UnknownIndex] != UnknownKey {
		return nil, fmt.Errorf("%w: lines 0 and 1 must be %q and %q, are %q and %q", ErrBadVocab, PadKey, UnknownKey, pages[PadIndex], pages[UnknownIndex])
	}
	v := &Vocab{pages: append([]string(nil), pages...), index: make(map[string]int64, len(pages))}
	for i, p := range v.pages {
		if _, dup := v.index[p]; dup {
			return nil, fmt.Errorf("%w: page %q appears twice (line %d)", ErrBadVocab, p, i)
		}
		v.index[p] = int64(i)
	}
	return v, nil
}

// ReadVocab reads a vocabulary in vocab.txt form: one page key per line.
func ReadVocab(r io.Reader) (*Vocab, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	var pages []string
	for sc.Scan() {
		if len(pages) >= MaxVocab {
			return nil, fmt.Errorf("%w: more than %d lines", ErrBadVocab, MaxVocab)
		}
		pages = append(pages, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read vocabulary: %w", err)
	}
	// A trailing empty line is a file ending, not an entry.
	for len(pages) > 2 && pages[len(pages)-1] == "" {
		pages = pages[:len(pages)-1]
	}
	return NewVocab(pages)
}

// LoadVocab reads vocab.txt from a file on disk.
func LoadVocab(path string) (*Vocab, error) {
	return LoadVocabFS(os.DirFS("/"), strings.TrimPrefix(path, "/"))
}

// LoadVocabFS reads vocab.txt from fsys.
func LoadVocabFS(fsys fs.FS, path string) (*Vocab, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open vocabulary: %w", err)
	}
	defer f.Close()
	v, err := ReadVocab(f)
	if err != nil {
		return nil, fmt.Errorf("vocabulary %s: %w", path, err)
	}
	return v, nil
}

// WriteTo writes the vocabulary in vocab.txt form.
func (v *Vocab) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, p := range v.pages {
		k, err := io.WriteString(w, p+"\n")
		n += int64(k)
		if err != nil {
			return n, fmt.Errorf("write vocabulary: %w", err)
		}
	}
	return n, nil
}

// Len is the number of indices, padding and unknown included.
func (v *Vocab) Len() int { return len(v.pages) }

// Index returns the index of a canonical page key, or UnknownIndex when the
// page is not in the vocabulary. The reserved keys are never returned for a
// page: a page literally named "<pad>" is unknown.
func (v *Vocab) Index(page string) int64 {
	i, ok := v.index[page]
	if !ok || i == PadIndex {
		return UnknownIndex
	}
	return i
}

// Lookup is Index that also says whether the page is in the vocabulary.
func (v *Vocab) Lookup(page string) (int64, bool) {
	i, ok := v.index[page]
	if !ok || i <= UnknownIndex {
		return UnknownIndex, false
	}
	return i, true
}

// Page returns the key of index i, or "" when i is out of range.
func (v *Vocab) Page(i int64) string {
	if i < 0 || i >= int64(len(v.pages)) {
		return ""
	}
	return v.pages[i]
}

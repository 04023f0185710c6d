package model

import (
	"context"
	"testing"
	"time"
)

func tAttrString(name, v string) []byte {
	b := bytesField(nil, 1, []byte(name))
	b = bytesField(b, 4, []byte(v))
	return varintField(b, 20, attrString)
}

// rnnGraph is one recurrent node over a float input x [seq, batch, input],
// with optional sequence lengths, returning Y and Y_h.
func rnnGraph(op, direction string, input, hidden int, lens []int64) tGraph {
	dirs := int64(1)
	if direction == "bidirectional" {
		dirs = 2
	}
	gates := map[string]int64{"GRU": 3, "LSTM": 4, "RNN": 1}[op]
	gh, in, h := gates*int64(hidden), int64(input), int64(hidden)
	inits := [][]byte{
		tFloatTensor("W", []int64{dirs, gh, in}, lcgWeights(int(dirs*gh*in), 11, 0.5)),
		tFloatTensor("R", []int64{dirs, gh, h}, lcgWeights(int(dirs*gh*h), 12, 0.5)),
		tFloatTensor("B", []int64{dirs, 2 * gh}, lcgWeights(int(dirs*2*gh), 13, 0.2)),
	}
	ins := []string{"x", "W", "R", "B", ""}
	if lens != nil {
		inits = append(inits, tIntTensor("lens", []int64{int64(len(lens))}, lens))
		ins[4] = "lens"
	}
	outs := []string{"Y", "Y_h"}
	attrs := [][]byte{tAttrInt("hidden_size", h), tAttrString("direction", direction)}
	if op == "GRU" {
		attrs = append(attrs, tAttrInt("linear_before_reset", 1))
	}
	return tGraph{opset: 14, inits: inits,
		inputs:  []tValue{{name: "x", elem: onnxFloat, dims: []any{"seq", "batch", in}}},
		outputs: []tValue{{name: "Y", elem: onnxFloat}, {name: "Y_h", elem: onnxFloat}},
		nodes:   []tNode{{op: op, name: "rnn", in: ins, out: outs, attrs: attrs}},
	}
}

// TestSequenceLens checks that a batch run with sequence_lens gives each row
// what it gets alone on its valid prefix, and zeros past it.
func TestSequenceLens(t *testing.T) {
	const T, N, I, H = 4, 3, 3, 5
	lens := []int64{4, 2, 0}
	x := lcgWeights(T*N*I, 21, 1)
	for _, op := range []string{"GRU", "LSTM", "RNN"} {
		for _, dir := range []string{"forward", "reverse", "bidirectional"} {
			t.Run(op+"/"+dir, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				batch, err := ParseModel(rnnGraph(op, dir, I, H, lens).encode())
				if err != nil {
					t.Fatal(err)
				}
				single, err := ParseModel(rnnGraph(op, dir, I, H, nil).encode())
				if err != nil {
					t.Fatal(err)
				}
				res, err := batch.Run(ctx, map[string]Tensor{"x": {Shape: []int{T, N, I}, Float32: x}})
				if err != nil {
					t.Fatal(err)
				}
				Y, Yh := res["Y"], res["Y_h"]
				D := Yh.Shape[0]
				for b, l := range lens {
					// Row b alone, cut to its length.
					xb := make([]float32, 0, int(l)*I)
					for s := range int(l) {
						xb = append(xb, x[(s*N+b)*I:(s*N+b+1)*I]...)
					}
					var want map[string]Tensor
					if l > 0 {
						if want, err = single.Run(ctx, map[string]Tensor{"x": {Shape: []int{int(l), 1, I}, Float32: xb}}); err != nil {
							t.Fatal(err)
						}
					}
					for d := range D {
						gotH := Yh.Float32[(d*N+b)*H : (d*N+b+1)*H]
						wantH := make([]float32, H)
						if l > 0 {
							wantH = want["Y_h"].Float32[d*H : (d+1)*H]
						}
						if diff := maxDiff(gotH, wantH); diff > 1e-6 {
							t.Errorf("row %d dir %d: Y_h differs by %g", b, d, diff)
						}
						for s := range T {
							gotY := Y.Float32[((s*D+d)*N+b)*H : ((s*D+d)*N+b+1)*H]
							wantY := make([]float32, H)
							if int64(s) < l {
								wantY = want["Y"].Float32[(s*D+d)*H : (s*D+d+1)*H]
							}
							if diff := maxDiff(gotY, wantY); diff > 1e-6 {
								t.Errorf("row %d dir %d step %d: Y differs by %g", b, d, s, diff)
							}
						}
					}
				}
			})
		}
	}
	t.Run("length out of range", func(t *testing.T) {
		m, err := ParseModel(rnnGraph("GRU", "forward", I, H, []int64{5, 1, 1}).encode())
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Run(context.Background(), map[string]Tensor{"x": {Shape: []int{T, N, I}, Float32: x}})
		if err == nil {
			t.Fatal("sequence length 5 of 4: no error")
		}
	})
}

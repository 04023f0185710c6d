package model

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
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

func tAttrStrings(name string, v ...string) []byte {
	b := bytesField(nil, 1, []byte(name))
	for _, x := range v {
		b = bytesField(b, 9, []byte(x))
	}
	return varintField(b, 20, attrStrings)
}

func tAttrFloat(name string, v float32) []byte {
	b := bytesField(nil, 1, []byte(name))
	b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, math.Float32bits(v))
	return varintField(b, 20, attrFloat)
}

func act64(name string, x float64) float64 {
	switch name {
	case "Sigmoid":
		return 1 / (1 + math.Exp(-x))
	case "Tanh":
		return math.Tanh(x)
	default:
		return math.Max(x, 0)
	}
}

// TestRecurrentOptions checks attributes and inputs no fixture exercises
// (non-default activations, clip, GRU without linear_before_reset, LSTM
// peepholes) against a direct float64 transcription of the ONNX formulas.
func TestRecurrentOptions(t *testing.T) {
	const T, I, H = 3, 4, 3
	x := lcgWeights(T*I, 31, 1.5)
	tests := []struct {
		op    string
		acts  []string
		clip  float32
		lbr   int64
		peeps bool
	}{
		{op: "GRU", acts: []string{"Sigmoid", "Relu"}, lbr: 1},
		{op: "GRU", acts: []string{"Sigmoid", "Tanh"}, lbr: 0, clip: 0.7},
		{op: "GRU", acts: []string{"Relu", "Tanh"}, lbr: 0},
		{op: "LSTM", acts: []string{"Sigmoid", "Relu", "Tanh"}, peeps: true},
		{op: "LSTM", acts: []string{"Sigmoid", "Tanh", "Tanh"}, clip: 0.5, peeps: true},
		{op: "RNN", acts: []string{"Relu"}, clip: 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s%v clip%v lbr%d", tt.op, tt.acts, tt.clip, tt.lbr), func(t *testing.T) {
			g := rnnGraph(tt.op, "forward", I, H, nil)
			node := &g.nodes[0]
			node.attrs = [][]byte{tAttrInt("hidden_size", H), tAttrStrings("activations", tt.acts...)}
			if tt.op == "GRU" {
				node.attrs = append(node.attrs, tAttrInt("linear_before_reset", tt.lbr))
			}
			if tt.clip > 0 {
				node.attrs = append(node.attrs, tAttrFloat("clip", tt.clip))
			}
			P := lcgWeights(3*H, 14, 0.5)
			if tt.peeps {
				g.inits = append(g.inits, tFloatTensor("P", []int64{1, 3 * H}, P))
				node.in = append(node.in, "", "", "P")
			}
			m, err := ParseModel(g.encode())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := m.Run(ctx, map[string]Tensor{"x": {Shape: []int{T, 1, I}, Float32: x}})
			if err != nil {
				t.Fatal(err)
			}
			gates := map[string]int{"GRU": 3, "LSTM": 4, "RNN": 1}[tt.op]
			W := lcgWeights(gates*H*I, 11, 0.5)
			R := lcgWeights(gates*H*H, 12, 0.5)
			B := lcgWeights(2*gates*H, 13, 0.2)
			clip := func(v float64) float64 {
				if tt.clip == 0 {
					return v
				}
				return math.Max(-float64(tt.clip), math.Min(float64(tt.clip), v))
			}
			// pre(g, j, hv) = W_g x + R_g hv + Wb_g + Rb_g for unit j.
			dot := func(M []float32, row int, v []float64) float64 {
				var s float64
				for k := range v {
					s += float64(M[row*len(v)+k]) * v[k]
				}
				return s
			}
			h, c := make([]float64, H), make([]float64, H)
			for s := range T {
				xs := make([]float64, I)
				for k := range xs {
					xs[k] = float64(x[s*I+k])
				}
				nh, nc := make([]float64, H), make([]float64, H)
				for j := range H {
					wx := func(g int) float64 { return dot(W, g*H+j, xs) + float64(B[g*H+j]) }
					rh := func(g int, v []float64) float64 { return dot(R, g*H+j, v) + float64(B[gates*H+g*H+j]) }
					switch tt.op {
					case "GRU":
						z := act64(tt.acts[0], clip(wx(0)+rh(0, h)))
						r := act64(tt.acts[0], clip(wx(1)+rh(1, h)))
						var n float64
						if tt.lbr != 0 {
							n = act64(tt.acts[1], clip(wx(2)+r*rh(2, h)))
						} else {
							rhv := make([]float64, H)
							// r ⊙ h uses each unit's own reset gate.
							for k := range H {
								rk := act64(tt.acts[0], clip(dot(W, H+k, xs)+float64(B[H+k])+dot(R, H+k, h)+float64(B[gates*H+H+k])))
								rhv[k] = rk * h[k]
							}
							n = act64(tt.acts[1], clip(wx(2)+rh(2, rhv)))
						}
						nh[j] = (1-z)*n + z*h[j]
					case "LSTM":
						ig := act64(tt.acts[0], clip(wx(0)+rh(0, h)+float64(P[j])*c[j]))
						fg := act64(tt.acts[0], clip(wx(2)+rh(2, h)+float64(P[2*H+j])*c[j]))
						cc := act64(tt.acts[1], clip(wx(3)+rh(3, h)))
						nc[j] = fg*c[j] + ig*cc
						og := act64(tt.acts[0], clip(wx(1)+rh(1, h)+float64(P[H+j])*nc[j]))
						nh[j] = og * act64(tt.acts[2], nc[j])
					default:
						nh[j] = act64(tt.acts[0], clip(wx(0)+rh(0, h)))
					}
				}
				h, c = nh, nc
			}
			got := res["Y_h"].Float32
			for j := range H {
				if d := math.Abs(float64(got[j]) - h[j]); d > 2e-6 {
					t.Fatalf("Y_h = %v, want %v", got, h)
				}
			}
		})
	}
}

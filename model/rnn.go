package model

import (
	"errors"
	"fmt"
	"strings"
)

// recurrentK runs the ONNX GRU, LSTM and RNN operators (layout 0:
// X [seq, batch, input], Y [seq, directions, batch, hidden]).
type recurrentK struct {
	cell    string // "GRU", "LSTM" or "RNN"
	gates   int    // 3, 4 or 1
	hidden  int
	dirs    int
	reverse bool // single direction, run backwards
	lbr     bool // GRU linear_before_reset
	clip    float32
	act     []string // activations (lower case), len(defaults) per direction
	// pw and pr are the per-direction input and recurrent weights packed
	// for the batched path, when they are constants.
	pw, pr []*packedT
}

func (k *recurrentK) pack(consts []*tens) {
	if len(consts) < 3 || consts[1] == nil || consts[2] == nil {
		return
	}
	W, R := consts[1], consts[2]
	if W.dt != dtFloat || R.dt != dtFloat || W.rank() != 3 || R.rank() != 3 || W.shape[0] != k.dirs || R.shape[0] != k.dirs {
		return // run reports the shape error
	}
	GH, I, Hd := W.shape[1], W.shape[2], R.shape[2]
	if R.shape[1] != GH || len(W.f) != k.dirs*GH*I || len(R.f) != k.dirs*GH*Hd {
		return
	}
	for d := range k.dirs {
		k.pw = append(k.pw, packT(W.f[d*GH*I:(d+1)*GH*I], GH, I))
		k.pr = append(k.pr, packT(R.f[d*GH*Hd:(d+1)*GH*Hd], GH, Hd))
	}
}

// packed returns ps[d], or nil.
func packed(ps []*packedT, d int) *packedT {
	if d < len(ps) {
		return ps[d]
	}
	return nil
}

func newRecurrent(op string, a *attrs, nin, nout int) (kernel, error) {
	k := &recurrentK{cell: op}
	maxIn, maxOut := 6, 2
	defAct := []string{"sigmoid", "tanh"}
	switch op {
	case "GRU":
		k.gates = 3
	case "LSTM":
		k.gates, maxIn, maxOut = 4, 8, 3
		defAct = []string{"sigmoid", "tanh", "tanh"}
	case "RNN":
		k.gates = 1
		defAct = []string{"tanh"}
	}
	if nin < 3 || nin > maxIn {
		return nil, fmt.Errorf("%d inputs, want 3 to %d", nin, maxIn)
	}
	if nout < 1 || nout > maxOut {
		return nil, fmt.Errorf("%d outputs, want 1 to %d", nout, maxOut)
	}
	h, err := a.int("hidden_size", 0)
	if err != nil {
		return nil, err
	}
	if h <= 0 || h > 1<<16 {
		return nil, fmt.Errorf("hidden_size %d out of range", h)
	}
	k.hidden = int(h)
	dir, err := a.str("direction", "forward")
	if err != nil {
		return nil, err
	}
	switch dir {
	case "forward":
		k.dirs = 1
	case "reverse":
		k.dirs, k.reverse = 1, true
	case "bidirectional":
		k.dirs = 2
	default:
		return nil, fmt.Errorf("direction %q", dir)
	}
	if op == "GRU" {
		lbr, err := a.int("linear_before_reset", 0)
		if err != nil {
			return nil, err
		}
		k.lbr = lbr != 0
	}
	if op == "LSTM" {
		f, err := a.int("input_forget", 0)
		if err != nil {
			return nil, err
		}
		if f != 0 {
			return nil, fmt.Errorf("%w attribute value input_forget=%d", ErrUnsupported, f)
		}
	}
	if k.clip, err = a.float("clip", 0); err != nil {
		return nil, err
	}
	if k.clip < 0 {
		return nil, fmt.Errorf("clip %v is negative", k.clip)
	}
	layout, err := a.int("layout", 0)
	if err != nil {
		return nil, err
	}
	if layout != 0 {
		return nil, fmt.Errorf("%w attribute value layout=%d", ErrUnsupported, layout)
	}
	acts, ok, err := a.strs("activations")
	if err != nil {
		return nil, err
	}
	if !ok {
		for range k.dirs {
			acts = append(acts, defAct...)
		}
	}
	if len(acts) != len(defAct)*k.dirs {
		return nil, fmt.Errorf("%d activations, want %d", len(acts), len(defAct)*k.dirs)
	}
	for _, name := range acts {
		if activation(name) == nil {
			return nil, fmt.Errorf("%w activation %q", ErrUnsupported, name)
		}
		k.act = append(k.act, strings.ToLower(name))
	}
	if a.has("activation_alpha") || a.has("activation_beta") {
		return nil, fmt.Errorf("%w attributes activation_alpha/activation_beta", ErrUnsupported)
	}
	return k, nil
}

func (k *recurrentK) run(in, out []*tens, sc *[]float32) error {
	X, W, R := in[0], in[1], in[2]
	var B, H0, C0, P *tens
	if len(in) > 3 {
		B = in[3]
	}
	var L *tens
	if len(in) > 4 {
		L = in[4]
	}
	if len(in) > 5 {
		H0 = in[5]
	}
	if len(in) > 6 {
		C0 = in[6]
	}
	if len(in) > 7 {
		P = in[7]
	}
	for _, t := range []*tens{X, W, R, B, H0, C0, P} {
		if t != nil && t.dt != dtFloat {
			return errors.New("inputs must be float32")
		}
	}
	if X.rank() != 3 {
		return fmt.Errorf("input X has shape %v, want [seq, batch, input]", X.shape)
	}
	T, N, I := X.shape[0], X.shape[1], X.shape[2]
	D, Hd, G := k.dirs, k.hidden, k.gates
	GH := G * Hd
	if !sameShape(W.shape, D, GH, I) {
		return fmt.Errorf("input W has shape %v, want [%d %d %d]", W.shape, D, GH, I)
	}
	if !sameShape(R.shape, D, GH, Hd) {
		return fmt.Errorf("input R has shape %v, want [%d %d %d]", R.shape, D, GH, Hd)
	}
	if B != nil && !sameShape(B.shape, D, 2*GH) {
		return fmt.Errorf("input B has shape %v, want [%d %d]", B.shape, D, 2*GH)
	}
	if H0 != nil && !sameShape(H0.shape, D, N, Hd) {
		return fmt.Errorf("initial_h has shape %v, want [%d %d %d]", H0.shape, D, N, Hd)
	}
	if C0 != nil && !sameShape(C0.shape, D, N, Hd) {
		return fmt.Errorf("initial_c has shape %v, want [%d %d %d]", C0.shape, D, N, Hd)
	}
	if P != nil && !sameShape(P.shape, D, 3*Hd) {
		return fmt.Errorf("input P has shape %v, want [%d %d]", P.shape, D, 3*Hd)
	}
	if overWork(D, T, N, GH, I+Hd) || int64(T)*int64(N)*int64(GH) > MaxTensorElems {
		return fmt.Errorf("input X %v too large for hidden size %d", X.shape, Hd)
	}
	// sequence_lens: row b runs its first lens[b] steps only; later steps
	// output zeros and leave its state alone (so a reverse direction starts
	// at the row's last valid step).
	var lens []int64
	if L != nil {
		if L.dt != dtInt || !sameShape(L.shape, N) {
			return fmt.Errorf("sequence_lens has shape %v, want [%d] integers", L.shape, N)
		}
		for _, l := range L.i {
			if l < 0 || l > int64(T) {
				return fmt.Errorf("%w: sequence length %d outside [0, %d]", ErrBadInput, l, T)
			}
			if l < int64(T) {
				lens = L.i
			}
		}
	}
	Y := out[0]
	if err := Y.reshape(dtFloat, T, D, N, Hd); err != nil {
		return err
	}
	var Yh, Yc *tens
	if len(out) > 1 {
		Yh = out[1]
		if err := Yh.reshape(dtFloat, D, N, Hd); err != nil {
			return err
		}
	}
	if len(out) > 2 {
		Yc = out[2]
		if err := Yc.reshape(dtFloat, D, N, Hd); err != nil {
			return err
		}
	}
	nh := N * Hd
	buf := growF(sc, T*N*GH+N*GH+6*nh+4*Hd)
	xw := buf[:T*N*GH]
	hr := buf[T*N*GH : T*N*GH+N*GH]
	rest := buf[T*N*GH+N*GH:]
	h, c, tmp, hh := rest[:nh], rest[nh:2*nh], rest[2*nh:3*nh], rest[3*nh:4*nh]
	gate := rest[4*nh : 4*nh+4*Hd]
	saved := rest[4*nh+4*Hd : 6*nh+4*Hd]
	for d := range D {
		Wd := W.f[d*GH*I : (d+1)*GH*I]
		Rd := R.f[d*GH*Hd : (d+1)*GH*Hd]
		var Wb, Rb []float32
		if B != nil {
			Wb = B.f[d*2*GH : d*2*GH+GH]
			Rb = B.f[d*2*GH+GH : (d+1)*2*GH]
		}
		// Input projections for every time step at once.
		if I > 0 {
			gemvRowsPacked(T*N, GH, I, packed(k.pw, d), Wd, X.f, I, xw, GH)
		} else {
			clear(xw)
		}
		if B != nil {
			// The recurrent bias is additive except for the GRU candidate
			// gate with linear_before_reset.
			bias := hr[:GH] // free until the time loop
			copy(bias, Wb)
			nadd := GH
			if k.lbr {
				nadd = 2 * Hd
			}
			for j, v := range Rb[:nadd] {
				bias[j] += v
			}
			for r := 0; r < T*N; r++ {
				row := xw[r*GH : (r+1)*GH]
				if !addAsm(row, bias) {
					for j, v := range bias {
						row[j] += v
					}
				}
			}
		}
		if H0 != nil {
			copy(h, H0.f[d*nh:(d+1)*nh])
		} else {
			clear(h)
		}
		if C0 != nil {
			copy(c, C0.f[d*nh:(d+1)*nh])
		} else {
			clear(c)
		}
		var Pd []float32
		if P != nil {
			Pd = P.f[d*3*Hd : (d+1)*3*Hd]
		}
		na := len(k.act) / D
		acts := k.act[d*na : (d+1)*na]
		reverse := k.reverse || d == 1
		for s := range T {
			t := s
			if reverse {
				t = T - 1 - s
			}
			xt := xw[t*N*GH : (t+1)*N*GH]
			if lens != nil {
				copy(saved[:nh], h)
				copy(saved[nh:], c)
			}
			switch k.cell {
			case "GRU":
				k.gruStep(acts, xt, Rd, packed(k.pr, d), Rb, h, hr, tmp, hh, gate, N)
			case "LSTM":
				matRows(h, Rd, packed(k.pr, d), hr, N, GH, Hd)
				k.lstmStep(acts, xt, hr, h, c, Pd, gate, N)
			default:
				matRows(h, Rd, packed(k.pr, d), hr, N, GH, Hd)
				for j := range h {
					h[j] = k.clipf(xt[j] + hr[j])
				}
				applyAct(acts[0], h)
			}
			yt := Y.f[(t*D+d)*nh : (t*D+d+1)*nh]
			copy(yt, h)
			for b, l := range lens {
				if int64(t) >= l {
					copy(h[b*Hd:(b+1)*Hd], saved[b*Hd:(b+1)*Hd])
					copy(c[b*Hd:(b+1)*Hd], saved[nh+b*Hd:nh+(b+1)*Hd])
					clear(yt[b*Hd : (b+1)*Hd])
				}
			}
		}
		if Yh != nil {
			copy(Yh.f[d*nh:(d+1)*nh], h)
		}
		if Yc != nil {
			copy(Yc.f[d*nh:(d+1)*nh], c)
		}
	}
	return nil
}

func (k *recurrentK) clipf(x float32) float32 {
	if k.clip == 0 {
		return x
	}
	return min(max(x, -k.clip), k.clip)
}

// matRows computes out[N, M] = h[N, K] · R[M, K]^T; p is R packed, or nil.
func matRows(h, R []float32, p *packedT, out []float32, N, M, K int) {
	gemvRowsPacked(N, M, K, p, R, h, K, out, M)
}

// gruStep advances h by one time step. xt holds X·W^T plus biases for the
// N batch rows, gates ordered z, r, h.
func (k *recurrentK) gruStep(acts []string, xt, Rd []float32, pr *packedT, Rb, h, hr, tmp, hh, gate []float32, N int) {
	Hd := k.hidden
	GH := 3 * Hd
	if k.lbr {
		matRows(h, Rd, pr, hr, N, GH, Hd)
		zr, cand := gate[:2*Hd], gate[2*Hd:3*Hd]
		for n := range N {
			x := xt[n*GH : (n+1)*GH]
			r := hr[n*GH : (n+1)*GH]
			hn := h[n*Hd : (n+1)*Hd]
			for j := range zr {
				zr[j] = k.clipf(x[j] + r[j])
			}
			applyAct(acts[0], zr)
			for j := range cand {
				rh := r[2*Hd+j]
				if Rb != nil {
					rh += Rb[2*Hd+j]
				}
				cand[j] = k.clipf(x[2*Hd+j] + zr[Hd+j]*rh)
			}
			applyAct(acts[1], cand)
			for j, z := range zr[:Hd] {
				hn[j] = (1-z)*cand[j] + z*hn[j]
			}
		}
		return
	}
	// z and r from the first 2H rows of R; the candidate uses (r ⊙ h)·Rh^T.
	f, g := activation(acts[0]), activation(acts[1])
	for n := range N {
		hn := h[n*Hd : (n+1)*Hd]
		zr := hr[n*GH : n*GH+2*Hd]
		gemv(2*Hd, Hd, Rd[:2*Hd*Hd], Hd, hn, zr)
		x := xt[n*GH : (n+1)*GH]
		t := tmp[n*Hd : (n+1)*Hd]
		for j := range Hd {
			zr[j] = f(k.clipf(x[j] + zr[j]))
			t[j] = f(k.clipf(x[Hd+j]+zr[Hd+j])) * hn[j]
		}
		c := hh[n*Hd : (n+1)*Hd]
		gemv(Hd, Hd, Rd[2*Hd*Hd:], Hd, t, c)
		for j := range Hd {
			cand := g(k.clipf(x[2*Hd+j] + c[j]))
			z := zr[j]
			hn[j] = (1-z)*cand + z*hn[j]
		}
	}
}

// lstmStep advances h and c by one step; gates ordered i, o, f, c.
func (k *recurrentK) lstmStep(acts []string, xt, hr, h, c, P, gate []float32, N int) {
	Hd := k.hidden
	GH := 4 * Hd
	ifg, cc, og := gate[:2*Hd], gate[2*Hd:3*Hd], gate[3*Hd:4*Hd]
	for n := range N {
		x := xt[n*GH : (n+1)*GH]
		r := hr[n*GH : (n+1)*GH]
		hn := h[n*Hd : (n+1)*Hd]
		cn := c[n*Hd : (n+1)*Hd]
		for j := range Hd {
			pi, pf := float32(0), float32(0)
			if P != nil {
				pi, pf = P[j], P[2*Hd+j]
			}
			ifg[j] = k.clipf(x[j] + r[j] + pi*cn[j])
			ifg[Hd+j] = k.clipf(x[2*Hd+j] + r[2*Hd+j] + pf*cn[j])
			cc[j] = k.clipf(x[3*Hd+j] + r[3*Hd+j])
		}
		applyAct(acts[0], ifg)
		applyAct(acts[1], cc)
		for j := range Hd {
			cn[j] = ifg[Hd+j]*cn[j] + ifg[j]*cc[j]
			po := float32(0)
			if P != nil {
				po = P[Hd+j]
			}
			og[j] = k.clipf(x[Hd+j] + r[Hd+j] + po*cn[j])
		}
		applyAct(acts[0], og)
		copy(cc, cn)
		applyAct(acts[2], cc)
		for j := range Hd {
			hn[j] = og[j] * cc[j]
		}
	}
}

// applyAct applies a named activation in place.
func applyAct(name string, v []float32) {
	switch name {
	case "tanh":
		tanhVec(v, v)
	case "sigmoid":
		sigmoidVec(v, v)
	default:
		for i, x := range v {
			v[i] = reluf(x)
		}
	}
}

func sameShape(shape []int, want ...int) bool {
	if len(shape) != len(want) {
		return false
	}
	for i := range shape {
		if shape[i] != want[i] {
			return false
		}
	}
	return true
}

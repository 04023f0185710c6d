package model

import (
	"math"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// TestKernelVariants runs each version of the int8 and int16 kernels this
// CPU has (AVX2; VNNI, which fuses two AVX2 instructions into one) and the
// Go loops of CPUs without them on the same rows: each must match float64
// on the values as stored, and the assembly versions must agree bit for
// bit (the Go loops within float32 rounding), so that the clustered scorer
// answers the same on any machine.
func TestKernelVariants(t *testing.T) {
	type variant struct {
		name   string
		logits func(a *int8, n, h int, x *int16, scale, bias *float32, inv, off float32, out *float32) float32
		dots   func(n, hp int, means *int16, dirs *int8, x *int16, mscale, dscale *float32, inv float32, mdots, ddots *float32)
	}
	var variants []variant
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		variants = append(variants, variant{"avx2", logitsI8AVX2, clusterDotsAVX2})
	}
	if hasVNNI() {
		variants = append(variants, variant{"vnni", logitsI8VNNI, clusterDotsVNNI})
	}
	// The Go loops that run on CPUs without AVX2, on the same rows: the
	// products are exact integers; the kernels sum the means' lanes in
	// float32, so they agree with these within float32 rounding.
	variants = append(variants, variant{"go",
		func(a *int8, n, h int, x *int16, scale, bias *float32, inv, off float32, out *float32) float32 {
			acc := make([]int32, n)
			dotI8Go(unsafe.Slice(a, n*h), n, h, unsafe.Slice(x, h), acc)
			o, sc, b := unsafe.Slice(out, n), unsafe.Slice(scale, n), unsafe.Slice(bias, n)
			for i, s := range acc {
				o[i] = float32(s)*(sc[i]*inv) + b[i] + off
			}
			return 0
		},
		func(n, hp int, means *int16, dirs *int8, x *int16, mscale, dscale *float32, inv float32, mdots, ddots *float32) {
			clusterDotsGo(0, n, hp, unsafe.Slice(means, n*hp), unsafe.Slice(dirs, n*hp), unsafe.Slice(x, hp),
				unsafe.Slice(mscale, n), unsafe.Slice(dscale, n), inv, unsafe.Slice(mdots, n), unsafe.Slice(ddots, n))
		}})
	t.Logf("%d kernel versions on this CPU", len(variants))
	const n, hp, inv, off = 12, 128, 1.0 / 3000, -0.5
	means, dirs, x, mscale, dscale := clusterDotsCase(n, hp)
	rows := make([]int8, n*hp)
	for i := range rows {
		rows[i] = int8(means[i] >> 5) // within ±128 at meanTop 4096
	}
	bias := lcgWeights(n, 11, 2)
	wantM, wantD := clusterDotsRef(n, hp, means, dirs, x, mscale, dscale, inv)
	var first []float32
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			logits := make([]float32, n)
			v.logits(&rows[0], n, hp, &x[0], &mscale[0], &bias[0], inv, off, &logits[0])
			mdots, ddots := make([]float32, n), make([]float32, n)
			v.dots(n, hp, &means[0], &dirs[0], &x[0], &mscale[0], &dscale[0], inv, &mdots[0], &ddots[0])
			for c := range n {
				var dot float64
				for j := range hp {
					dot += float64(rows[c*hp+j]) * float64(x[j])
				}
				want := dot*float64(mscale[c])*inv + float64(bias[c]) + off
				checks := []struct {
					what      string
					got, want float64
				}{{"logit", float64(logits[c]), want}, {"mean product", float64(mdots[c]), wantM[c]}, {"direction product", float64(ddots[c]), wantD[c]}}
				for _, ck := range checks {
					if math.Abs(ck.got-ck.want) > 1e-5*(1+math.Abs(ck.want)) {
						t.Errorf("row %d: %s %v, want %v", c, ck.what, ck.got, ck.want)
					}
				}
			}
			all := slices.Concat(logits, mdots, ddots)
			switch {
			case first == nil:
				first = all
			case v.name == "go":
				for i, got := range all {
					if math.Abs(float64(got-first[i])) > 1e-6*(1+math.Abs(float64(first[i]))) {
						t.Errorf("value %d: %v, want the kernel's %v", i, got, first[i])
					}
				}
			case !slices.Equal(all, first):
				t.Errorf("%s: %v, want the first version's %v bit for bit", v.name, all, first)
			}
		})
	}
}

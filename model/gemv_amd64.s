#include "textflag.h"

// Y0 to Y3 zeroed: the accumulators of four rows.
#define ZERO4 VXORPS Y0, Y0, Y0; VXORPS Y1, Y1, Y1; VXORPS Y2, Y2, Y2; VXORPS Y3, Y3, Y3

// R11 to R14 point at four rows from base, stride bytes apart.
#define ROWS4(base, stride) MOVQ base, R11; LEAQ (R11)(stride*1), R12; LEAQ (R12)(stride*1), R13; LEAQ (R13)(stride*1), R14

// X0 holds the horizontal sums of Y0 to Y3, in order.
#define HSUM4 VHADDPS Y1, Y0, Y0; VHADDPS Y3, Y2, Y2; VHADDPS Y2, Y0, Y0; VEXTRACTF128 $1, Y0, X1; VADDPS X1, X0, X0

// MACW(x, a, acc, tmp) adds to the int32 lanes of acc the sums of pairs
// of products of the int16 lanes of a and x (VPMADDWD, then VPADDD; tmp
// is scratch and may be a). MACV does the same in one VNNI instruction.
// Both wrap around on overflow alike, so kernels built on either give the
// same results.
#define MACW(x, a, acc, tmp) VPMADDWD a, x, tmp; VPADDD tmp, acc, acc
#define MACV(x, a, acc, tmp) VPDPWSSD a, x, acc

// ZERO4I zeroes four registers.
#define ZERO4I(a, b, c, d) VPXOR a, a, a; VPXOR b, b, b; VPXOR c, c, c; VPXOR d, d, d

// MAC4I8(MAC, x, s0, s1, s2, s3, a0, a1, a2, a3) widens the 16 int8 at
// each of s0 to s3 to int16 and MACs them with x into a0 to a3 (scratch
// Y5, Y6, Y7, Y12).
#define MAC4I8(MAC, x, s0, s1, s2, s3, a0, a1, a2, a3) VPMOVSXBW s0, Y5; MAC(x, Y5, a0, Y5); VPMOVSXBW s1, Y6; MAC(x, Y6, a1, Y6); VPMOVSXBW s2, Y7; MAC(x, Y7, a2, Y7); VPMOVSXBW s3, Y12; MAC(x, Y12, a3, Y12)

// func logitsI8AVX2(a *int8, n, h int, x *int16, scale, bias *float32, inv, off float32, out *float32) float32
// func logitsI8VNNI(same)
// out[i] = float32(sum over j < h of a[i*h+j] * x[j]) * scale[i] * inv +
// bias[i] + off for i < n (n a positive multiple of 4, h a multiple of
// 16), four rows at a time, each load of x shared by the four; returns
// the largest out[i].
#define LOGITS_I8(MAC) \
	MOVQ         a+0(FP), SI; \
	MOVQ         n+8(FP), CX; \
	MOVQ         h+16(FP), DX; \
	MOVQ         x+24(FP), DI; \
	MOVQ         scale+32(FP), R14; \
	MOVQ         bias+40(FP), R15; \
	VBROADCASTSS inv+48(FP), X15; \
	VBROADCASTSS off+52(FP), X13; \
	MOVQ         out+56(FP), R8; \
	LEAQ         (SI)(DX*1), R10; \
	LEAQ         (R10)(DX*1), R11; \
	LEAQ         (R11)(DX*1), R12; \
	MOVQ         DX, R13; \
	SHLQ         $2, R13; \
	VPCMPEQD     X14, X14, X14; \
	VPSLLD       $23, X14, X14; \
	XORQ         BX, BX; \
l4row: \
	CMPQ  CX, $4; \
	JL    l4done; \
	ZERO4I(Y0, Y1, Y2, Y3); \
	XORQ  R9, R9; \
l4inner: \
	VMOVDQU   (DI)(R9*2), Y4; \
	MAC4I8(MAC, Y4, (SI)(R9*1), (R10)(R9*1), (R11)(R9*1), (R12)(R9*1), Y0, Y1, Y2, Y3); \
	ADDQ      $16, R9; \
	CMPQ      R9, DX; \
	JLT       l4inner; \
	VPHADDD      Y1, Y0, Y0; \
	VPHADDD      Y3, Y2, Y2; \
	VPHADDD      Y2, Y0, Y0; \
	VEXTRACTI128 $1, Y0, X1; \
	VPADDD       X1, X0, X0; \
	VCVTDQ2PS    X0, X0; \
	VMULPS       (R14)(BX*4), X15, X1; \
	VFMADD213PS  (R15)(BX*4), X1, X0; \
	VADDPS       X13, X0, X0; \
	VMOVUPS      X0, (R8)(BX*4); \
	VMAXPS       X0, X14, X14; \
	ADDQ         R13, SI; \
	ADDQ         R13, R10; \
	ADDQ         R13, R11; \
	ADDQ         R13, R12; \
	ADDQ         $4, BX; \
	SUBQ         $4, CX; \
	JMP          l4row; \
l4done: \
	VPERMILPS $0x4e, X14, X1; \
	VMAXPS    X1, X14, X14; \
	VPERMILPS $0xb1, X14, X1; \
	VMAXPS    X1, X14, X14; \
	VMOVSS    X14, ret+64(FP); \
	VZEROUPPER; \
	RET

// CLUSTER_DOTS(MAC) is the body of clusterDotsAVX2 and clusterDotsVNNI.
// AX = hp, DX = x, BX = cluster, R8 = n; SI and R9 to R11 the four means
// rows of a block, DI and R12 to R14 its four direction rows; Y0 to Y3
// and Y8 to Y11 their accumulators, Y15 inv. The means' int32 lanes are
// summed in float32 (their totals may pass int32; each lane does not), the
// directions' in int32.
#define CLUSTER_DOTS(MAC) \
	MOVQ         n+0(FP), R8; \
	MOVQ         hp+8(FP), AX; \
	MOVQ         means+16(FP), SI; \
	MOVQ         dirs+24(FP), DI; \
	MOVQ         x+32(FP), DX; \
	VBROADCASTSS inv+56(FP), X15; \
	XORQ         BX, BX; \
cdblock: \
	CMPQ         BX, R8; \
	JGE          cddone; \
	LEAQ         (SI)(AX*2), R9; \
	LEAQ         (R9)(AX*2), R10; \
	LEAQ         (R10)(AX*2), R11; \
	LEAQ         (DI)(AX*1), R12; \
	LEAQ         (R12)(AX*1), R13; \
	LEAQ         (R13)(AX*1), R14; \
	ZERO4I(Y0, Y1, Y2, Y3); \
	ZERO4I(Y8, Y9, Y10, Y11); \
	XORQ         CX, CX; \
cdcol: \
	VMOVDQU      (DX)(CX*2), Y4; \
	MAC(Y4, (SI)(CX*2), Y0, Y5); \
	MAC(Y4, (R9)(CX*2), Y1, Y6); \
	MAC(Y4, (R10)(CX*2), Y2, Y7); \
	MAC(Y4, (R11)(CX*2), Y3, Y12); \
	MAC4I8(MAC, Y4, (DI)(CX*1), (R12)(CX*1), (R13)(CX*1), (R14)(CX*1), Y8, Y9, Y10, Y11); \
	ADDQ         $16, CX; \
	CMPQ         CX, AX; \
	JLT          cdcol; \
	VCVTDQ2PS    Y0, Y0; \
	VCVTDQ2PS    Y1, Y1; \
	VCVTDQ2PS    Y2, Y2; \
	VCVTDQ2PS    Y3, Y3; \
	HSUM4; \
	MOVQ         mscale+40(FP), R15; \
	VMULPS       (R15)(BX*4), X0, X0; \
	VMULPS       X15, X0, X0; \
	MOVQ         mdots+64(FP), R15; \
	VMOVUPS      X0, (R15)(BX*4); \
	VPHADDD      Y9, Y8, Y8; \
	VPHADDD      Y11, Y10, Y10; \
	VPHADDD      Y10, Y8, Y8; \
	VEXTRACTI128 $1, Y8, X9; \
	VPADDD       X9, X8, X8; \
	VCVTDQ2PS    X8, X8; \
	MOVQ         dscale+48(FP), R15; \
	VMULPS       (R15)(BX*4), X8, X8; \
	VMULPS       X15, X8, X8; \
	MOVQ         ddots+72(FP), R15; \
	VMOVUPS      X8, (R15)(BX*4); \
	LEAQ         (R11)(AX*2), SI; \
	LEAQ         (R14)(AX*1), DI; \
	ADDQ         $4, BX; \
	JMP          cdblock; \
cddone: \
	VZEROUPPER; \
	RET

// func gemvAVX2(m, n int, a *float32, lda int, x *float32, y *float32)
// y[i] = sum over j < n of a[i*lda+j] * x[j], for i < m. n must be a
// multiple of 8 (the caller adds the remaining columns).
TEXT ·gemvAVX2(SB), NOSPLIT, $0-48
	MOVQ m+0(FP), R8
	MOVQ n+8(FP), BX
	SHLQ $2, BX
	MOVQ a+16(FP), SI
	MOVQ lda+24(FP), R10
	SHLQ $2, R10
	MOVQ x+32(FP), DI
	MOVQ y+40(FP), DX

rows4:
	CMPQ R8, $4
	JL   rows1
	ZERO4
	ROWS4(SI, R10)
	XORQ CX, CX

cols4:
	CMPQ CX, BX
	JGE  sum4
	VMOVUPS     (DI)(CX*1), Y4
	VFMADD231PS (R11)(CX*1), Y4, Y0
	VFMADD231PS (R12)(CX*1), Y4, Y1
	VFMADD231PS (R13)(CX*1), Y4, Y2
	VFMADD231PS (R14)(CX*1), Y4, Y3
	ADDQ        $32, CX
	JMP         cols4

sum4:
	HSUM4
	VMOVUPS      X0, (DX)
	LEAQ         (SI)(R10*4), SI
	ADDQ         $16, DX
	SUBQ         $4, R8
	JMP          rows4

rows1:
	CMPQ R8, $0
	JLE  done
	VXORPS Y0, Y0, Y0
	XORQ   CX, CX

cols1:
	CMPQ CX, BX
	JGE  sum1
	VMOVUPS     (DI)(CX*1), Y4
	VFMADD231PS (SI)(CX*1), Y4, Y0
	ADDQ        $32, CX
	JMP         cols1

sum1:
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	VMOVSS       X0, (DX)
	ADDQ         R10, SI
	ADDQ         $4, DX
	DECQ         R8
	JMP          rows1

done:
	VZEROUPPER
	RET

// Constants of the float32 exponential (see expf in mathf.go).
DATA expconst<>+0(SB)/4, $0xc2ae999a  // -87.3
DATA expconst<>+4(SB)/4, $0x3fb8aa3b  // log2(e)
DATA expconst<>+8(SB)/4, $0x4b400000  // 1.5 * 2^23
DATA expconst<>+12(SB)/4, $0x3f318000 // ln2 high part 0.693359375
DATA expconst<>+16(SB)/4, $0xb95e8083 // ln2 low part -2.12194440e-4
DATA expconst<>+20(SB)/4, $0x39506967 // 1.9875691500e-4
DATA expconst<>+24(SB)/4, $0x3ab743ce // 1.3981999507e-3
DATA expconst<>+28(SB)/4, $0x3c088908 // 8.3334519073e-3
DATA expconst<>+32(SB)/4, $0x3d2aa9c1 // 4.1665795894e-2
DATA expconst<>+36(SB)/4, $0x3e2aaaaa // 1.6666665459e-1
DATA expconst<>+40(SB)/4, $0x3f000000 // 5.0000001201e-1
DATA expconst<>+44(SB)/4, $0x3f800000 // 1
DATA expconst<>+48(SB)/4, $0x0000007f // 127
DATA expconst<>+52(SB)/4, $0x42b16666 // 88.7
GLOBL expconst<>(SB), RODATA|NOPTR, $56

// func expAffineAVX2(dst, src *float32, n int, scale, shift float32) float32
// dst[i] = exp(src[i]*scale - shift) for i < n (n a multiple of 8), the
// argument clamped to [-87.3, 88.7]; returns the sum.
TEXT ·expAffineAVX2(SB), NOSPLIT, $0-36
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), BX
	SHLQ $2, BX
	VBROADCASTSS scale+24(FP), Y6
	VBROADCASTSS shift+28(FP), Y15
	VBROADCASTSS expconst<>+0(SB), Y14  // lower clamp
	VBROADCASTSS expconst<>+4(SB), Y13  // log2e
	VBROADCASTSS expconst<>+8(SB), Y12  // magic
	VBROADCASTSS expconst<>+12(SB), Y11 // ln2hi
	VBROADCASTSS expconst<>+16(SB), Y10 // ln2lo
	VBROADCASTSS expconst<>+44(SB), Y9  // 1
	VPBROADCASTD expconst<>+48(SB), Y8  // 127
	VXORPS       Y7, Y7, Y7             // sum
	XORQ         CX, CX

loop:
	CMPQ CX, BX
	JGE  fin
	VMOVUPS (SI)(CX*1), Y0
	VFMSUB213PS Y15, Y6, Y0             // x = src*scale - shift
	VMAXPS  Y14, Y0, Y0                 // clamp below
	VBROADCASTSS expconst<>+52(SB), Y1
	VMINPS  Y1, Y0, Y0                  // clamp above
	VMOVAPS Y12, Y1
	VFMADD231PS Y13, Y0, Y1             // t = x*log2e + magic
	VPSUBD  Y12, Y1, Y2                 // n = bits(t) - bits(magic)
	VSUBPS  Y12, Y1, Y1                 // fn = t - magic
	VFNMADD231PS Y11, Y1, Y0            // r = x - fn*ln2hi
	VFNMADD231PS Y10, Y1, Y0            // r -= fn*ln2lo
	VBROADCASTSS expconst<>+20(SB), Y3  // p = c0
	VBROADCASTSS expconst<>+24(SB), Y4
	VFMADD213PS  Y4, Y0, Y3             // p = p*r + c1
	VBROADCASTSS expconst<>+28(SB), Y4
	VFMADD213PS  Y4, Y0, Y3
	VBROADCASTSS expconst<>+32(SB), Y4
	VFMADD213PS  Y4, Y0, Y3
	VBROADCASTSS expconst<>+36(SB), Y4
	VFMADD213PS  Y4, Y0, Y3
	VBROADCASTSS expconst<>+40(SB), Y4
	VFMADD213PS  Y4, Y0, Y3             // p = p*r + c5
	VMULPS       Y0, Y0, Y5             // r2 = r*r
	VFMADD213PS  Y0, Y5, Y3             // y = p*r2 + r
	VADDPS       Y9, Y3, Y3             // y += 1
	VPADDD       Y8, Y2, Y2             // n + 127
	VPSLLD       $23, Y2, Y2            // 2^n
	VMULPS       Y2, Y3, Y3
	VMOVUPS      Y3, (DI)(CX*1)
	VADDPS       Y3, Y7, Y7
	ADDQ         $32, CX
	JMP          loop

fin:
	VEXTRACTF128 $1, Y7, X1
	VADDPS       X1, X7, X7
	VHADDPS      X7, X7, X7
	VHADDPS      X7, X7, X7
	VMOVSS       X7, ret+32(FP)
	VZEROUPPER
	RET

// func gemv4AVX2(m, n int, a *float32, lda int, x *float32, ldx int, y *float32, ldy int)
// For the four vectors x[b*ldx : b*ldx+n] (b < 4), y[b*ldy+i] = sum over
// j < n of a[i*lda+j] * x[b*ldx+j], for i < m; n is a multiple of 8. Each
// row of a is read once for the four vectors.
TEXT ·gemv4AVX2(SB), NOSPLIT, $0-64
	MOVQ m+0(FP), R8
	MOVQ n+8(FP), BX
	SHLQ $2, BX
	MOVQ a+16(FP), SI
	MOVQ lda+24(FP), R10
	SHLQ $2, R10
	MOVQ x+32(FP), DI
	MOVQ ldx+40(FP), R9
	SHLQ $2, R9
	MOVQ y+48(FP), DX
	MOVQ ldy+56(FP), AX
	SHLQ $2, AX
	LEAQ (AX)(AX*2), R11
	LEAQ (DI)(R9*1), R12
	LEAQ (R12)(R9*1), R13
	LEAQ (R13)(R9*1), R14

row:
	CMPQ R8, $0
	JLE  done4x
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   CX, CX

col:
	CMPQ CX, BX
	JGE  hsum
	VMOVUPS     (SI)(CX*1), Y4
	VFMADD231PS (DI)(CX*1), Y4, Y0
	VFMADD231PS (R12)(CX*1), Y4, Y1
	VFMADD231PS (R13)(CX*1), Y4, Y2
	VFMADD231PS (R14)(CX*1), Y4, Y3
	ADDQ        $32, CX
	JMP         col

hsum:
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0 // the four vectors' sums for this row
	VMOVSS       X0, (DX)
	VEXTRACTPS   $1, X0, (DX)(AX*1)
	VEXTRACTPS   $2, X0, (DX)(AX*2)
	VEXTRACTPS   $3, X0, (DX)(R11*1)
	ADDQ         R10, SI
	ADDQ         $4, DX
	DECQ         R8
	JMP          row

done4x:
	VZEROUPPER
	RET

// func maxAVX2(x *float32, n int) float32
// The largest of x[0:n] (n a positive multiple of 8; NaN handling as
// MAXPS: a NaN in x may be skipped).
TEXT ·maxAVX2(SB), NOSPLIT, $0-20
	MOVQ    x+0(FP), SI
	MOVQ    n+8(FP), BX
	SHLQ    $2, BX
	VMOVUPS (SI), Y0
	MOVQ    $32, CX

maxloop:
	CMPQ   CX, BX
	JGE    maxfin
	VMAXPS (SI)(CX*1), Y0, Y0
	ADDQ   $32, CX
	JMP    maxloop

maxfin:
	VEXTRACTF128 $1, Y0, X1
	VMAXPS       X1, X0, X0
	VPERMILPS    $0x4e, X0, X1
	VMAXPS       X1, X0, X0
	VPERMILPS    $0xb1, X0, X1
	VMAXPS       X1, X0, X0
	VMOVSS       X0, ret+16(FP)
	VZEROUPPER
	RET

// func scaleAVX2(x *float32, n int, s float32)
// x[i] *= s for i < n (n a multiple of 8).
TEXT ·scaleAVX2(SB), NOSPLIT, $0-20
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), BX
	SHLQ         $2, BX
	VBROADCASTSS s+16(FP), Y1
	XORQ         CX, CX

scaleloop:
	CMPQ    CX, BX
	JGE     scalefin
	VMULPS  (SI)(CX*1), Y1, Y0
	VMOVUPS Y0, (SI)(CX*1)
	ADDQ    $32, CX
	JMP     scaleloop

scalefin:
	VZEROUPPER
	RET

// func gemmPackedAVX2(k, m int, x *float32, ldx int, wt *float32, out *float32, ldo int)
// For the four vectors x[b*ldx : b*ldx+k] (b < 4): out[b*ldo+j] = sum over
// c < k of x[b*ldx+c] * A[j][c], for j < m rounded down to a multiple of 8.
// wt holds A in column panels (see packT): for each block of 16 outputs
// (then one of 8), k rows of 16 (8) weights, contiguous. Each weight is
// loaded once for the four vectors and each x element is broadcast once per
// panel, so the loop is bound by FMA throughput, not by loads.
TEXT ·gemmPackedAVX2(SB), NOSPLIT, $0-56
	MOVQ k+0(FP), BX
	SHLQ $2, BX
	MOVQ m+8(FP), R8
	MOVQ x+16(FP), DI
	MOVQ ldx+24(FP), R9
	SHLQ $2, R9
	LEAQ (DI)(R9*1), R12
	LEAQ (R12)(R9*1), R13
	LEAQ (R13)(R9*1), R14
	MOVQ wt+32(FP), SI
	MOVQ out+40(FP), DX
	MOVQ ldo+48(FP), AX
	SHLQ $2, AX
	LEAQ (AX)(AX*2), R11

blk16:
	CMPQ R8, $16
	JL   blk8
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ   CX, CX

k16:
	CMPQ         CX, BX
	JGE          st16
	VMOVUPS      (SI), Y8
	VMOVUPS      32(SI), Y9
	VBROADCASTSS (DI)(CX*1), Y10
	VFMADD231PS  Y8, Y10, Y0
	VFMADD231PS  Y9, Y10, Y1
	VBROADCASTSS (R12)(CX*1), Y11
	VFMADD231PS  Y8, Y11, Y2
	VFMADD231PS  Y9, Y11, Y3
	VBROADCASTSS (R13)(CX*1), Y12
	VFMADD231PS  Y8, Y12, Y4
	VFMADD231PS  Y9, Y12, Y5
	VBROADCASTSS (R14)(CX*1), Y13
	VFMADD231PS  Y8, Y13, Y6
	VFMADD231PS  Y9, Y13, Y7
	ADDQ         $64, SI
	ADDQ         $4, CX
	JMP          k16

st16:
	VMOVUPS Y0, (DX)
	VMOVUPS Y1, 32(DX)
	VMOVUPS Y2, (DX)(AX*1)
	VMOVUPS Y3, 32(DX)(AX*1)
	VMOVUPS Y4, (DX)(AX*2)
	VMOVUPS Y5, 32(DX)(AX*2)
	VMOVUPS Y6, (DX)(R11*1)
	VMOVUPS Y7, 32(DX)(R11*1)
	ADDQ    $64, DX
	SUBQ    $16, R8
	JMP     blk16

blk8:
	CMPQ R8, $8
	JL   gdone
	VXORPS Y0, Y0, Y0
	VXORPS Y2, Y2, Y2
	VXORPS Y4, Y4, Y4
	VXORPS Y6, Y6, Y6
	XORQ   CX, CX

k8:
	CMPQ         CX, BX
	JGE          st8
	VMOVUPS      (SI), Y8
	VBROADCASTSS (DI)(CX*1), Y10
	VFMADD231PS  Y8, Y10, Y0
	VBROADCASTSS (R12)(CX*1), Y11
	VFMADD231PS  Y8, Y11, Y2
	VBROADCASTSS (R13)(CX*1), Y12
	VFMADD231PS  Y8, Y12, Y4
	VBROADCASTSS (R14)(CX*1), Y13
	VFMADD231PS  Y8, Y13, Y6
	ADDQ         $32, SI
	ADDQ         $4, CX
	JMP          k8

st8:
	VMOVUPS Y0, (DX)
	VMOVUPS Y2, (DX)(AX*1)
	VMOVUPS Y4, (DX)(AX*2)
	VMOVUPS Y6, (DX)(R11*1)
	ADDQ    $32, DX
	SUBQ    $8, R8
	JMP     blk8

gdone:
	VZEROUPPER
	RET

// func addAVX2(dst, src *float32, n int)
// dst[i] += src[i] for i < n (n a multiple of 8).
TEXT ·addAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), BX
	SHLQ $2, BX
	XORQ CX, CX

addloop:
	CMPQ    CX, BX
	JGE     addfin
	VMOVUPS (DI)(CX*1), Y0
	VADDPS  (SI)(CX*1), Y0, Y0
	VMOVUPS Y0, (DI)(CX*1)
	ADDQ    $32, CX
	JMP     addloop

addfin:
	VZEROUPPER
	RET

// func ratioAVX2(x *float32, n int, a, b float32)
// x[i] = (a + b*x[i]) / (1 + x[i]) for i < n (n a multiple of 8): with x
// an exponential this finishes a sigmoid (a 1, b 0) or a tanh (a 1, b -1).
TEXT ·ratioAVX2(SB), NOSPLIT, $0-24
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), BX
	SHLQ         $2, BX
	VBROADCASTSS a+16(FP), Y2
	VBROADCASTSS b+20(FP), Y4
	VBROADCASTSS expconst<>+44(SB), Y3 // 1
	XORQ         CX, CX

ratioloop:
	CMPQ        CX, BX
	JGE         ratiofin
	VMOVUPS     (SI)(CX*1), Y0
	VMOVAPS     Y2, Y1
	VFMADD231PS Y4, Y0, Y1             // a + b*x
	VADDPS      Y3, Y0, Y0             // 1 + x
	VDIVPS      Y0, Y1, Y1
	VMOVUPS     Y1, (SI)(CX*1)
	ADDQ        $32, CX
	JMP         ratioloop

ratiofin:
	VZEROUPPER
	RET

// func dotI8AVX2(a *int8, n, h int, x *int16, out *int32)
// out[i] = sum over j < h of a[i*h+j] * x[j], for i < n, in int32. h must
// be a multiple of 16; the caller keeps the sums within int32.
TEXT ·dotI8AVX2(SB), NOSPLIT, $0-40
	MOVQ a+0(FP), SI
	MOVQ n+8(FP), CX
	MOVQ h+16(FP), DX
	MOVQ x+24(FP), DI
	MOVQ out+32(FP), R8

i8row:
	TESTQ CX, CX
	JZ    i8done
	VPXOR Y0, Y0, Y0
	VPXOR Y2, Y2, Y2
	XORQ  R9, R9

i8inner:
	VPMOVSXBW (SI)(R9*1), Y1
	VPMADDWD  (DI)(R9*2), Y1, Y1
	VPADDD    Y1, Y0, Y0
	ADDQ      $16, R9
	CMPQ      R9, DX
	JLT       i8inner

	VEXTRACTI128 $1, Y0, X1
	VPADDD       X1, X0, X0
	VPSHUFD      $0x4E, X0, X1
	VPADDD       X1, X0, X0
	VPSHUFD      $0xB1, X0, X1
	VPADDD       X1, X0, X0
	VMOVD        X0, (R8)
	ADDQ         DX, SI
	ADDQ         $4, R8
	DECQ         CX
	JMP          i8row

i8done:
	VZEROUPPER
	RET

TEXT ·logitsI8AVX2(SB), NOSPLIT, $0-68
	LOGITS_I8(MACW)

TEXT ·logitsI8VNNI(SB), NOSPLIT, $0-68
	LOGITS_I8(MACV)

// func estAVX2(n, half int, dots, lam, spread, logMass *float32, xx, ua, ub float32, est, unc *float32) float32
// For the first n clusters (n a positive multiple of 8), with m = dots[i]
// (μ·h) and p = dots[half+i] (v·h): q = lam[i]·p² + spread[i]·(xx − p²),
// est[i] = m + logMass[i] + q, unc[i] = ua + ub·q; returns the largest
// est[i].
TEXT ·estAVX2(SB), NOSPLIT, $0-84
	MOVQ         n+0(FP), CX
	MOVQ         half+8(FP), AX
	MOVQ         dots+16(FP), SI
	MOVQ         lam+24(FP), R9
	MOVQ         spread+32(FP), R10
	MOVQ         logMass+40(FP), R11
	VBROADCASTSS xx+48(FP), Y13
	VBROADCASTSS ua+52(FP), Y12
	VBROADCASTSS ub+56(FP), Y11
	MOVQ         est+64(FP), DI
	MOVQ         unc+72(FP), DX
	LEAQ         (SI)(AX*4), R8 // the v·h half of dots
	SHLQ         $2, CX
	XORQ         BX, BX
	VPCMPEQD     Y14, Y14, Y14
	VPSLLD       $23, Y14, Y14 // running max, from -inf

estloop:
	CMPQ        BX, CX
	JGE         estdone
	VMOVUPS     (R8)(BX*1), Y0
	VMULPS      Y0, Y0, Y0          // p²
	VSUBPS      Y0, Y13, Y1         // xx − p²
	VMULPS      (R10)(BX*1), Y1, Y1 // spread·(xx − p²)
	VFMADD231PS (R9)(BX*1), Y0, Y1  // q = lam·p² + that
	VMOVAPS     Y12, Y2
	VFMADD231PS Y11, Y1, Y2         // ua + ub·q
	VMOVUPS     Y2, (DX)(BX*1)
	VADDPS      (SI)(BX*1), Y1, Y1
	VADDPS      (R11)(BX*1), Y1, Y1 // m + logMass + q
	VMOVUPS     Y1, (DI)(BX*1)
	VMAXPS      Y1, Y14, Y14
	ADDQ        $32, BX
	JMP         estloop

estdone:
	VEXTRACTF128 $1, Y14, X1
	VMAXPS       X1, X14, X14
	VPERMILPS    $0x4e, X14, X1
	VMAXPS       X1, X14, X14
	VPERMILPS    $0xb1, X14, X1
	VMAXPS       X1, X14, X14
	VMOVSS       X14, ret+80(FP)
	VZEROUPPER
	RET

// func sumSqMulAVX2(a, b *float32, n int) float32
// Returns the sum over i < n of (a[i]·b[i])², n a positive multiple of 8.
TEXT ·sumSqMulAVX2(SB), NOSPLIT, $0-28
	MOVQ   a+0(FP), SI
	MOVQ   b+8(FP), DI
	MOVQ   n+16(FP), CX
	SHLQ   $2, CX
	XORQ   BX, BX
	VXORPS Y0, Y0, Y0

ssmloop:
	CMPQ        BX, CX
	JGE         ssmdone
	VMOVUPS     (SI)(BX*1), Y1
	VMULPS      (DI)(BX*1), Y1, Y1
	VFMADD231PS Y1, Y1, Y0
	ADDQ        $32, BX
	JMP         ssmloop

ssmdone:
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	VMOVSS       X0, ret+24(FP)
	VZEROUPPER
	RET

// func clusterDotsAVX2(n, hp int, means *int16, dirs *int8, x *int16, mscale, dscale *float32, inv float32, mdots, ddots *float32)
// func clusterDotsVNNI(same)
// For each cluster c < n (n a positive multiple of 4; hp a multiple of
// 16): mdots[c] = mscale[c]·inv·Σ_j means[c*hp+j]·x[j] and ddots[c] =
// dscale[c]·inv·Σ_j dirs[c*hp+j]·x[j], four clusters at a time, each load
// of x shared by the eight rows. The caller keeps each int32 lane of the
// means' products, hp/8 products of means and x, within int32.
TEXT ·clusterDotsAVX2(SB), NOSPLIT, $0-80
	CLUSTER_DOTS(MACW)

TEXT ·clusterDotsVNNI(SB), NOSPLIT, $0-80
	CLUSTER_DOTS(MACV)

// func keysAboveAVX2(dst *uint64, est *float32, n int, lo, hi float32) int
// For each c < n (a multiple of 8) with lo <= est[c] < hi, in order,
// writes the clusterKey of c, bits(est[c])<<32 | ^uint32(c), to dst and
// returns how many; blocks of eight with none cost one compare.
TEXT ·keysAboveAVX2(SB), NOSPLIT, $0-40
	MOVQ         dst+0(FP), DI
	MOVQ         est+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS lo+24(FP), Y1
	VBROADCASTSS hi+28(FP), Y2
	XORQ         AX, AX
	XORQ         BX, BX

kablock:
	CMPQ      BX, CX
	JGE       kadone
	VMOVUPS   (SI)(BX*4), Y0
	VCMPPS    $0x0d, Y1, Y0, Y3 // est >= lo
	VCMPPS    $0x01, Y2, Y0, Y4 // est < hi
	VANDPS    Y4, Y3, Y3
	VMOVMSKPS Y3, DX
	TESTL     DX, DX
	JZ        kanext

kabit:
	BSFL  DX, R8
	LEAQ  (BX)(R8*1), R9
	MOVL  (SI)(R9*4), R10
	SHLQ  $32, R10
	MOVL  R9, R11
	NOTL  R11
	ORQ   R11, R10
	MOVQ  R10, (DI)(AX*8)
	INCQ  AX
	LEAL  -1(DX), R12
	ANDL  R12, DX
	JNZ   kabit

kanext:
	ADDQ $8, BX
	JMP  kablock

kadone:
	MOVQ AX, ret+32(FP)
	VZEROUPPER
	RET

/* The direct convolution's tiles (called by conv/direct.c, which pads each
 * image, transposes the weights and does the threading), for convolutions
 * with K = 8, 16 or a multiple of 16 up to FC_DIRECT_MAX_K output
 * channels (the `wide` entry, K = 32 and up): at unit stride, or at any stride
 * where the entry says `strided` (output (oy, ox) then reads from the
 * padded image's (oy * sh, ox * sw) corner).
 *
 * Inputs shared by both directions: xp, one image zero-padded to (C, hp,
 * wp) planes (fc_direct_geom), readable `overread` floats past the planes;
 * off[t] = c * plane + i * wp + j for tap t = (c * kh + i) * kw + j.
 *
 * forward: tiles [t0, t1) of one image: y (K, OH, OW) = the sum over taps
 *   in order t, then + bias (NULL: none), then ReLU when relu (v < 0 ? 0 :
 *   v, NaN kept). wt: the weights as (taps, K). K >= 16: tile t is
 *   output pixels [t * tile, (t + 1) * tile) of the OH*OW; K = 8: output positions
 *   at the padded pitch, P = oy * wp + ox, [t * tile, (t + 1) * tile), the
 *   columns ox >= OW computed and dropped.
 * dweight: one image's dy (K, OH*OW): staged into the workspace dyk (K >= 16:
 *   K*OH*OW floats in the tiles' own layout, all written; K = 8: (K, span) at the padded pitch, whose
 *   dropped columns and tail the caller zeroed once), then for every (tap,
 *   k) the products dy * xp summed into part[(tap * K + k) * lanes + l]
 *   (lanes partial sums each), and dy's sums into db[k * lanes + l]. span
 *   (K = 8): OH * wp rounded up to whole vectors of `lanes`.
 */
#ifndef FC_KERNELS_DIRECT_H
#define FC_KERNELS_DIRECT_H

#include "fastconv.h"

/* The widest K of the `wide` tiles: each 16 channels more re-reads the
 * padded image (from cache), measured to pay up to here (conv/plan.c). */
#define FC_DIRECT_MAX_K 128

/* The padded image's geometry. */
typedef struct {
    fc_int hp, wp, plane; /* padded height, width, hp * wp */
    fc_int floats;        /* the buffer: C planes, the tiles' overread, whole cache lines */
} fc_direct_geom;

typedef void fc_direct_forward_fn(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                                  const fc_int *off, const float *wt, const float *bias, int relu,
                                  float *y, fc_int t0, fc_int t1);
typedef void fc_direct_dweight_fn(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                                  const float *dy, float *dyk, fc_int span, const fc_int *off,
                                  float *part, float *db);

typedef struct {
    fc_direct_forward_fn *forward; /* NULL: no direct kernel for this K on this ISA */
    fc_direct_dweight_fn *dweight;
    fc_int tile;     /* output pixels (K = 16, 32) or positions (K = 8) per forward tile */
    fc_int lanes;    /* partial sums per (tap, k) of dweight */
    fc_int overread; /* floats a tile may read past the padded planes, besides kw */
    int strided;     /* 1: any stride (K >= 16 only); 0: unit stride only */
} fc_direct_kernel;

/* ---- bf16 (kernels/bf16.h's rounding and dot-product step) -----------------
 * The forward in bf16 for K a multiple of 16 up to FC_DIRECT_MAX_K: x and w
 * rounded to bf16 (fc_bf16_round), the input channels taken in pairs, as
 * vdpbf16ps takes them. Inputs: xp2, one image's padded planes (the float
 * layout's geometry g) with channels 2c and 2c + 1 in one 32-bit word per
 * pixel, bf16(x[2c]) in its low half (channel C of an odd C: zero);
 * off2[u] = c2 * plane + i * wp + j for pair tap u = (c2 * kh + i) * kw + j;
 * wt2[(u * K + k) * 2 + e] = bf16(w[k][2 * c2 + e][i][j]), zero past C.
 * Output: y (K, OH, OW) for the output pixels [t0 * tile, t1 * tile), each
 * y[k][p] = S, then S + bias[k] (bias NULL: none), then ReLU when relu,
 * where S starts at +0 and takes the pair taps in increasing u, each as
 * fc_bf16_step does twice: S := step(S, w[2c2 + 1] term), then S :=
 * step(S, w[2c2] term) (a zero pair member's step included). One order for
 * every ISA, tile and thread count: the bits of kernels/ref/'s emulation.
 * Any stride (the pixel (oy, ox) reads from the (oy * sh, ox * sw) corner);
 * nothing read past the planes. */
#define FC_DIRECT_BF16_TILE 16 /* output pixels per forward tile */

typedef void fc_direct_bf16_forward_fn(const fc_conv_shape *s, const fc_direct_geom *g,
                                       const uint32_t *xp2, const fc_int *off2, const uint16_t *wt2,
                                       const float *bias, int relu, float *y, fc_int t0, fc_int t1);

#endif

/* fastconv's C kernels: the one header the Cython wrappers include.
 *
 * Contract for every function here: arguments were validated by the caller
 * (the wrappers in fastconv/_native/): pointers are valid for the sizes
 * given, arrays are float32 and C-contiguous unless a leading dimension says
 * otherwise, and all index products fit in fc_int. Functions never allocate
 * per element, never touch memory outside the sizes given, and are
 * deterministic for a given thread count. `nthreads` >= 1 is the OpenMP
 * team size (ignored in a serial build). Functions returning int give 0 on
 * success, FC_ENOMEM when a workspace could not be allocated.
 */
#ifndef FASTCONV_H
#define FASTCONV_H

#include <stddef.h>
#include <stdint.h>

typedef int64_t fc_int;

#define FC_ENOMEM (-1)

/* ---- build and CPU (core/dispatch.c, kernels/isa.c) ---------------------- */

#include "kernels/isa.h" /* FC_ISA_GENERIC ... FC_ISA_COUNT */

const char *fc_isa_name(int isa);
int fc_isa_supported(int isa);   /* built in and supported by this CPU and OS */
int fc_isa_best(void);
int fc_isa_get(void);
void fc_isa_set(int isa);        /* caller checked fc_isa_supported(isa) */
/* MR, NR, MC, KC, NC of the ISA's GEMM block-size table (the generic one's
 * for an ISA this CPU does not support). */
void fc_isa_blocksizes(int isa, fc_int out[5]);
/* Entry i of the ISA's kernel table (kernels/ctx.h; the generic one's for an
 * ISA this CPU does not support), for i in [0, count): its name, and in
 * *address the code or sub-table it points to, 0 for none; NULL past the
 * last. Tests tell by the addresses which ISA's code each entry runs. */
const char *fc_isa_entry(int isa, int i, uintptr_t *address);

int fc_openmp_enabled(void);
const char *fc_build_compiler(void);
const char *fc_build_flags(void);

/* ---- sgemm.c ---------------------------------------------------------------
 * C = alpha * op(A) @ op(B) + beta * C, row-major. op(A) is m x k (A is k x m
 * when trans_a), op(B) is k x n (B is n x k when trans_b). lda/ldb/ldc are
 * row strides in elements. When beta == 0, C is only written (NaN or garbage
 * in C does not propagate), as in BLAS. */
int fc_sgemm(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
             const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
             float *c, fc_int ldc, int nthreads);
/* fc_sgemm with the k split (for a tiny C with a long k) allowed or not. That
 * split sums in another order, and it is chosen by the size of C; callers that
 * need each column of C computed the same whatever n is (a convolution whose
 * images may share a GEMM in groups) pass allow_ksplit = 0. */
int fc_sgemm_ex(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
                const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
                float *c, fc_int ldc, int nthreads, int allow_ksplit);
/* fc_sgemm_ex in a precision: FC_FLOAT32, or FC_BFLOAT16, where op(A) and
 * op(B) are rounded to bf16 and the products summed in float32 in the
 * order of csrc/kernels/bf16.h (the same bits on every ISA and at any
 * thread count; no k split). */
enum { FC_FLOAT32 = 0, FC_BFLOAT16 = 1 };
int fc_gemm(int precision, int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
            const float *a, fc_int lda, const float *b, fc_int ldb, float beta, float *c,
            fc_int ldc, int nthreads, int allow_ksplit);
/* x rounded to bf16 (csrc/kernels/bf16.h: nearest even, denormals to zero,
 * NaN kept NaN): y[i], the top 16 bits of the float32 result. */
void fc_to_bf16(const float *x, fc_int n, uint16_t *y, int nthreads);
/* The bf16 GEMM kernel of the current ISA table: "emulated" when the CPU
 * has no bf16 dot products (the reference path, same bits, slow). */
const char *fc_bf16_kernel_name(void);

/* A B operand that is never stored whole: sgemm asks `pack` for each block
 * it needs, already in the packed layout of csrc/kernels/gemm_ukernel.h. The
 * call writes rows [p0, p0 + kc) x columns [j0, j0 + nb) of B to dst as
 * ceil(nb / nr) slivers of nr columns, dst[(j / nr) * nr * kc + p * nr + j % nr],
 * zero past nb. It runs on several threads at once (ctx is shared, read only). */
typedef void fc_pack_b_fn(const void *ctx, fc_int p0, fc_int kc, fc_int j0, fc_int nb, int nr,
                          float *dst);
typedef struct {
    fc_pack_b_fn *pack;
    const void *ctx;
} fc_b_source;

/* C = A @ B + bias (bias[i] added to row i; NULL for none), then max(C, 0)
 * when relu (NaN kept, as relu_forward), applied as each tile of C is
 * finished, in `precision` (fc_gemm's). B is the matrix (b, ldb) when bsrc
 * is NULL, else packed by bsrc (float32 slivers of the precision's NR).
 * No k split: each column of C gets the same arithmetic whatever n is, and
 * k <= FC_GEMM_ONE_PASS_K is done in one pass, so C is written once, when
 * there is a bsrc or a bias (a ReLU alone keeps fc_sgemm's k blocks, so that
 * it gives relu of the unfused product, bit for bit). */
#define FC_GEMM_ONE_PASS_K 576
int fc_sgemm_fused(int precision, fc_int m, fc_int n, fc_int k, const float *a, fc_int lda,
                   const float *b, fc_int ldb, const fc_b_source *bsrc, const float *bias, int relu,
                   float *c, fc_int ldc, int nthreads);

/* ---- conv/plan.c: 2-D convolution ------------------------------------------
 * x (n, c, h, w), weight (k, c / groups, kh, kw), y/dy (n, k, oh, ow); groups
 * divides c and k, output channel o reading the input channels of group
 * o / (k / groups) (PyTorch's layout). Tap (i, j) of output (oy, ox) reads
 * x[oy*sh + i*dh - ph, ox*sw + j*dw - pw], zero outside the image: ph, pw
 * are the padding before the first row and column, and the padding after
 * the last is what oh, ow make it (PyTorch's padding="same" for an even
 * kernel has one more there). The caller checks oh, ow >= 1 and that the
 * last tap lies within one padding of the image; the usual case is
 * oh = (h + 2*ph - dh*(kh-1) - 1) / sh + 1. Each call runs the algorithm
 * that the mode (below) picks for its shape and the ISA; every algorithm
 * gives the direct sum to float32 rounding, with its pattern of NaN and
 * infinities (inputs out of an algorithm's range make it decline, and the
 * next one runs). `precision` (fc_gemm's): FC_BFLOAT16 runs the GEMM
 * algorithms (pointwise, implicit im2col, im2col) with the bf16 GEMM, x, the
 * weights and dy rounded to bf16 as they are packed, sums and outputs in
 * float32; Winograd with float32 transforms and bf16 GEMMs, its transformed
 * operands rounded to bf16 (csrc/conv/plan.c, Precision); direct's
 * forward for K = 16, 32, ... with x and w rounded to bf16, the input
 * channels in pairs (kernels/direct.h); direct's dW and depthwise have
 * float32 kernels only and decline. */
typedef struct {
    fc_int n, c, h, w;      /* input */
    fc_int k, kh, kw;       /* output channels and kernel size */
    fc_int sh, sw, ph, pw;  /* stride and padding before */
    fc_int oh, ow;          /* output size */
    fc_int dh, dw, groups;  /* dilation (>= 1) and channel groups (>= 1) */
} fc_conv_shape;

/* bias may be NULL; relu: y = max(conv + bias, 0) (NaN kept), in the same pass. */
int fc_conv2d_forward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                      const float *bias, int relu, float *y, int nthreads);
/* pooled (n, k, oh / 2, ow / 2) and argmax (uint8, index in the window): the
 * 2x2 stride-2 max-pool (fc_maxpool2d_forward's rules) of fc_conv2d_forward's
 * y, which is not stored when the convolution runs as Winograd. Needs
 * oh, ow >= 2. */
int fc_conv2d_maxpool_forward(const fc_conv_shape *s, int precision, const float *x,
                              const float *weight, const float *bias, int relu, float *pooled,
                              uint8_t *argmax, int nthreads);
/* Outputs: dx (may be NULL: not computed), dweight (k, c / groups, kh, kw) and dbias (k)
 * (dbias may be NULL). All outputs are overwritten, not accumulated. */
int fc_conv2d_backward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *dy, float *dx, float *dweight, float *dbias,
                       int nthreads);
/* The largest |v[e]| over count floats; NaN when one is NaN, else +Inf
 * when one is infinite. */
float fc_max_abs(const float *v, fc_int count, int nthreads);

/* The algorithms, in the order auto tries them (conv/plan.c describes each). */
enum {
    FC_CONV_DIRECT = 0,
    FC_CONV_WINOGRAD = 1,
    FC_CONV_POINTWISE = 2,
    FC_CONV_IMPLICIT_IM2COL = 3,
    FC_CONV_POLYPHASE = 4, /* dx only: a strided dx as one unit-stride forward per phase */
    FC_CONV_IM2COL = 5,
    FC_CONV_DEPTHWISE = 6, /* the one that takes grouped problems (groups == C) */
    FC_CONV_ALGORITHMS = 7
};
const char *fc_conv_algorithm_name(int algorithm);
/* The mode of every later call: auto (the planner's choice; algorithm
 * ignored), force `algorithm` wherever it applies (auto's choice
 * elsewhere), or exclude it (auto without it; not FC_CONV_IM2COL). */
enum { FC_CONV_MODE_AUTO = 0, FC_CONV_MODE_FORCE = 1, FC_CONV_MODE_EXCLUDE = 2 };
void fc_conv_set_mode(int kind, int algorithm);
int fc_conv_get_mode(int *algorithm); /* the kind; *algorithm: its algorithm, -1 for auto */
/* The algorithm mode (kind, algorithm) picks for `direction` of shape s on
 * the current ISA, taking the inputs to be in range; need_dx: whether the
 * backward computes dx (dW's choice depends on it). why (len bytes, may be
 * NULL) gets the reason, one line. */
enum { FC_CONV_FORWARD = 0, FC_CONV_DX = 1, FC_CONV_DWEIGHT = 2 };
int fc_conv_explain(const fc_conv_shape *s, int precision, int direction, int need_dx, int kind,
                    int algorithm, char *why, size_t len);
/* After a conv call of this thread returned FC_ENOMEM: the algorithm whose
 * workspace could not be allocated, and in *direction for which output:
 * FC_CONV_FORWARD, FC_CONV_DX, FC_CONV_DWEIGHT, or FC_CONV_DX |
 * FC_CONV_DWEIGHT for im2col's backward pass computing both. */
int fc_conv_failure(int *direction);

/* ---- conv/locally_connected.c: unshared filters ----------------------------
 * The geometry of a convolution (fc_conv_shape), with a filter per output
 * position: weight (oh, ow, k, c, kh, kw), bias (k, oh, ow) or NULL.
 * Returns 0, or FC_ENOMEM. The backward overwrites dweight and dbias, and dx
 * unless it is NULL. Results do not depend on nthreads. */
int fc_locally_connected2d_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                   const float *bias, float *y, int nthreads);
int fc_locally_connected2d_backward(const fc_conv_shape *s, const float *x, const float *weight,
                                    const float *dy, float *dx, float *dweight, float *dbias, int nthreads);

/* ---- maxpool2d.c -----------------------------------------------------------
 * x (n, c, h, w) -> y (n, c, oh, ow). Window (oy, ox) has the taps (i, j),
 * 0 <= i < kh, 0 <= j < kw, at input row oy*sh - ph + i*dh and column
 * ox*sw - pw + j*dw (dh, dw >= 1: the dilation). Taps outside the input are
 * padding and count as -inf (never win), also where a ceil_mode window runs
 * past the padded input (oh and ow are the caller's). argmax holds the winner's tap index i*kw + j, its element type
 * uint8 when argmax_bytes == 1 and int32 when argmax_bytes == 4. Ties: the
 * first maximum in scan order; a NaN wins over numbers, the last NaN over
 * earlier ones (PyTorch's rule). A window of -inf points at its first tap
 * inside the input (the wrappers refuse windows with none inside). */
typedef struct {
    fc_int n, c, h, w;
    fc_int kh, kw, sh, sw, ph, pw;
    fc_int oh, ow;
    fc_int dh, dw; /* dilation; avgpool2d.c requires 1 */
} fc_pool_shape;

int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                         void *argmax, int argmax_bytes, int nthreads);
/* dx (n, c, h, w) is overwritten: zeros, plus each dy routed to its argmax
 * (summed where windows overlap). argmax may come from a user, so each index
 * is bounds-checked: one that falls outside its window or on padding is
 * skipped and counted; the count is returned (0 for valid input). */
fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                           int argmax_bytes, float *dx, int nthreads);

/* ---- bias_add.c ------------------------------------------------------------
 * In place: y[i, j, r] += bias[j] for y viewed as (outer, channels, inner). */
void fc_bias_add(fc_int outer, fc_int channels, fc_int inner, float *y,
                 const float *bias, int nthreads);

/* ---- activations.c ---------------------------------------------------------
 * Element-wise activations, selected by `op`; `param` is the leaky ReLU's
 * negative slope or the ELU's alpha (ignored by sigmoid and tanh).
 *   forward:  y = f(x)
 *   backward: dx = dy * f'(.) where `a`, the saved forward tensor, is the
 *             INPUT x for leaky ReLU and ELU and the OUTPUT y for ReLU, sigmoid
 *             and tanh, as in PyTorch's autograd.
 * Formulas, NaN and infinity rules are PyTorch's (see kernels/eltwise.h); no
 * intermediate overflows. Outputs may alias inputs. */
enum { FC_ACT_LEAKY_RELU = 0, FC_ACT_ELU = 1, FC_ACT_SIGMOID = 2, FC_ACT_TANH = 3, FC_ACT_RELU = 4,
       FC_ACT_COUNT = 5 };

void fc_activation_forward(int op, fc_int count, const float *x, float param, float *y,
                           int nthreads);
void fc_activation_backward(int op, fc_int count, const float *dy, const float *a, float param,
                            float *dx, int nthreads);

/* ---- batchnorm.c -----------------------------------------------------------
 * Batch normalization of x viewed as (n, c, inner), per channel j over its
 * n * inner values: y = (x - mean[j]) * invstd * weight[j] + bias[j] with
 * invstd = 1 / sqrt(var[j] + eps). weight and bias may be NULL (1 and 0).
 * Statistics are accumulated in double, each channel by one thread in a fixed
 * order, so results do not depend on the thread count.
 * batch_stats != 0 (training): mean and var are OUTPUTS, the batch mean and
 * biased variance (n * inner >= 1); otherwise they are INPUTS (running
 * statistics). relu != 0: y is then rectified in the same pass (a ReLU after
 * the batch norm: v < 0 ? 0 : v, NaN kept, as fc_activation_forward). */
void fc_batchnorm_forward(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                          const float *bias, float *mean, float *var, double eps,
                          int batch_stats, int relu, float *y, int nthreads);
/* Inputs as the forward's (mean, var: the statistics it used). Outputs, all
 * overwritten: dx (n, c, inner); dweight[j] = sum dy * xhat and dbias[j] =
 * sum dy, with xhat = (x - mean) * invstd. With batch_stats the gradient also
 * flows through the batch mean and variance. relu_y, when not NULL, is the
 * output (n, c, inner) of a ReLU after the batch norm and dy the gradient at
 * that output: dy is masked as the ReLU's backward does (0 where relu_y <= 0)
 * as it is read, with the bits of the two backwards run one after the other. */
void fc_batchnorm_backward(fc_int n, fc_int c, fc_int inner, const float *dy, const float *relu_y,
                           const float *x, const float *weight, const float *mean,
                           const float *var, double eps, int batch_stats, float *dx,
                           float *dweight, float *dbias, int nthreads);

/* ---- avgpool2d.c -----------------------------------------------------------
 * x (n, c, h, w) -> y (n, c, oh, ow): the sum of each kh x kw window's real
 * (unpadded) elements over its divisor (dh = dw = 1), PyTorch's avg_pool2d:
 * divisor_override when > 0; else with count_include_pad the window's size
 * clipped to the padded input [-ph, h + ph) x [-pw, w + pw) (kh * kw unless a
 * ceil_mode window runs past it), else its count of real elements. A window
 * with no real element gives 0. */
void fc_avgpool2d_forward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                          const float *x, float *y, int nthreads);
/* dx (n, c, h, w) is overwritten: each dy over its window's divisor added to
 * the window's real elements, summed where windows overlap. */
void fc_avgpool2d_backward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                           const float *dy, float *dx, int nthreads);

/* ---- pool/adaptive_pool.c --------------------------------------------------
 * x (n, c, h, w) -> y (n, c, oh, ow), any oh, ow >= 1 (larger than h, w too): output
 * cell (i, j) pools rows [floor(i h / oh), ceil((i + 1) h / oh)) and the
 * columns likewise (PyTorch's adaptive pools). `max`: the window's maximum
 * (ties: the first in row-major order; NaN wins) and, in argmax (n, c, oh,
 * ow), its index in the h x w plane; else the window's mean (argmax unused). */
typedef struct {
    fc_int n, c, h, w, oh, ow;
} fc_adaptive_shape;
void fc_adaptive_pool2d_forward(const fc_adaptive_shape *s, int max, const float *x, float *y,
                                int64_t *argmax, int nthreads);
/* dx (n, c, h, w) is overwritten: each dy goes to its window's winner
 * (argmax given) or, divided by the window's size, to every element of the
 * window (argmax NULL); summed where windows overlap. */
void fc_adaptive_pool2d_backward(const fc_adaptive_shape *s, const float *dy, const int64_t *argmax,
                                 float *dx, int nthreads);

/* ---- eltwise/add_relu.c ----------------------------------------------------
 * y = a + b over count elements, then max(y, 0) when `relu` (NaN and -0
 * kept, as fc_activation_forward's ReLU). y may be a or b. */
void fc_add_relu(fc_int count, const float *a, const float *b, int relu, float *y, int nthreads);

/* ---- peak.c ----------------------------------------------------------------
 * A measurement, not a kernel: each of nthreads threads runs `iters` steps of
 * fc_peak_flop_per_iter(isa) FLOP of independent multiply-adds on the ISA's
 * vectors (isa must be supported); returns the wall time in seconds. *sink
 * receives the (meaningless) result. */
double fc_peak_flop_per_iter(int isa);
double fc_peak_run(int isa, fc_int iters, int nthreads, float *sink);

#endif

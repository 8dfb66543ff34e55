/* Run-time ISA choice: the best the CPU supports, detected once at
 * import, overridable (FASTCONV_ISA is read by the Python side, which
 * calls fc_isa_set after checking support); the current ISA's table
 * (kernels/ctx.h), which the op code reads its kernels from; build facts.
 * Which ISAs exist is kernels/isa.h and kernels/isa.c's business. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastconv.h"
#include "kernels/ctx.h"

#ifndef FC_BUILD_FLAGS
#define FC_BUILD_FLAGS "unknown"
#endif
#ifndef FC_BUILD_CC
#define FC_BUILD_CC "cc"
#endif

static int current_isa = -1;

int fc_isa_best(void)
{
    for (int isa = FC_ISA_COUNT - 1; isa > FC_ISA_GENERIC; isa--)
        if (fc_isa_supported(isa)) return isa;
    return FC_ISA_GENERIC;
}

int fc_isa_get(void)
{
    if (current_isa < 0) current_isa = fc_isa_best();
    return current_isa;
}

static const fc_ctx *current_ctx; /* current_isa's table, once asked for */

void fc_isa_set(int isa)
{
    current_isa = isa;
    current_ctx = fc_ctx_of(isa);
}

/* Read for every kernel call, and from inside their loops over images: a
 * pointer read, not a pthread_once and a lookup. */
const fc_ctx *fc_ctx_current(void)
{
    if (!current_ctx) current_ctx = fc_ctx_of(fc_isa_get());
    return current_ctx;
}

void fc_isa_blocksizes(int isa, fc_int out[5])
{
    const fc_gemm_kernel *k = fc_ctx_of(isa)->gemm;
    out[0] = k->mr; out[1] = k->nr; out[2] = k->mc; out[3] = k->kc; out[4] = k->nc;
}

/* The table's pointer members (all but name and peak_lanes), by name. */
#define ENTRY(member) {#member, offsetof(fc_ctx, member)}
static const struct {
    const char *name;
    size_t offset;
} entries[] = {
    ENTRY(gemm), ENTRY(gemm_bf16), ENTRY(to_bf16), ENTRY(im2col_row), ENTRY(col2im_channel),
    ENTRY(pack_columns), ENTRY(max_abs_bits), ENTRY(wg_input), ENTRY(wg_output),
    ENTRY(wg_output_pool), ENTRY(wg_grad), ENTRY(pool2x2_forward), ENTRY(pool2x2_backward),
    ENTRY(direct_k8.forward), ENTRY(direct_k8.dweight), ENTRY(direct_k16.forward),
    ENTRY(direct_k16.dweight), ENTRY(direct_wide.forward), ENTRY(direct_wide.dweight), ENTRY(direct_bf16), ENTRY(eltwise),
    ENTRY(bn), ENTRY(add_relu), ENTRY(dw_plane),
    ENTRY(dw_dweight_plane), ENTRY(peak),
};
_Static_assert(sizeof(void (*)(void)) == sizeof(uintptr_t) && sizeof(void *) == sizeof(uintptr_t),
               "every entry reads as a uintptr_t");

const char *fc_isa_entry(int isa, int i, uintptr_t *address)
{
    if (i < 0 || i >= (int)(sizeof entries / sizeof entries[0])) return NULL;
    memcpy(address, (const char *)fc_ctx_of(isa) + entries[i].offset, sizeof *address);
    return entries[i].name;
}

int fc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

const char *fc_build_compiler(void)
{
#ifdef __VERSION__
    return FC_BUILD_CC " " __VERSION__;
#else
    return FC_BUILD_CC;
#endif
}

const char *fc_build_flags(void) { return FC_BUILD_FLAGS; }

const char *fc_bf16_kernel_name(void) { return fc_ctx_current()->gemm_bf16->name; }

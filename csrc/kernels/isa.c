/* The ISA list's facts: each ISA's name, whether this CPU (and OS) runs
 * it, and the fill of each ISA's table (kernels/<isa>/ctx_<isa>.c). With
 * kernels/isa.h, the only code outside the ISA folders that names an ISA;
 * which one runs is chosen in core/dispatch.c. */
#include <pthread.h>

#include "fastconv.h"
#include "kernels/ctx.h"

static const char *const isa_names[FC_ISA_COUNT] = {"generic", "avx2", "avx512"};

const char *fc_isa_name(int isa)
{
    return (isa >= 0 && isa < FC_ISA_COUNT) ? isa_names[isa] : "unknown";
}

int fc_isa_supported(int isa)
{
    switch (isa) {
    case FC_ISA_GENERIC: return 1;
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    /* __builtin_cpu_supports also checks that the OS saves the wide registers. */
    case FC_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FC_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default: return 0;
    }
}

/* Each ISA's table, filled once, and only for an ISA this CPU supports:
 * the init code is compiled with that ISA's flags, and the compiler may
 * use its instructions even to copy a struct. The others keep a zeroed
 * table (name NULL). */
static fc_ctx tables[FC_ISA_COUNT];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void fill_tables(void)
{
    fc_ctx_init_ref(&tables[FC_ISA_GENERIC]);
#ifdef FC_X86_KERNELS
    if (fc_isa_supported(FC_ISA_AVX2)) fc_ctx_init_avx2(&tables[FC_ISA_AVX2]);
    if (fc_isa_supported(FC_ISA_AVX512)) fc_ctx_init_avx512(&tables[FC_ISA_AVX512]);
#endif
}

const fc_ctx *fc_ctx_of(int isa)
{
    pthread_once(&tables_once, fill_tables);
    const int built = isa >= 0 && isa < FC_ISA_COUNT && tables[isa].name != NULL;
    return &tables[built ? isa : FC_ISA_GENERIC];
}

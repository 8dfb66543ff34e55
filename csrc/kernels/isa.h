/* The ISAs this build knows, in the order fc_isa_best tries them (the
 * last supported one wins). A new ISA is a value here, its name, detection
 * and table fill in kernels/isa.c, and its folder kernels/<isa>/. */
#ifndef FC_KERNELS_ISA_H
#define FC_KERNELS_ISA_H

enum { FC_ISA_GENERIC = 0, FC_ISA_AVX2 = 1, FC_ISA_AVX512 = 2, FC_ISA_COUNT = 3 };

#endif

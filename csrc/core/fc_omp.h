/* All of fastconv's OpenMP use goes through this header, so that a build
 * without OpenMP compiles the same code serially. The team size is always
 * passed to each parallel region with num_threads(n); we never call
 * omp_set_num_threads, which would change other libraries in the process. */
#ifndef FC_OMP_H
#define FC_OMP_H

#ifdef _OPENMP
#include <omp.h>
static inline int fc_thread_id(void) { return omp_get_thread_num(); }
static inline int fc_team_size(void) { return omp_get_num_threads(); }
#else
static inline int fc_thread_id(void) { return 0; }
static inline int fc_team_size(void) { return 1; }
#endif

/* Split [0, total) into `parts` near-equal contiguous ranges; return range `i`
 * in [*lo, *hi). Static and independent of timing, so results are too. */
static inline void fc_split_range(long long total, int parts, int i, long long *lo, long long *hi)
{
    long long q = total / parts, r = total % parts;
    *lo = i * q + (i < r ? i : r);
    *hi = *lo + q + (i < r ? 1 : 0);
}

#endif

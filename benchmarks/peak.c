/* Peak FMA throughput of one core: ACC independent chains of AVX-512 FMAs, float32 and float64.
   gcc -O2 -mavx512f benchmarks/peak.c -o peak && taskset -c 0 ./peak */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#define ACC 16
#define ROUNDS 5
#define STEPS 20000000L

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* The fastest of ROUNDS runs of STEPS steps, each an FMA on every one of ACC vectors of type
   VEC (SET1 broadcasts, FMA multiplies and adds, SUM reduces a vector); prints GFLOP/s for
   LANES lanes per vector, and a checksum so that the chains are not optimised away. */
#define PEAK(NAME, VEC, LANES, SET1, FMA, SUM)                                              \
    {                                                                                       \
        double best = 1e9, check = 0;                                                       \
        for (int r = 0; r < ROUNDS; r++) {                                                  \
            VEC acc[ACC], a = SET1(0.999999), b = SET1(1e-7);                               \
            for (int i = 0; i < ACC; i++) acc[i] = SET1(i * 1e-3);                          \
            double t0 = now();                                                              \
            for (long k = 0; k < STEPS; k++) {                                              \
                _Pragma("GCC unroll 16")                                                    \
                for (int i = 0; i < ACC; i++) acc[i] = FMA(acc[i], a, b);                   \
            }                                                                               \
            double t = now() - t0;                                                          \
            if (t < best) best = t;                                                         \
            for (int i = 0; i < ACC; i++) check += SUM(acc[i]);                             \
        }                                                                                   \
        printf("%s: %.1f GFLOP/s (check %g)\n", NAME, 2.0 * STEPS * ACC * LANES / best / 1e9,  \
               check);                                                                      \
    }

int main(void)
{
    PEAK("float32", __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps)
    PEAK("float64", __m512d, 8, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_reduce_add_pd)
    return 0;
}

/* Peak FMA throughput of one core: ACC independent chains of AVX-512 FMAs, float32 and float64. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#define ACC 16
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(void) {
    long n = 20000000L;
    double best = 1e9; float s32 = 0; double s64 = 0;
    for (int r = 0; r < 5; r++) {
        __m512 acc[ACC]; __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps(i * 1e-3f);
        double t0 = now();
        for (long k = 0; k < n; k++) {
#pragma GCC unroll 16
            for (int i = 0; i < ACC; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
        }
        double t = now() - t0; if (t < best) best = t;
        for (int i = 0; i < ACC; i++) s32 += _mm512_reduce_add_ps(acc[i]);
    }
    printf("float32: %.1f GFLOP/s (check %g)\n", 2.0 * n * ACC * 16 / best / 1e9, s32);
    best = 1e9;
    for (int r = 0; r < 5; r++) {
        __m512d acc[ACC]; __m512d a = _mm512_set1_pd(0.999999), b = _mm512_set1_pd(1e-7);
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_pd(i * 1e-3);
        double t0 = now();
        for (long k = 0; k < n; k++) {
#pragma GCC unroll 16
            for (int i = 0; i < ACC; i++) acc[i] = _mm512_fmadd_pd(acc[i], a, b);
        }
        double t = now() - t0; if (t < best) best = t;
        for (int i = 0; i < ACC; i++) s64 += _mm512_reduce_add_pd(acc[i]);
    }
    printf("float64: %.1f GFLOP/s (check %g)\n", 2.0 * n * ACC * 8 / best / 1e9, s64);
    return 0;
}

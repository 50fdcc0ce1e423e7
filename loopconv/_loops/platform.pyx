"""What this build and this CPU offer: OpenMP, and the x86-64 instruction-set level.

Compiled with the baseline flags only, so that importing it is safe on any machine.
"""

cdef extern from *:
    """
    #if defined(_OPENMP)
    #  include <omp.h>
    #  define LC_OPENMP 1
    static int lc_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #  define LC_OPENMP 0
    static int lc_omp_max_threads(void) { return 1; }
    #endif

    /* The file of the OpenMP runtime that the loops call ("" if unknown): the library that
       holds omp_get_max_threads as this module resolved it. */
    #if defined(_OPENMP) && (defined(__linux__) || defined(__APPLE__))
    #  include <dlfcn.h>
    static const char *lc_omp_runtime(void)
    {
        Dl_info info;
        if (dladdr((void *) &omp_get_max_threads, &info) && info.dli_fname)
            return info.dli_fname;
        return "";
    }
    #else
    static const char *lc_omp_runtime(void) { return ""; }
    #endif

    /* 4: x86-64-v4 (AVX-512 F/BW/CD/DQ/VL), 3: x86-64-v3 (AVX2, FMA, BMI1/2, ...),
       1: baseline x86-64, 0: not x86-64 or unknown compiler.  libgcc's checks include the
       operating system's support for the wider registers (XSAVE state). */
    static int lc_x86_level(void)
    {
    #if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                 && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")
                 && __builtin_cpu_supports("avx");
        int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                 && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
                 && __builtin_cpu_supports("avx512vl");
        return v4 ? 4 : v3 ? 3 : 1;
    #else
        return 0;
    #endif
    }
    """
    int LC_OPENMP
    int lc_omp_max_threads()
    const char *lc_omp_runtime()
    int lc_x86_level()


def openmp() -> bool:
    """True if the loops were built with OpenMP (and so can run on several threads)."""
    return bool(LC_OPENMP)


def omp_max_threads() -> int:
    """OpenMP's limit for the calling thread (``omp_get_max_threads()``: what OMP_NUM_THREADS
    and threadpoolctl set); 1 without OpenMP."""
    return lc_omp_max_threads()


def openmp_runtime() -> str:
    """The path of the OpenMP runtime library the loops use ("" without OpenMP or if unknown)."""
    return lc_omp_runtime().decode("utf-8", "replace")


def x86_level() -> int:
    """4 for x86-64-v4, 3 for x86-64-v3, 1 for baseline x86-64, 0 if not x86-64."""
    return lc_x86_level()

# Small index helpers shared by the direct and the tiled loops.

cdef inline Py_ssize_t round_up(Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    return (n + m - 1) // m * m


cdef inline Py_ssize_t first_inside(Py_ssize_t start, Py_ssize_t step) noexcept nogil:
    """Smallest t >= 0 with start + t * step >= 0 (step >= 1)."""
    return 0 if start >= 0 else (step - 1 - start) // step


cdef inline Py_ssize_t end_inside(Py_ssize_t start, Py_ssize_t step,
                                  Py_ssize_t size) noexcept nogil:
    """Smallest t >= 0 with start + t * step >= size (step >= 1)."""
    return 0 if start >= size else (size - 1 - start) // step + 1


# ---------------------------------------------------------------------------------------------
# Subnormal floats.  An arithmetic instruction that meets a subnormal operand or result takes a
# slow path (10-100x), so the loops set the CPU to treat subnormal inputs as zero and to flush
# subnormal results to zero (x86-64: MXCSR's DAZ and FTZ bits; AArch64: FPCR.FZ) on every
# thread that runs them, and put back the thread's previous state when they are done.
# Elsewhere these do nothing.

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64)
    #  include <xmmintrin.h>
    typedef unsigned long long lc_fpstate;
    static inline lc_fpstate lc_flush_subnormals(void)
    {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040u);      /* FTZ (bit 15) | DAZ (bit 6) */
        return old;
    }
    static inline void lc_restore_fpstate(lc_fpstate old) { _mm_setcsr((unsigned int) old); }
    #elif defined(__aarch64__)
    typedef unsigned long long lc_fpstate;
    static inline lc_fpstate lc_flush_subnormals(void)
    {
        unsigned long long old;
        __asm__ __volatile__("mrs %0, fpcr" : "=r"(old));
        __asm__ __volatile__("msr fpcr, %0" : : "r"(old | (1ull << 24)));   /* FZ */
        return old;
    }
    static inline void lc_restore_fpstate(lc_fpstate old)
    {
        __asm__ __volatile__("msr fpcr, %0" : : "r"(old));
    }
    #else
    typedef unsigned long long lc_fpstate;
    static inline lc_fpstate lc_flush_subnormals(void) { return 0; }
    static inline void lc_restore_fpstate(lc_fpstate old) { (void) old; }
    #endif
    """
    ctypedef unsigned long long fpstate "lc_fpstate"
    fpstate flush_subnormals "lc_flush_subnormals"() noexcept nogil
    void restore_fpstate "lc_restore_fpstate"(fpstate old) noexcept nogil


# ---------------------------------------------------------------------------------------------
# Work done once by whichever thread first needs it (the forward-style product's packed rows of
# A): a state per piece of work, 0 (not started), 1 (being done) or 2 (done).  The thread that
# claims a piece does it and publishes it; any other waits until it is published.  The release
# store and the acquire loads make what the claiming thread wrote visible to the waiting ones.

cdef extern from *:
    """
    static inline int lc_claim(int *state)
    {
        int idle = 0;
        return __atomic_compare_exchange_n(state, &idle, 1, 0, __ATOMIC_ACQUIRE,
                                           __ATOMIC_ACQUIRE);
    }
    static inline int lc_done(int *state)
    {
        return __atomic_load_n(state, __ATOMIC_ACQUIRE) == 2;
    }
    static inline void lc_publish(int *state) { __atomic_store_n(state, 2, __ATOMIC_RELEASE); }
    static inline void lc_await(int *state)
    {
        while (__atomic_load_n(state, __ATOMIC_ACQUIRE) != 2) {
    #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
    #endif
        }
    }
    """
    bint claim_work "lc_claim"(int *state) noexcept nogil
    bint work_done "lc_done"(int *state) noexcept nogil
    void publish_work "lc_publish"(int *state) noexcept nogil
    void await_work "lc_await"(int *state) noexcept nogil

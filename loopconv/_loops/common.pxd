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

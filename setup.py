"""Build the compiled loops of loopconv.

The metadata lives in pyproject.toml; this file only defines the extensions and their flags.

Environment switches (read at build time):

LOOPCONV_OPENMP=0   build without OpenMP even if the compiler has it (loops then run on one thread)
LOOPCONV_DEBUG=1    bounds checks on, no optimisation, debug symbols: for hunting crashes
"""

import os
import platform
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LOOPCONV_DEBUG", "0") not in ("", "0")

# Compiler directives for the whole build, never in file headers (those would silently win).
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# Instruction-set variants of the tiled kernels. Every machine gets the baseline; on x86-64 the
# same source is compiled twice more and the fastest one the CPU supports is chosen at import.
# Never -march=native: a wheel must run on any x86-64 machine.
X86_VARIANTS = {
    "tiled_x86_64_v3": ["-march=x86-64-v3"],
    "tiled_x86_64_v4": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}


def _compiler_accepts(flags, source):
    """Compile (and link) a small C program with the given flags; True if it works."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            result = subprocess.run(
                [*cc, *flags, path, "-o", os.path.join(tmp, "probe")],
                capture_output=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0


def _openmp_flags():
    if os.environ.get("LOOPCONV_OPENMP", "1") in ("0", ""):
        print("loopconv: OpenMP disabled by LOOPCONV_OPENMP=0; the loops will run serially")
        return [], []
    probe = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
    if _compiler_accepts(["-fopenmp"], probe):
        return ["-fopenmp"], ["-fopenmp"]
    print("loopconv: the C compiler has no OpenMP; building serial loops", file=sys.stderr)
    return [], []


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def extensions():
    omp_compile, omp_link = _openmp_flags()
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    common = dict(
        include_dirs=[np.get_include(), "loopconv/_loops"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=[*opt, *omp_compile],
        extra_link_args=omp_link,
    )
    exts = [
        Extension("loopconv._loops.direct", ["loopconv/_loops/direct.pyx"], **common),
        Extension("loopconv._loops.platform", ["loopconv/_loops/platform.pyx"], **common),
        Extension("loopconv._loops.tiled_baseline", ["loopconv/_loops/tiled_baseline.pyx"],
                  **common),
    ]
    if _is_x86_64():
        probe = "int main(void) { return 0; }\n"
        for name, flags in X86_VARIANTS.items():
            if not _compiler_accepts(flags, probe):
                print(f"loopconv: compiler rejects {flags}; skipping {name}", file=sys.stderr)
                continue
            ext_args = dict(common)
            ext_args["extra_compile_args"] = [*common["extra_compile_args"], *flags]
            exts.append(Extension(f"loopconv._loops.{name}",
                                  [f"loopconv/_loops/{name}.pyx"], **ext_args))
    return cythonize(exts, compiler_directives=DIRECTIVES, annotate=False)


setup(ext_modules=extensions())

"""Build the compiled loops of loopconv.

The metadata lives in pyproject.toml; this file only defines the extensions and their flags.

Environment switches (read at build time):

LOOPCONV_OPENMP=0   build without OpenMP even if the compiler has it (loops then run on one thread)
LOOPCONV_DEBUG=1    bounds checks on, no optimisation, debug symbols: for hunting crashes
LOOPCONV_OPENMP_CFLAGS, LOOPCONV_OPENMP_LDFLAGS
                    the OpenMP compile and link flags, instead of probing for them (shell-quoted;
                    either may be empty); the build fails if the compiler rejects them. Example,
                    macOS with Homebrew's libomp in $P (`brew --prefix libomp`):
                    LOOPCONV_OPENMP_CFLAGS="-Xpreprocessor -fopenmp -I$P/include"
                    LOOPCONV_OPENMP_LDFLAGS="-L$P/lib -lomp"

Without them the build tries -fopenmp (GCC, LLVM clang); on macOS, where Apple clang rejects it,
it then tries -Xpreprocessor -fopenmp -lomp with Homebrew's libomp (`brew install libomp`). If
nothing works it says so and builds serial loops.
"""

import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

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


def _compiler_accepts(flags, source, link_flags=None):
    """Compile (and link) a small C program with the given flags; True if it works.

    With link_flags, compiling (flags) and linking (link_flags) are separate steps, as in the
    real build."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        exe = os.path.join(tmp, "probe")
        steps = [[*cc, *flags, path, "-o", exe]]
        if link_flags is not None:
            steps = [[*cc, *flags, "-c", path, "-o", exe + ".o"],
                     [*cc, exe + ".o", "-o", exe, *link_flags]]
        try:
            return all(
                subprocess.run(step, capture_output=True, timeout=120).returncode == 0
                for step in steps
            )
        except (OSError, subprocess.TimeoutExpired):
            return False


def _homebrew_libomp():
    """Homebrew's libomp prefix, or None."""
    try:
        out = subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    prefix = out.stdout.strip()
    return prefix if out.returncode == 0 and os.path.isdir(prefix) else None


def _openmp_flags():
    """(compile flags, link flags) for OpenMP; ([], []) builds serial loops."""
    if os.environ.get("LOOPCONV_OPENMP", "1") in ("0", ""):
        print("loopconv: OpenMP disabled by LOOPCONV_OPENMP=0; the loops will run serially")
        return [], []
    probe = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
    cflags = os.environ.get("LOOPCONV_OPENMP_CFLAGS")
    ldflags = os.environ.get("LOOPCONV_OPENMP_LDFLAGS")
    if cflags is not None or ldflags is not None:
        flags = shlex.split(cflags or ""), shlex.split(ldflags or "")
        if not _compiler_accepts(flags[0], probe, flags[1]):
            sys.exit(f"loopconv: the compiler rejects LOOPCONV_OPENMP_CFLAGS={cflags!r} "
                     f"LOOPCONV_OPENMP_LDFLAGS={ldflags!r} (an OpenMP test program fails)")
        return flags
    if _compiler_accepts(["-fopenmp"], probe, ["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    if sys.platform == "darwin":
        # Apple clang: OpenMP through the preprocessor, runtime from Homebrew's libomp.
        prefix = _homebrew_libomp()
        flags = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
        if prefix:
            flags = [*flags[0], f"-I{prefix}/include"], [f"-L{prefix}/lib", "-lomp"]
        if _compiler_accepts(flags[0], probe, flags[1]):
            return flags
        print("loopconv: no OpenMP for Apple clang; building serial loops (for threads: "
              "`brew install libomp`, or set LOOPCONV_OPENMP_CFLAGS/LOOPCONV_OPENMP_LDFLAGS)",
              file=sys.stderr)
        return [], []
    print("loopconv: the C compiler has no OpenMP; building serial loops", file=sys.stderr)
    return [], []


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def extensions():
    omp_compile, omp_link = _openmp_flags()
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    common = dict(
        include_dirs=[np.get_include(), "loopconv/_loops"],
        # the C headers the loops include: an edit to one alone rebuilds the modules (Cython
        # tracks the .pxi and .pxd files, not these)
        depends=sorted(str(h) for h in Path("loopconv/_loops").glob("*.h")),
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

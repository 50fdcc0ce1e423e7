"""Compare the speed of loopconv at two git revisions.

    python benchmarks/compare.py BASE [NEW] [bench options]

BASE and NEW are git revisions (a commit, branch or tag), ``.`` for the working tree as it is
(uncommitted changes included), or result files written by ``python -m loopconv bench --json``.
NEW defaults to ``.``.  For each revision the script

1. exports its files to a temporary folder (``git archive``; the repository is only read);
2. makes a virtualenv there whose dependencies (NumPy, Cython, setuptools, PyTorch,
   matplotlib) come from the Python running this script, through a ``.pth`` file, and installs
   the revision into it (``pip install --no-build-isolation``: no download);
3. runs ``python -m loopconv bench --json`` in that virtualenv.

Then it prints, per shape and pass, the times of both and their ratio BASE / NEW (> 1: NEW is
faster), with the geometric means per pass.  The same ratio for the other peers (NumPy im2col,
PyTorch), whose code did not change, shows how noisy the machine was.  With ``--rounds R`` the
two revisions are run alternately R times and the faster median of each measurement is kept.

Both revisions must have the ``bench`` subcommand.  Examples:

    python benchmarks/compare.py main --threads 1            # main against the working tree
    python benchmarks/compare.py v0.1.0 main --shapes resnet,1x1 --rounds 3 --no-torch
    python benchmarks/compare.py before.json after.json       # saved results
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_OPTIONS = ("--threads", "--dtype", "--shapes", "--passes", "--repeat")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare.py: git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------
# A revision: its files, a virtualenv with it installed, its bench results

def describe(rev: str) -> str:
    if rev == ".":
        return f"working tree ({git('describe', '--always', '--dirty')})"
    return f"{rev} ({git('rev-parse', '--short', rev + '^{commit}')})"


def export(rev: str, dest: Path) -> None:
    """The files of `rev` (or of the working tree, for ".") into `dest`."""
    dest.mkdir(parents=True)
    if rev == ".":
        names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        for name in filter(None, names.split("\0")):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def make_venv(where: Path, source: Path) -> Path:
    """A virtualenv with `source` installed; its python.  Made without pip: pip, setuptools and
    Cython come from this Python (a virtualenv's own setuptools, bundled with the interpreter,
    can be too old for the project's metadata and would come first on its path)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True,
                          text=True).stdout.strip()
    # this Python's packages, after the virtualenv's own (a path in a .pth file is appended
    # to sys.path; .pth files inside it are not run, so no other loopconv comes in)
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_compare_dependencies.pth").write_text("\n".join(ours) + "\n")
    build_log = where / "build.log"
    with open(build_log, "w") as f:
        proc = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation",
                               "--no-deps", "--ignore-installed", "--no-cache-dir",
                               "--disable-pip-version-check", str(source)],
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"compare.py: building {source} failed; the log:\n"
                 + "\n".join(build_log.read_text().splitlines()[-40:]))
    found = subprocess.run([str(python), "-c", "import loopconv; print(loopconv.__file__)"],
                           check=True, capture_output=True, text=True, cwd=where).stdout.strip()
    if not Path(found).resolve().is_relative_to(where.resolve()):
        sys.exit(f"compare.py: the virtualenv in {where} imports loopconv from {found}")
    return python


def run_bench(python: Path, out: Path, options: list, cwd: Path, source: Path) -> dict:
    """The benchmark of the revision exported to `source` (its benchmarks/, where it has one;
    older revisions had it in the package), run outside the source tree."""
    cmd = [str(python), "-m", "loopconv", "bench", "--json", str(out), *options]
    log("$ " + " ".join(cmd))
    env = {**os.environ, "LOOPCONV_BENCHMARKS": str(source / "benchmarks")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    if not out.exists():
        sys.exit(f"compare.py: the benchmark failed (exit code {proc.returncode})")
    if proc.returncode != 0:
        log(f"warning: the benchmark reported problems (exit code {proc.returncode})")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# Comparing two result files

def key(r: dict) -> tuple:
    return (r["threads"], r["dtype"], r["shape"], r["pass"], r["peer"])


def merge(runs: list) -> dict:
    """The results of several runs of one revision: the fastest median of each measurement."""
    best = {}
    for data in runs:
        for r in data["results"]:
            if key(r) not in best or r["median_s"] < best[key(r)]["median_s"]:
                best[key(r)] = r
    return best


def geomean(values) -> float:
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def report(base: dict, new: dict, names: tuple, peer: str = "loopconv") -> str:
    configs = sorted({k[:2] for k in base} & {k[:2] for k in new})
    if not configs:
        return "no thread count and dtype in common between the two results"
    controls = sorted({k[4] for k in base if k[4] != peer} & {k[4] for k in new})
    out = [f"BASE = {names[0]}", f"NEW  = {names[1]}",
           "ratio = BASE time / NEW time: > 1 means NEW is faster"]
    for threads, dtype in configs:
        rows, ratios, control_ratios = [], {}, {}
        shapes = list(dict.fromkeys(k[2] for k in base if k[:2] == (threads, dtype)))
        passes = list(dict.fromkeys(k[3] for k in base if k[:2] == (threads, dtype)))
        for shape in shapes:
            for pass_ in passes:
                a, b = base.get((threads, dtype, shape, pass_, peer)), new.get(
                    (threads, dtype, shape, pass_, peer))
                if not (a and b):
                    continue
                ratio = a["median_s"] / b["median_s"]
                ratios.setdefault(pass_, []).append(ratio)
                row = [shape, pass_, f"{a['median_s'] * 1e3:.3f}", f"{b['median_s'] * 1e3:.3f}",
                       f"{ratio:.2f}"]
                for c in controls:
                    ca, cb = (base.get((threads, dtype, shape, pass_, c)),
                              new.get((threads, dtype, shape, pass_, c)))
                    if ca and cb:
                        control_ratios.setdefault(c, []).append(ca["median_s"] / cb["median_s"])
                        row.append(f"{ca['median_s'] / cb['median_s']:.2f}")
                    else:
                        row.append("-")
                rows.append(row)
        header = ["shape", "pass", f"{peer} BASE ms", "NEW ms", "ratio"] + [
            f"{c} ratio" for c in controls]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

        def line(cells, widths=widths):
            return "  ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                             for i, (c, w) in enumerate(zip(cells, widths)))

        plural = "s" if threads > 1 else ""
        out += ["", f"{dtype}, {threads} thread{plural}", line(header),
                line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        out.append(f"geometric mean of the {peer} ratio:")
        for pass_ in passes + ["all"]:
            values = sum(ratios.values(), []) if pass_ == "all" else ratios.get(pass_, [])
            out.append(f"  {pass_:8} {geomean(values):.3f}")
        for c, values in control_ratios.items():
            spread = max(abs(math.log(v)) for v in values)
            out.append(f"  ({c}, unchanged code: geometric mean {geomean(values):.3f}, "
                       f"worst {math.exp(spread):.2f}x: the noise level)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="git revision, '.' or a bench JSON file")
    parser.add_argument("new", nargs="?", default=".",
                        help="git revision, '.' (default: the working tree) or a JSON file")
    for option in BENCH_OPTIONS:
        parser.add_argument(option, help="passed on to python -m loopconv bench")
    parser.add_argument("--no-torch", action="store_true", help="passed on to bench")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the two revisions alternately this many times (default 1)")
    parser.add_argument("--peer", default="loopconv",
                        help="the library whose times are compared (default: loopconv)")
    parser.add_argument("--keep", metavar="DIR",
                        help="build in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    options = [x for o in BENCH_OPTIONS if (v := getattr(args, o[2:])) is not None
               for x in (o, v)] + (["--no-torch"] if args.no_torch else [])
    revs = [args.base, args.new]
    runs, names = [[], []], []
    for rev in revs:
        if rev.endswith(".json") and Path(rev).is_file():
            runs[len(names)].append(json.loads(Path(rev).read_text()))
            names.append(rev)
        else:
            names.append(describe(rev))
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
        cleanup = None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="loopconv-compare-")
        work = Path(cleanup.name)
    try:
        pythons = {}
        for i, rev in enumerate(revs):
            if runs[i]:
                continue
            where = work / f"rev{i}"
            if where.exists():
                shutil.rmtree(where)
            log(f"== {names[i]}: exporting and building in {where}")
            export(rev, where / "src")
            pythons[i] = make_venv(where / "venv", where / "src")
        for round_ in range(args.rounds if pythons else 0):
            for i, python in pythons.items():
                log(f"== {names[i]}, round {round_ + 1} of {args.rounds}")
                runs[i].append(run_bench(python, work / f"rev{i}" / f"bench{round_}.json",
                                         options, cwd=work, source=work / f"rev{i}" / "src"))
        print(report(merge(runs[0]), merge(runs[1]), tuple(names), args.peer))
        if args.keep:
            log(f"virtualenvs and results kept in {work}")
    finally:
        if cleanup is not None:
            cleanup.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""loopconv in the processes real programs run in: thread limits from the ecosystem and from
loopconv's own controls, fork() after threaded calls, subnormal floats, the package layout.

Whatever touches process-wide state (environment variables, fork) runs in a fresh interpreter.
"""

import os
import threading

import numpy as np
import pytest
from common import DTYPE_PARAMS, run_interpreter, run_python

import loopconv
from loopconv import _config
from loopconv._loops import platform

threadpoolctl = pytest.importorskip("threadpoolctl")

needs_openmp = pytest.mark.skipif(not platform.openmp(), reason="a build without OpenMP")

# large enough for the tiled loops on several threads
X = np.random.default_rng(0).standard_normal((4, 16, 24, 24)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)


# For a fresh interpreter: which of the process's threads did the work of a call.  CPU time is
# read per thread from /proc, so the count holds however busy the machine is (a thread's share
# of a static schedule takes its CPU time, however long the wall clock).
BUSY_THREADS = """
import os


def _thread_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])      # utime + stime
    return ticks


def busy_threads(fn, repeat=10):
    before = _thread_ticks()
    for _ in range(repeat):
        fn()
    used = [t - before.get(tid, 0) for tid, t in _thread_ticks().items()]
    return sum(u >= max(used) / 4 for u in used)
"""

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")


@pytest.fixture
def default_threads(restore_threads):
    """No number chosen for the process (the count follows OpenMP's limit) until the test
    chooses one; the previous choice is put back afterwards."""
    _config._chosen = None


# ---------------------------------------------------------------------------------------------
# The thread count and where it comes from

def test_nn_is_reachable_after_import_loopconv():
    out = run_python("""
        import loopconv
        layer = loopconv.nn.Conv2d(1, 2, 3, rng=0)
        print(type(layer).__name__, layer.weight.shape)
    """)
    assert out.split() == ["Conv2d", "(2,", "1,", "3,", "3)"]


@needs_openmp
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_threadpoolctl_limits_loopconv(default_threads, limit):
    before = loopconv.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=limit, user_api="openmp"):
        assert loopconv.get_num_threads() == limit
        y = loopconv.conv2d(X, W)
    assert loopconv.get_num_threads() == before
    np.testing.assert_array_equal(y, loopconv.conv2d(X, W))


@needs_openmp
def test_chosen_number_beats_openmp_limit_and_threads_beats_both(default_threads):
    loopconv.set_num_threads(3)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert loopconv.get_num_threads() == 3
        with loopconv.threads(2):
            assert loopconv.get_num_threads() == 2
            with loopconv.threads(1):
                assert loopconv.get_num_threads() == 1
            assert loopconv.get_num_threads() == 2
        assert loopconv.get_num_threads() == 3
    _config._chosen = None
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert loopconv.get_num_threads() == 1


@needs_openmp
def test_threads_limits_the_calling_python_thread_only(default_threads):
    loopconv.set_num_threads(2)
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def other():
        inside.wait(10)
        seen["other"] = loopconv.get_num_threads()
        with loopconv.threads(3):
            seen["other inside"] = loopconv.get_num_threads()
        release.set()

    worker = threading.Thread(target=other)
    worker.start()
    with loopconv.threads(1):
        inside.set()
        release.wait(10)
        seen["main"] = loopconv.get_num_threads()
    worker.join(10)
    assert seen == {"other": 2, "other inside": 3, "main": 1}


def test_threads_as_a_decorator_and_after_an_exception(default_threads):
    loopconv.set_num_threads(2)

    @loopconv.threads(1)
    def inner():
        return loopconv.get_num_threads()

    assert inner() == 1
    with pytest.raises(KeyError):
        with loopconv.threads(1):
            raise KeyError("boom")
    assert loopconv.get_num_threads() == (2 if platform.openmp() else 1)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (True, TypeError),
                                        (1.5, TypeError), ("2", TypeError)],
                         ids=["zero", "negative", "bool", "float", "str"])
def test_bad_thread_counts_are_refused(bad, error):
    with pytest.raises(error, match="threads: n"):
        with loopconv.threads(bad):
            pass
    with pytest.raises(error, match="set_num_threads: n"):
        loopconv.set_num_threads(bad)


@needs_openmp
@pytest.mark.parametrize("env, expected", [
    ({"OMP_NUM_THREADS": "1", "LOOPCONV_NUM_THREADS": None}, 1),
    ({"OMP_NUM_THREADS": "3", "LOOPCONV_NUM_THREADS": None}, 3),
    ({"OMP_NUM_THREADS": "1", "LOOPCONV_NUM_THREADS": "2"}, 2),
], ids=["omp1", "omp3", "loopconv-env-wins"])
def test_environment_sets_the_default(env, expected):
    out = run_python("import loopconv; print(loopconv.get_num_threads())", env)
    assert int(out) == expected


@needs_openmp
@needs_proc
@pytest.mark.skipif(_config.available_cores() < 2, reason="needs two cores")
@pytest.mark.parametrize("env, busy", [
    ({"OMP_NUM_THREADS": "1", "LOOPCONV_NUM_THREADS": None}, 1),
    ({"OMP_NUM_THREADS": "2", "LOOPCONV_NUM_THREADS": None}, 2),
    ({"OMP_NUM_THREADS": "2", "LOOPCONV_NUM_THREADS": "1"}, 1),
], ids=["omp1", "omp2", "loopconv1-omp2"])
def test_the_loops_run_on_the_threads_they_report(env, busy):
    # NumPy's OpenBLAS gets one thread: its pool's threads (up to OMP_NUM_THREADS of them)
    # run for a while after NumPy's import (seen: 40 ms of CPU in the first half second with
    # NumPy 2.4's OpenBLAS) and would be counted as the loops' threads.
    env = dict(env, OPENBLAS_NUM_THREADS="1")
    out = run_python(BUSY_THREADS + """
import numpy as np, loopconv
x = np.ones((8, 64, 56, 56), np.float32); w = np.ones((64, 64, 3, 3), np.float32)
loopconv.conv2d(x, w, padding=1)
print(loopconv.get_num_threads(), busy_threads(lambda: loopconv.conv2d(x, w, padding=1)))
""", env)
    assert out.split() == [str(busy), str(busy)]


@needs_openmp
def test_threadpoolctl_lists_loopconvs_openmp_runtime():
    done = run_interpreter("-m", "threadpoolctl", "-i", "loopconv", timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    import json

    paths = {os.path.realpath(lib["filepath"]) for lib in json.loads(out)
             if lib["user_api"] == "openmp"}
    assert os.path.realpath(platform.openmp_runtime()) in paths


def test_show_config_says_where_the_thread_count_comes_from(capsys, default_threads):
    loopconv.set_num_threads(1)
    loopconv.show_config()
    out = capsys.readouterr().out
    assert "threads:                  1" in out
    if platform.openmp():
        assert "set_num_threads" in out
        assert "openmp runtime:" in out


# ---------------------------------------------------------------------------------------------
# fork()

FORK_AFTER_THREADS = """
    import os, sys, time, numpy as np, loopconv
    x = np.random.default_rng(0).standard_normal((4, 16, 24, 24)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
    with loopconv.threads(2):
        y = loopconv.conv2d(x, w, padding=1)               # the thread pool now exists
        gx, gw, gb = loopconv.conv2d_backward(x, w, y, padding=1)
    {setup}
    pid = os.fork()
    if pid == 0:
        ok = (np.array_equal(loopconv.conv2d(x, w, padding=1), y)
              and np.array_equal(loopconv.conv2d_backward(x, w, y, padding=1)[1], gw))
        os._exit(0 if ok else 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("hung")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
@pytest.mark.parametrize("setup", ["", "loopconv.set_num_threads(2)"],
                         ids=["default", "set_num_threads-2"])
def test_child_of_fork_after_threaded_calls_computes(setup):
    out = run_python(FORK_AFTER_THREADS.format(setup=setup))
    assert out.strip() == "0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_multiprocessing_fork_pool_after_threaded_calls():
    out = run_python("""
        import multiprocessing as mp, numpy as np, loopconv
        x = np.random.default_rng(0).standard_normal((4, 16, 24, 24)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
        with loopconv.threads(2):
            y = loopconv.conv2d(x, w)

        def work(i):
            return np.array_equal(loopconv.conv2d(x, w), y), loopconv.get_num_threads()

        with mp.get_context("fork").Pool(2) as pool:
            print(pool.map_async(work, range(4)).get(timeout=60))
    """)
    assert out.strip() == str([(True, 1)] * 4)


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_child_of_a_process_that_never_ran_threads():
    """Without a thread pool in the parent, a child keeps its threads where loopconv's OpenMP
    runtime is its own (a wheel's vendored copy), and runs on one where it may be shared."""
    out = run_python("""
        import os, numpy as np, loopconv
        from loopconv._loops import platform
        x = np.random.default_rng(0).standard_normal((4, 16, 24, 24)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
        loopconv.set_num_threads(2)
        pid = os.fork()
        if pid == 0:
            y = loopconv.conv2d(x, w)
            with loopconv.threads(1):
                ok = np.array_equal(y, loopconv.conv2d(x, w))
            os._exit((10 + loopconv.get_num_threads()) if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), loopconv._config._own_runtime(
            platform.openmp_runtime()))
    """)
    code, own = out.split()
    assert code == ("12" if own == "True" else "11")


def test_only_a_vendored_runtime_counts_as_loopconvs_own():
    assert _config._own_runtime("/venv/site-packages/loopconv.libs/libgomp-24e2ab19.so.1.0.0")
    assert _config._own_runtime("/venv/site-packages/loopconv/.dylibs/libomp.dylib")
    assert not _config._own_runtime("/usr/lib/x86_64-linux-gnu/libgomp.so.1")
    assert not _config._own_runtime("/venv/site-packages/torch/lib/libgomp.so.1")
    assert not _config._own_runtime("")


# ---------------------------------------------------------------------------------------------
# Subnormal floats: flushed to zero inside the loops, the caller's state untouched

TINY = {np.float32: np.float32(1e-39), np.float64: 1e-310}     # subnormal in each dtype


# input shapes per dimensionality: one for the direct loops, one (batch 1 in 1-D) for the tiled
SUBNORMAL_SHAPES = {1: [(2, 3, 8), (1, 32, 512)],
                    2: [(2, 3, 6, 6), (4, 16, 24, 24)],
                    3: [(1, 2, 4, 4, 4), (2, 8, 10, 10, 10)]}


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
@pytest.mark.parametrize("nd, shape", [(nd, shape) for nd, shapes in SUBNORMAL_SHAPES.items()
                                       for shape in shapes],
                         ids=[f"{nd}d-{loops}" for nd in SUBNORMAL_SHAPES
                              for loops in ("direct", "tiled")])
def test_subnormal_inputs_give_zeros(dtype, kind, nd, shape):
    rng = np.random.default_rng(2)
    x = (rng.uniform(0.5, 1, shape) * TINY[dtype]).astype(dtype)
    w = rng.uniform(0.5, 1, (shape[1], shape[1]) + (3,) * nd).astype(dtype)
    assert np.all(x != 0) and np.all(np.abs(x) < np.finfo(dtype).tiny)
    y = getattr(loopconv, f"{kind}{nd}d")(x, w, padding=1)
    assert not np.any(y)                                    # x taken as zero
    gy = np.ones_like(y)
    backward = getattr(loopconv, f"{kind}{nd}d_backward")
    gx, gw, gb = backward(x, (w * TINY[dtype]).astype(dtype), gy, padding=1)
    assert not np.any(gx) and not np.any(gw)                # w, then x, taken as zero
    np.testing.assert_array_equal(gb, np.full(shape[1], y[0, 0].size * shape[0], dtype))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (4, 16, 24, 24)], ids=["direct", "tiled"])
def test_subnormal_results_are_flushed_and_the_caller_state_is_kept(dtype, shape):
    small = np.sqrt(np.finfo(dtype).tiny) * dtype(0.25)       # normal; its square is not
    x = np.full(shape, small, dtype)
    w = np.zeros((shape[1], shape[1], 3, 3), dtype)
    w[:, :, 1, 1] = np.eye(shape[1], dtype=dtype) * small
    with np.errstate(under="ignore"):
        assert small * small != 0                            # NumPy, on the calling thread
        y = loopconv.conv2d(x, w, padding=1)
        assert not np.any(y)                                 # flushed inside the loops
        assert small * small != 0                            # and the caller's state is back


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_normal_values_unchanged_by_the_flush(dtype):
    """Where no value is subnormal the flush changes nothing: the loops agree with a float64
    NumPy sum (as elsewhere in the suite), here on values spanning many exponents."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 4, 10, 10)) * 10.0 ** rng.integers(-8, 8, (2, 4, 10, 10)))
    w = rng.standard_normal((3, 4, 3, 3))
    y = loopconv.conv2d(x.astype(dtype), w.astype(dtype))
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    expected = np.einsum("ncijkl,ockl->noij", win, w)
    scale = np.einsum("ncijkl,ockl->noij", np.abs(win), np.abs(w))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(y - expected) <= tol * scale)


# ---------------------------------------------------------------------------------------------
# In one process with PyTorch and scikit-learn, which bring OpenMP runtimes of their own

def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


@needs_openmp
@needs_proc
@pytest.mark.skipif(not (_installed("torch") and _installed("sklearn")),
                    reason="needs PyTorch and scikit-learn")
@pytest.mark.skipif(_config.available_cores() < 2, reason="needs two cores")
@pytest.mark.parametrize("order", [("torch", "sklearn.cluster", "loopconv"),
                                   ("loopconv", "torch", "sklearn.cluster"),
                                   ("sklearn.cluster", "loopconv", "torch")],
                         ids=lambda order: "-".join(m.split(".")[0] for m in order))
def test_beside_torch_and_sklearn(order):
    """Imported in any order beside them, after they have run their own threaded code,
    loopconv still runs on two threads and computes what it computes on one."""
    code = BUSY_THREADS + f"""
for name in {order!r}:
    __import__(name)
import numpy as np, loopconv, torch
from sklearn.cluster import KMeans
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 64, 56, 56)).astype(np.float32)
w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
torch_y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
KMeans(2, n_init=1, random_state=0).fit(rng.standard_normal((200, 2)))
with loopconv.threads(1):
    y1 = loopconv.conv2d(x, w, padding=1)
with loopconv.threads(2):
    y = loopconv.conv2d(x, w, padding=1)
    busy = busy_threads(lambda: loopconv.conv2d(x, w, padding=1))
print(busy, np.array_equal(y, y1), float(np.abs(y - torch_y.numpy()).max()))
"""
    busy, same, diff = run_python(code).split()
    assert same == "True"
    assert float(diff) < 1e-3
    assert busy == "2"

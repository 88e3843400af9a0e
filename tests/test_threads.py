"""Results do not depend on the thread count, and the thread count is honoured."""
import numba
import numpy as np
import pytest

import numbabn as nbn


@pytest.fixture
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("shape, axis", [((8, 16, 30, 30), 1), ((2000, 64), 1),
                                         ((4, 9, 9, 32), -1), ((1, 2, 100000), 1)])
def test_bitwise_identical_with_one_and_two_threads(rng, shape, axis, request):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        y, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
        grads = nbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
        return (y, mean, invstd, *grads)

    numba.set_num_threads(2)
    two = run()
    request.getfixturevalue("one_thread")
    assert numba.get_num_threads() == 1
    one = run()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# --- the thread policy (numbabn/_threads.py) ---------------------------------------------
# Each case runs in a new process: the OpenMP runtime reads its settings once, when it loads,
# and Numba's threading layer can start only once per process.

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from numbabn import _threads  # noqa: E402

POLICY_PROBE = textwrap.dedent("""
    import json, os
    import numba, numpy as np
    import numbabn as nbn
    from numbabn import _threads
    nbn.batch_norm_forward(np.ones((300, 256), np.float32))   # first CPU call: parallel path
    print(json.dumps({"policy": _threads.describe_policy(), "layer": numba.threading_layer(),
                      "threads": numba.get_num_threads(),
                      "env": {v: os.environ.get(v) for v in _threads.WAIT_VARIABLES}}))
""")


def run_python(code, timeout=300, **env):
    """Run ``code`` in a new interpreter with ``env`` added; returns the CompletedProcess."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                         "NUMBABN_THREAD_POLICY", "NUMBA_THREADING_LAYER")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=timeout)


def run_probe(code=POLICY_PROBE, **env):
    """``(what the probe printed, its stderr)`` from ``code`` run in a new process."""
    done = run_python(code, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def probe(**env):
    return run_probe(**env)[0]


NOTHING_SET = {v: None for v in _threads.WAIT_VARIABLES}


def test_policy_applies_a_short_spin_and_restores_the_environment():
    seen = probe()
    assert seen["layer"] != "omp" or seen["policy"].startswith("applied"), seen
    assert seen["env"] == NOTHING_SET  # the variables were there only while the runtime loaded


def _spin_count_loaded(**env):
    """GOMP_SPINCOUNT as libgomp reports it while loading (OMP_DISPLAY_ENV) in a new process
    whose first numbabn call starts Numba's OpenMP layer."""
    seen, stderr = run_probe(OMP_DISPLAY_ENV="VERBOSE", **env)
    if seen["layer"] != "omp":
        pytest.skip(f"Numba's threading layer here is {seen['layer']}, not libgomp's")
    return [line.split("=", 1)[1].strip(" '") for line in stderr.splitlines()
            if "GOMP_SPINCOUNT =" in line]


def test_the_openmp_runtime_loads_with_the_short_spin():
    """What the runtime took, not what numbabn says it did (an empty SHORT_WAIT passed)."""
    assert _spin_count_loaded() == [_threads.SHORT_WAIT["GOMP_SPINCOUNT"]]
    assert _spin_count_loaded(NUMBABN_THREAD_POLICY="off") == ["300000"]


def test_policy_switch_turns_it_off():
    seen = probe(NUMBABN_THREAD_POLICY="off")
    assert seen["policy"].startswith("off") and seen["env"] == NOTHING_SET


@pytest.mark.parametrize("variable, value", [("OMP_WAIT_POLICY", "active"),
                                             ("GOMP_SPINCOUNT", "1000"),
                                             ("KMP_BLOCKTIME", "5")])
def test_policy_honours_a_wait_policy_the_user_set(variable, value):
    seen = probe(**{variable: value})
    assert seen["policy"].startswith("not needed: the OpenMP wait policy is the user's")
    assert seen["env"] == dict(NOTHING_SET, **{variable: value})


def test_policy_honours_threading_layer_and_thread_count():
    seen = probe(NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="1")
    assert seen["layer"] == "workqueue" and seen["threads"] == 1
    assert seen["policy"].startswith("not needed")


def test_policy_does_not_apply_when_numba_started_first():
    seen, _ = run_probe("import numba; numba.set_num_threads(1)\n" + POLICY_PROBE)
    assert seen["policy"].startswith("not applied") and seen["threads"] == 1


def test_policy_not_applied_once_a_shared_openmp_runtime_is_loaded():
    pytest.importorskip("torch")  # its CPU build loads libgomp.so.1, the one Numba would use
    seen, _ = run_probe("import torch\n" + POLICY_PROBE)
    assert seen["policy"].startswith("not applied: an OpenMP runtime was already loaded")


def test_private_openmp_copies_do_not_block_the_policy(monkeypatch, tmp_path):
    maps = tmp_path / "maps"
    line = "7f00-7f01 r-xp 00000000 08:01 1 /site-packages/scikit_learn.libs/{}\n"
    maps.write_text(line.format("libgomp-e985bcbb.so.1.0.0"))
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(maps if path == "/proc/self/maps" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert _threads.openmp_loaded() is False
    maps.write_text(line.format("libgomp-e985bcbb.so.1.0.0") + line.format("libgomp.so.1"))
    assert _threads.openmp_loaded() is True


def test_policy_leaves_blas_limits_alone():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        nbn.batch_norm_forward(np.ones((300, 256), np.float32))
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info()
                   if p["user_api"] == "blas")


def test_first_call_leaves_every_blas_thread_count_alone():
    """In a new process, so that this first call is the one that runs the policy (in this
    one an earlier test has), with every BLAS the suite's packages bring loaded before it."""
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("scipy.linalg")
    code = textwrap.dedent("""
        import json, numpy as np, scipy.linalg, threadpoolctl
        import numbabn as nbn
        def blas():
            return {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()
                    if p["user_api"] == "blas"}
        before = blas()
        nbn.batch_norm_forward(np.ones((300, 256), np.float32))
        print(json.dumps([before, blas()]))
    """)
    (before, after), _ = run_probe(code)
    assert before and after == before


def test_workqueue_runs_parallel_kernels_from_the_main_thread_only(monkeypatch):
    import threading

    from numbabn.cpu import _chunks

    big = 2 * _chunks.SERIAL_MAX_ELEMENTS
    monkeypatch.setattr(_threads, "_layer", "workqueue")
    seen = {}
    worker = threading.Thread(target=lambda: seen.setdefault("serial", _chunks.serial(big)))
    worker.start()
    worker.join()
    assert seen["serial"] is True
    assert _chunks.serial(big) is (numba.get_num_threads() == 1)
    monkeypatch.setattr(_threads, "_layer", "omp")
    worker = threading.Thread(target=lambda: seen.__setitem__("serial", _chunks.serial(big)))
    worker.start()
    worker.join()
    assert seen["serial"] is (numba.get_num_threads() == 1)


# --- several Python threads at once, on every threading layer that loads here ---------------

CONCURRENT = textwrap.dedent("""
    import threading
    import numba, numpy as np
    import numbabn as nbn
    rng = np.random.default_rng(0)
    shapes = [((8, 16, 30, 30), 1), ((2000, 64), 1), ((4, 9, 9, 32), -1), ((300, 256), 1)]
    inputs = [(rng.standard_normal(s).astype(np.float32),
               rng.standard_normal(s).astype(np.float32), a) for s, a in shapes]

    def run(x, dy, axis):
        y, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
        return (y, mean, invstd, *nbn.batch_norm_backward(dy, x, mean, invstd, axis=axis))

    want = [run(*i) for i in inputs]          # the main thread alone
    errors = []

    def worker(k):
        try:
            for r in range(6):
                j = (k + r) % len(inputs)
                for a, b in zip(run(*inputs[j]), want[j]):
                    if not np.array_equal(a, b):
                        errors.append(f"thread {k}: results differ")
        except Exception as err:              # pragma: no cover - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads: t.start()
    worker(99)                                 # the main thread takes part too
    for t in threads: t.join()
    print("layer", numba.threading_layer(), "errors", errors)
    assert not errors
    print("CONCURRENT OK")
""")


def _tbb_environment():
    """LD_LIBRARY_PATH for the tbb wheel (it puts libtbb in <prefix>/lib), or None without it."""
    lib = os.path.join(sys.prefix, "lib")
    if not any(name.startswith("libtbb.so.12") for name in os.listdir(lib)):
        return None
    return os.pathsep.join(p for p in (lib, os.environ.get("LD_LIBRARY_PATH")) if p)


@pytest.mark.parametrize("layer", ["omp", "workqueue", "tbb"])
def test_concurrent_calls_from_python_threads(layer):
    env = {"NUMBA_THREADING_LAYER": layer}
    if layer == "tbb":
        path = _tbb_environment()
        if path is None:
            pytest.skip("the tbb wheel is not installed (pip install tbb)")
        env["LD_LIBRARY_PATH"] = path
    done = run_python(CONCURRENT, timeout=600, **env)
    if done.returncode and "No threading layer could be loaded" in done.stderr:
        pytest.skip(f"the {layer} layer cannot be loaded here")
    assert done.returncode == 0 and "CONCURRENT OK" in done.stdout, (
        done.stdout[-2000:] + done.stderr[-3000:])
    assert f"layer {layer}" in done.stdout


# --- the GIL ----------------------------------------------------------------------------------

def _cpu_kernels():
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import numbabn.cpu

    for info in pkgutil.iter_modules(numbabn.cpu.__path__):
        module = importlib.import_module(f"numbabn.cpu.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj


def test_every_cpu_kernel_releases_the_gil():
    # Without nogil a kernel holds the GIL for its whole run: Python threads (a Dask worker's,
    # a data loader's) calling numbabn then take turns instead of running on their cores.
    kernels = dict(_cpu_kernels())
    assert len(kernels) > 50
    holding = sorted(name for name, k in kernels.items() if not k.targetoptions.get("nogil"))
    assert not holding, f"kernels that hold the GIL: {holding}"

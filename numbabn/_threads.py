"""How numbabn's parallel kernels share the process: the thread policy.

numbabn's CPU kernels run on Numba's threading layer, usually the ``omp``
layer, GNU OpenMP (libgomp).  By default libgomp's idle workers spin for a
while after every parallel region; NumPy's BLAS (OpenBLAS) keeps its own
workers spinning after every matrix product.  In a training loop the two
alternate, and each pool's spinning threads take the cores the other needs:
on a 2-core machine a step of a small MLP was 20x slower than with one Numba
thread (issue 11).

The policy (``NUMBABN_THREAD_POLICY``, default ``auto``; ``off`` disables it):

- When the CPU backend is first used and Numba's threading layer has not
  started yet, numbabn starts it itself, with :data:`SHORT_WAIT` put in
  ``os.environ`` for the moment the OpenMP runtime is loaded (and removed
  right after): its idle workers then spin for about 0.1 ms instead of
  about 17 ms before they sleep.  Nothing is changed when the user set
  ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``, when the
  OpenMP runtime Numba would use is already loaded (it has read its
  settings), or when the layer is not OpenMP (``NUMBA_THREADING_LAYER`` is
  honoured).  The loaded runtime is shared: libraries that load the same
  libgomp later (PyTorch's CPU build does) get the shorter spin too.
- Safety, always on (not part of the switch): the ``workqueue`` layer aborts
  the process when two threads launch parallel kernels at once, so there only
  the main thread runs the parallel kernels and other threads run their
  serial twins (same results, bit for bit).
"""
import os
import threading

import numba

#: The switch: ``NUMBABN_THREAD_POLICY=off`` leaves the process as it is.
POLICY_ENV = "NUMBABN_THREAD_POLICY"
#: Set by the user, any of these says how OpenMP threads should wait: honoured.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: How long idle OpenMP workers spin before they sleep, set while the runtime loads.  GNU
#: libgomp (Numba's pip wheels): 3000 spins, about 0.1 ms here, instead of its default
#: 300000 (about 17 ms); LLVM/Intel OpenMP (conda builds): 1 ms instead of 200 ms.  Measured
#: on the 2-core test machine (a VM): short enough that they no longer take the cores from the
#: BLAS calls that follow (the 512-row MLP step: 14.4 ms with the defaults, 1.8 ms with this,
#: 2.1 ms with a NumPy batch norm); back-to-back calls on small inputs kept their speed when the
#: machine was calm (35 us; sleeping workers, OMP_WAIT_POLICY=PASSIVE, made it 75 us) but not
#: under other jobs' load (110 us: the workers fell asleep between calls).
SHORT_WAIT = {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "1"}
#: File names of the OpenMP runtimes (GNU, LLVM, Intel) that Numba's omp layer would share.
#: Copies renamed by auditwheel (scikit-learn's ``libgomp-<hash>.so``) are private to their
#: wheel, have their own settings, and do not count.
_OPENMP_LIBRARIES = ("libgomp.so", "libomp.so", "libiomp5.so")

_lock = threading.Lock()
_main_thread = threading.main_thread().ident
#: What :func:`configure` did, in words; None until it ran.
_outcome = None
#: The running layer's name, once known.
_layer = None


def enabled():
    """False when ``NUMBABN_THREAD_POLICY`` is ``off`` (or ``0``, ``no``, ``false``)."""
    return os.environ.get(POLICY_ENV, "auto").strip().lower() not in ("off", "0", "no", "false")


def _layer_started():
    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def openmp_loaded():
    """True when an OpenMP runtime is already mapped into this process (Linux; else False)."""
    try:
        with open("/proc/self/maps") as maps:
            names = {os.path.basename(line.split()[-1]) for line in maps if "/" in line}
    except OSError:
        return False
    return any(name.startswith(_OPENMP_LIBRARIES) for name in names)


def configure():
    """Start Numba's threading layer under the policy; idempotent, returns what it did."""
    global _outcome
    if _outcome is not None:
        return _outcome
    with _lock:
        if _outcome is None:
            _outcome = _configure()
    return _outcome


def _configure():
    if not enabled():
        return f"off ({POLICY_ENV}={os.environ[POLICY_ENV]}): numbabn changes nothing"
    if _layer_started():
        return "not applied: Numba's threading layer had started before numbabn's first CPU call"
    user = [v for v in WAIT_VARIABLES if v in os.environ]
    if user:
        return f"not needed: the OpenMP wait policy is the user's ({', '.join(user)} set)"
    if numba.config.THREADING_LAYER in ("workqueue", "tbb"):
        return "not needed: the threading layer is not OpenMP"
    if openmp_loaded():
        return ("not applied: an OpenMP runtime was already loaded (its workers spin after "
                "each parallel region; start Python with GOMP_SPINCOUNT=3000 to shorten that)")
    os.environ.update(SHORT_WAIT)
    try:
        numba.get_num_threads()  # loads the threading layer, which reads the variables now
    finally:
        for variable in SHORT_WAIT:
            del os.environ[variable]
    if layer_name() != "omp":
        return f"not needed: Numba chose the {layer_name()} layer"
    return ("applied: Numba's OpenMP workers spin briefly, then sleep, when idle "
            "(GOMP_SPINCOUNT=3000, KMP_BLOCKTIME=1 at start)")


def layer_name():
    """The running threading layer (``omp``, ``tbb``, ``workqueue``), or a note if not started."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:
            return f"not started yet (requested: {numba.config.THREADING_LAYER})"
    return _layer


def parallel_allowed():
    """False when this thread must not launch a parallel kernel (workqueue, not the main thread).

    Call it after the layer started (``numba.get_num_threads()`` starts it).
    """
    layer = _layer if _layer is not None else layer_name()
    return layer != "workqueue" or threading.get_ident() == _main_thread


def describe_policy():
    """One line: the policy and what it did in this process."""
    return _outcome if _outcome is not None else "not configured yet (no CPU call so far)"


# --- the BLAS next door ------------------------------------------------------------------

def blas_pools():
    """threadpoolctl's description of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [p for p in threadpool_info() if p["user_api"] == "blas"]


def blas_description():
    pools = blas_pools()
    if pools is None:
        return "unknown (threadpoolctl is not installed)"
    if not pools:
        return "none loaded"
    return ", ".join(f"{p['internal_api']} {p['version']} ({p['num_threads']} threads, "
                     f"{p.get('threading_layer', '?')})" for p in pools)


def conflict():
    """A sentence on whether Numba's and the BLAS's threads are known to fight, or None."""
    pools = blas_pools() or []
    blas_threads = max((p["num_threads"] for p in pools), default=1)
    numba_threads = numba.get_num_threads()
    if blas_threads <= 1 or numba_threads <= 1:
        return None
    layer = layer_name()
    if layer == "omp" and not (_outcome or "").startswith("applied") \
            and not any(v in os.environ for v in WAIT_VARIABLES):
        return (f"yes: {blas_threads} BLAS threads and {numba_threads} Numba OpenMP threads that "
                "spin for milliseconds when idle fight for the cores when BLAS and numbabn calls "
                "alternate (a training loop); start Python with GOMP_SPINCOUNT=3000 "
                "(or OMP_WAIT_POLICY=PASSIVE), or limit one side "
                "(threadpoolctl.threadpool_limits(1, 'blas') or numba.set_num_threads(1))")
    return (f"no known conflict: {blas_threads} BLAS threads, {numba_threads} Numba threads "
            f"on the {layer} layer, whose idle workers soon sleep")

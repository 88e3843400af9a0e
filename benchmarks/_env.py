"""The suite's switches, read from the environment when asv imports a benchmark module.

``NUMBABN_BENCH_FULL=1`` selects the performance issues' full parameter lists,
``NUMBABN_BENCH_SMOKE=1`` (CI) one parameter set per benchmark; unset, empty or
``0`` means off, for every module alike.
"""
import os


def flag(name):
    """True when the environment variable ``name`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(name, "") not in ("", "0")


FULL = flag("NUMBABN_BENCH_FULL")
SMOKE = flag("NUMBABN_BENCH_SMOKE")

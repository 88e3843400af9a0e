import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "numbabn",
    deadline=None,
    max_examples=int(os.environ.get("NUMBABN_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
)
# CI explores the same examples every run, so a submission's result does not
# depend on the draw; local runs keep drawing new examples (and keep any
# failure in .hypothesis/ to replay it).
settings.register_profile("ci", settings.get_profile("numbabn"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "numbabn")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tolerance(dtype):
    """Relative/absolute tolerance against the float64 reference, by input dtype."""
    return {
        np.dtype(np.float64): 1e-10,
        np.dtype(np.float32): 1e-5,
        np.dtype(np.float16): 2e-3,
    }[np.dtype(dtype)]


def assert_within_ulp(got, want, dtype):
    """|got - want| <= one ulp of ``want`` rounded to ``dtype``, with ``want`` the float64
    reference: a correctly rounded result (half an ulp) passes, arithmetic in ``dtype``
    itself does not."""
    ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    err = np.abs(np.asarray(got, np.float64) - want)
    assert (err <= ulp).all(), f"{np.max(err / ulp):.3g} ulp"


def pytest_ignore_collect(collection_path, config):
    """Leave the CUDA suite to its own process (tests/test_cuda_dispatch.py starts it)
    unless it is asked for by path: it needs NUMBA_ENABLE_CUDASIM set before numba loads."""
    if collection_path.name == "cuda_sim":
        return not any("cuda_sim" in str(arg) for arg in config.args)
    return None

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
settings.load_profile("numbabn")


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

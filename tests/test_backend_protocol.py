"""Both backends implement the written-down backend interface, signatures included."""
import inspect

import pytest

from numbabn import _backend
from numbabn.cpu import backend as cpu_backend


def _backends():
    found = [cpu_backend]
    try:
        from numbabn.cuda import backend as cuda_backend
    except ImportError:  # numba-cuda absent: the CUDA backend cannot even be imported
        return found
    return found + [cuda_backend]


@pytest.mark.parametrize("module", _backends(), ids=lambda m: m.name)
def test_backend_conforms_to_the_protocol(module):
    assert isinstance(module, _backend.Backend)
    for name in _backend.MEMBERS:
        assert hasattr(module, name), f"{module.__name__} lacks {name}"
        if name == "name":
            continue
        expected = inspect.signature(getattr(_backend.Backend, name))
        params = list(expected.parameters.values())[1:]  # without self
        actual = list(inspect.signature(getattr(module, name)).parameters.values())
        assert [p.name for p in actual] == [p.name for p in params], name


def test_protocol_lists_the_members():
    assert {"welford", "forward_train", "backward", "group_train"} <= set(_backend.MEMBERS)

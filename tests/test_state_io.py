"""numbabn.save / numbabn.load: round trips, format version, atomic replacement."""
import os

import numpy as np
import pytest

import numbabn as nbn
from numbabn import _state_io


def trained_layer(rng):
    bn = nbn.BatchNorm2d(3, momentum=None)
    for _ in range(2):
        bn(rng.standard_normal((2, 3, 3, 3)).astype(np.float32))
    bn.weight[...] = rng.standard_normal(3)
    return bn


def assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        np.testing.assert_array_equal(a[key], b[key])


def test_layer_round_trip(rng, tmp_path):
    bn = trained_layer(rng)
    path = tmp_path / "bn.npz"
    nbn.save(path, bn)
    state = nbn.load(path)
    assert_same_state(state, bn.state_dict())
    other = nbn.BatchNorm2d(3, momentum=None)
    other.load_state_dict(state)
    assert other.num_batches_tracked == 2
    # an ordinary .npz archive, with the format version in it
    with np.load(path) as data:
        assert int(data[_state_io.FORMAT_KEY]) == _state_io.FORMAT_VERSION


def test_dict_round_trip_keeps_any_key_and_path_as_given(tmp_path):
    state = {"file": np.arange(3.0), "allow_pickle": np.array(2, np.int64)}
    path = tmp_path / "state"  # no suffix added
    nbn.save(str(path), state)
    assert os.listdir(tmp_path) == ["state"]
    assert_same_state(nbn.load(path), state)


def test_the_temporary_file_is_written_beside_the_target(tmp_path, monkeypatch):
    """Beside it, so that the final rename stays on one file system (an atomic replace)."""
    renamed = []
    replace = _state_io.os.replace
    monkeypatch.setattr(_state_io.os, "replace",
                        lambda src, dst: (renamed.append((src, dst)), replace(src, dst))[1])
    nbn.save(tmp_path / "bn.npz", nbn.BatchNorm1d(3))
    [(src, dst)] = renamed
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path)


@pytest.mark.parametrize("state, error, message", [
    ({"w": np.array(["a"])}, TypeError, "must be a numeric array"),
    ({"w": np.array([object()])}, TypeError, "must be a numeric array"),
    ({1: np.zeros(2)}, TypeError, "keys must be strings"),
    ({_state_io.FORMAT_KEY: np.zeros(2)}, ValueError, "is reserved"),
    ([np.zeros(2)], TypeError, "expected a layer or a mapping of arrays"),
])
def test_save_refuses_what_it_cannot_round_trip(tmp_path, state, error, message):
    with pytest.raises(error, match=message):  # refused up front, not by a later accident
        nbn.save(tmp_path / "x.npz", state)
    assert os.listdir(tmp_path) == []


def test_load_refuses_foreign_and_future_files(tmp_path):
    np.savez(tmp_path / "plain.npz", weight=np.ones(2))
    with pytest.raises(ValueError, match="not a numbabn state file"):
        nbn.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "future.npz", **{_state_io.FORMAT_KEY: np.array(99)})
    with pytest.raises(ValueError, match="format 99"):
        nbn.load(tmp_path / "future.npz")


def _fail_while_writing(monkeypatch):
    real = _state_io._write_npz

    def write_then_fail(f, arrays):
        real(f, arrays)
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(_state_io, "_write_npz", write_then_fail)


def _fail_at_fsync(monkeypatch):
    def fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(_state_io.os, "fsync", fsync)


def _fail_at_rename(monkeypatch):
    def replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(_state_io.os, "replace", replace)


@pytest.mark.parametrize("fail", [_fail_while_writing, _fail_at_fsync, _fail_at_rename])
def test_failing_write_leaves_the_old_file_intact(rng, tmp_path, monkeypatch, fail):
    path = tmp_path / "bn.npz"
    nbn.save(path, nbn.BatchNorm1d(3))
    old_bytes = path.read_bytes()
    os.chmod(path, 0o640)
    fail(monkeypatch)
    with pytest.raises(OSError):
        nbn.save(path, trained_layer(rng))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["bn.npz"]  # no temporary file left behind
    assert_same_state(nbn.load(path), nbn.BatchNorm1d(3).state_dict())
    # a successful overwrite keeps the file's permissions
    nbn.save(path, trained_layer(rng))
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_new_file_gets_default_permissions(tmp_path):
    path = tmp_path / "bn.npz"
    nbn.save(path, nbn.BatchNorm1d(2))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask

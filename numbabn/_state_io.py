"""Saving and loading layer state: ``.npz`` files with a format version, written atomically.

The file is an ordinary NumPy ``.npz`` archive (``numpy.load`` reads it) with
one array per state key and ``__numbabn_format__`` holding the format
version.  It is written to a temporary file in the target's directory,
flushed to disk, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so a crash or a failing write leaves either the old file
or the new one, never a mixture.
"""
import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

FORMAT_KEY = "__numbabn_format__"
FORMAT_VERSION = 1


def save(path, layer_or_state):
    """Write a layer's ``state_dict()`` (or a state dict) to ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Written exactly as given (no ``.npz`` suffix is added).
    layer_or_state : BatchNorm or mapping of str to array
        A layer (its :meth:`~numbabn.BatchNorm.state_dict` is saved) or a
        mapping of names to numeric arrays.

    Raises
    ------
    TypeError
        For a value that is not a numeric array, or a key that is not a string.
    ValueError
        For the reserved key ``__numbabn_format__``.
    """
    state = layer_or_state.state_dict() if hasattr(layer_or_state, "state_dict") else layer_or_state
    arrays = _checked_arrays(state)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def load(path):
    """Read a state dict written by :func:`save`.

    Returns
    -------
    dict of str to ndarray
        In the order it was saved; pass it to ``layer.load_state_dict``.

    Raises
    ------
    ValueError
        When the file has no numbabn format version or a newer one.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if FORMAT_KEY not in data.files:
            raise ValueError(f"{os.fspath(path)!r} is not a numbabn state file (no format version)")
        version = int(data[FORMAT_KEY])
        if not 1 <= version <= FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has numbabn state format {version}; this version of "
                f"numbabn reads formats 1 to {FORMAT_VERSION}"
            )
        return {key: data[key] for key in data.files if key != FORMAT_KEY}


def _checked_arrays(state):
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a layer or a mapping of arrays, got {type(state).__name__}")
    arrays = {FORMAT_KEY: np.array(FORMAT_VERSION, dtype=np.int64)}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state keys must be strings, got {key!r}")
        if key == FORMAT_KEY:
            raise ValueError(f"{FORMAT_KEY!r} is reserved for the format version")
        if hasattr(value, "copy_to_host"):
            value = value.copy_to_host()
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"state[{key!r}] must be a numeric array, got dtype {value.dtype}")
        arrays[key] = value
    return arrays


def _write_npz(f, arrays):
    """Write ``arrays`` as an ``.npz`` archive to the open binary file ``f``.

    Written member by member (as ``numpy.savez`` does) so that any key is
    allowed, including ones that clash with ``numpy.savez``'s parameter names.
    """
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            with archive.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _file_mode(path):
    """Permissions for the new file: the old file's, else the default for new files."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

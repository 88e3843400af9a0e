"""Streaming statistics: ChannelMoments over batches and memory-mapped files, merges, Dask.

The default parameters are short (``asv run --quick`` takes seconds here);
``NUMBABN_BENCH_FULL=1`` selects larger data.  Commits without
``numbabn.ChannelMoments`` (or without Dask installed, for the Dask class)
skip these benchmarks.
"""
import os
import shutil
import tempfile

import numpy as np

import numbabn as nbn

from ._env import FULL

#: Rows of (16, 64, 64) float32 (256 KiB each): 16 MiB by default, 1 GiB in the full suite.
ROWS = 4096 if FULL else 64
SAMPLE = (16, 64, 64)


def _require_accumulator():
    if not hasattr(nbn, "ChannelMoments"):
        raise NotImplementedError("no numbabn.ChannelMoments in this commit")  # asv: skipped


def _offset_data(rows, dtype=np.float32):
    x = np.random.default_rng(0).standard_normal((rows, *SAMPLE), dtype=np.float32)
    x += np.float32(1e4)
    return x.astype(dtype)


class ChannelMomentsUpdate:
    """``update`` over batches of an in-memory array, native or big-endian."""

    params = ([4, 32], ["native", "big-endian"])
    param_names = ["batch_rows", "byteorder"]
    timeout = 300

    def setup(self, batch_rows, byteorder):
        _require_accumulator()
        x = _offset_data(ROWS)
        self.x = x.astype(">f4") if byteorder == "big-endian" else x
        self.batch_rows = batch_rows
        self.time_update()  # load the kernels before anything is timed

    def time_update(self, *params):
        acc = nbn.ChannelMoments()
        for start in range(0, len(self.x), self.batch_rows):
            acc.update(self.x[start:start + self.batch_rows])
        return acc

    def peakmem_update(self, *params):
        self.time_update()


class ChannelMomentsMemmap:
    """``update`` of a whole ``np.memmap`` file (read slab by slab, pages released)."""

    params = ([True, False],)
    param_names = ["release_pages"]
    timeout = 300

    def setup(self, release_pages):
        _require_accumulator()
        self.dir = tempfile.mkdtemp(prefix="numbabn-asv-")
        path = os.path.join(self.dir, "data.f32")
        _offset_data(ROWS).tofile(path)
        self.mm = np.memmap(path, dtype=np.float32, mode="r", shape=(ROWS, *SAMPLE))
        nbn.ChannelMoments().update(np.ones((4, *SAMPLE), np.float32))

    def teardown(self, release_pages):
        del self.mm
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_update_memmap(self, release_pages):
        nbn.ChannelMoments().update(self.mm, release_pages=release_pages)

    def peakmem_update_memmap(self, release_pages):
        nbn.ChannelMoments().update(self.mm, release_pages=release_pages)


class ChannelMomentsMerge:
    """Merging many small accumulators: the per-call cost of Chan's merge on (C,) vectors."""

    params = ([16, 1024],)
    param_names = ["channels"]

    def setup(self, channels):
        _require_accumulator()
        rng = np.random.default_rng(0)
        self.parts = [nbn.ChannelMoments().update(rng.standard_normal((8, channels)))
                      for _ in range(200)]

    def time_merge(self, channels):
        acc = nbn.ChannelMoments()
        for part in self.parts:
            acc.merge(part)


class DaskChannelMoments:
    """``numbabn.dask.channel_moments`` against Dask's own mean + var, threaded scheduler."""

    params = (["numbabn", "dask"],)
    param_names = ["library"]
    timeout = 300

    def setup(self, library):
        try:
            import dask
            import dask.array as da

            import numbabn.dask as nbd
        except ImportError:
            raise NotImplementedError("dask or numbabn.dask is not installed")
        darr = da.from_array(_offset_data(ROWS), chunks=(max(1, ROWS // 8), *SAMPLE))
        axes = (0, 2, 3)
        if library == "numbabn":
            self.call = lambda: dask.compute(*nbd.channel_moments(darr), scheduler="threads")
        else:
            self.call = lambda: dask.compute(darr.mean(axis=axes), darr.var(axis=axes),
                                             scheduler="threads")
        self.call()

    def time_channel_moments(self, library):
        self.call()

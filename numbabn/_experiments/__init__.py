"""``python -m numbabn demo <experiment>``: which normalization to use when, measured.

- :mod:`.small_batch`: the digits MLP at batch sizes 2 to 32 with no
  normalization, batch norm, batch renorm, layer norm and group norm.
- :mod:`.rnn`: a tanh recurrent network reading each digit as 8 rows of 8
  pixels, with no normalization, layer norm and batch norm inside the cell.

Like :mod:`numbabn._demo`, these are examples to copy, not library API: the
networks are plain NumPy (:mod:`.nets`), the normalization layers numbabn's.
"""

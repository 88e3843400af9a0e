r"""Per-channel float64 arithmetic of batch renormalization's backward (C values, on the host).

r and d are constants for the gradient, so the backward is batch norm's with
the weight γ·r, and dγ is formed from batch norm's two sums.  With ``r = 1``
and ``d = 0`` both reduce to batch norm's bit for bit (``γ·1 = γ``,
``1·S + 0·P = S``).  The forward finalize lives in the kernels
(:mod:`numbabn.cpu.renorm`, :mod:`numbabn.cuda.renorm`).
"""
import numpy as np


def effective_weight(r, weight):
    r"""The weight of batch norm's backward that renormalization's equals: :math:`\gamma r`
    (``weight`` of None means 1)."""
    return r if weight is None else np.asarray(weight, np.float64) * r


def weight_gradient(sum_dy_xhat, sum_dy, r, d):
    r""":math:`\partial L/\partial\gamma = \sum dy\,(\hat x_B r + d)
    = r\sum dy\,\hat x_B + d\sum dy`."""
    return r * sum_dy_xhat + d * sum_dy

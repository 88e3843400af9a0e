"""Scratch arrays on the stack of the compiled function that asks for them.

The lane accumulators of the row reductions (:mod:`numbabn.cpu.rows`) are
small float64 arrays updated in every iteration of a hot loop.  Allocated with
``np.empty`` they live on the heap, where LLVM cannot tell them apart from the
data being read, so every iteration loads them, adds and stores them back, and
the next iteration waits for that store: layer norm's backward spent about
0.7 cycles per element in its sums from L1, about twice the arithmetic.  On
the stack of the function (an ``alloca``), nothing else can point at them, and
LLVM keeps them in vector registers for the whole loop.

The array is valid while the function that called :func:`stack_empty` runs:
never return it or keep it.  Callers that Numba inlines (``inline="always"``)
share their caller's frame, so the rule applies to the outermost of them.
"""
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def stack_empty(typingctx, count):
    """An uninitialised float64 array of ``count`` values (a literal integer) on the
    calling function's stack; the allocation sits in the function's entry block,
    so a call inside a loop reuses one slot."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    n = count.literal_value
    array_type = types.Array(types.float64, 1, "C")

    def codegen(context, builder, signature, args):
        data = cgutils.alloca_once(builder, context.get_value_type(types.float64), size=n)
        array = context.make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, 8)
        context.populate_array(array, data=data, shape=[context.get_constant(types.intp, n)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(count), codegen

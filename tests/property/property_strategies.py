"""Hypothesis strategies shared by the property tests: odd shapes, dtypes and values.

Every array strategy draws a shape (0-size axes and 1-pixel images included), a dtype among uint8, int16,
float16, float32, float64 and bool, and values that are ordinary, constant, huge, negative, NaN or +-Inf.
"""

from __future__ import annotations

import re

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = (np.uint8, np.int16, np.float16, np.float32, np.float64, np.bool_)


def elements(dtype: np.dtype, finite: bool) -> st.SearchStrategy:
    """Values of ``dtype``: the full range (huge and negative included), NaN and +-Inf unless ``finite``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return st.floats(
            width=8 * dtype.itemsize, allow_nan=not finite, allow_infinity=not finite, allow_subnormal=False
        )
    return hnp.from_dtype(dtype)


@st.composite
def arrays(
    draw: st.DrawFn,
    ndims: tuple[int, ...] = (1, 2, 3, 4, 5),
    max_side: int = 6,
    min_side: int = 0,
    dtypes: tuple = DTYPES,
    finite: bool = False,
) -> np.ndarray:
    """An array of ``len(shape)`` in ``ndims``; a third of the draws are constant (one value everywhere)."""
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if draw(st.integers(0, 2)) == 0:
        return np.full(shape, draw(elements(dtype, finite)), dtype=dtype)
    return draw(hnp.arrays(dtype, shape, elements=elements(dtype, finite)))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_KEYWORDS = ("NaN", "Inf", "infinite", "constant", "empty", "dtype")


def names_offender(err: Exception, array: np.ndarray | None = None, *values: object) -> bool:
    """Whether ``err``'s message names what is wrong: the array's shape, its dtype, a NaN/Inf/constant/empty
    problem, one of its values (up to sign, 3 significant digits), or one of ``values`` (an argument)."""
    text = str(err)
    if any(str(v) in text for v in values) or any(word in text for word in _KEYWORDS):
        return True
    if array is None:
        return False
    array = np.asarray(array)
    if str(tuple(array.shape)) in text or str(array.dtype) in text:
        return True
    if array.size and np.isfinite(array.astype(np.float64)).all():
        present = np.unique(np.abs(array.astype(np.float64)))[:1000]  # the values, up to sign
        found = np.abs([float(m) for m in _NUMBER.findall(text)])
        return bool(found.size) and bool(np.isclose(found[:, None], present[None, :], rtol=1e-3, atol=0).any())
    return False


def plausible(
    ndims: tuple[int, ...],
    low: float,
    high: float,
    first: tuple[int, ...] = (1,),
    max_side: int = 6,
    dtypes: tuple = (np.float32, np.float64),
) -> st.SearchStrategy:
    """Arrays a transform should accept: leading axis in ``first``, other sides 1..``max_side``, finite values
    in [``low``, ``high``] (mixed with random odd arrays by ``st.one_of`` in the tests, so both paths run)."""

    @st.composite
    def draw_array(draw: st.DrawFn) -> np.ndarray:
        ndim = draw(st.sampled_from(ndims))
        sides = draw(st.lists(st.integers(1, max_side), min_size=ndim - 1, max_size=ndim - 1))
        shape = (draw(st.sampled_from(first)), *sides)
        dtype = np.dtype(draw(st.sampled_from(dtypes)))
        if dtype.kind == "f":
            width = 8 * dtype.itemsize
            values = st.floats(float(dtype.type(low)), float(dtype.type(high)), width=width)
        else:
            values = st.integers(int(low), int(high))
        return draw(hnp.arrays(dtype, shape, elements=values))

    return draw_array()

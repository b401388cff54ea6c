"""What a ``PostIndex`` accepts: vectors (unit float32 rows), ids (one type), ``k`` and ``rescore``;
each check raises ValidationError naming the argument, the value given and the fix."""
from __future__ import annotations

import numpy as np

from ..errors import ValidationError

UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed on input rows


def as_vectors(vectors, dim: int | None, name: str = "vectors") -> np.ndarray:
    """``vectors`` (n, dim) or (dim,) as C-contiguous float32 (n, dim), checked: floating, finite, unit
    L2 rows; ``dim`` None: any width. ``name``: the argument the errors name."""
    v = np.asarray(vectors)
    if v.shape == (0,):  # [] has no width: read as one row of 0 values, it was "row 0 has norm 0"
        raise ValidationError(f"`{name}` must have shape (n, {'dim' if dim is None else dim}). Given: (0,), no rows "
                              f"and no width. Fix: np.empty((0, {'dim' if dim is None else dim}), np.float32) for "
                              "none, or give the vectors.")
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or (dim is not None and v.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValidationError(f"`{name}` must have shape {want}. Given: {v.shape}.")
    if not np.issubdtype(v.dtype, np.floating):
        raise ValidationError(f"`{name}` must be float32. Given: {v.dtype}.")
    v = np.ascontiguousarray(v, dtype=np.float32)
    bad = first_not_unit(v)
    if bad is not None and np.isnan(bad[1]):
        raise ValidationError(f"`{name}` must be finite. Given: NaN or inf in row {bad[0]}.")
    if bad is not None:
        raise ValidationError(
            f"`{name}` must be unit L2 rows (the encoder's output). Given: row {bad[0]} has norm "
            f"{bad[1]:.4g}. Fix: v / np.linalg.norm(v, axis=1, keepdims=True).")
    return v


def first_not_unit(v: np.ndarray) -> tuple[int, float] | None:
    """(row, its L2 norm; NaN for a row holding NaN or inf) of the first row of float32 (n, dim) ``v`` that
    is not a finite unit vector (``UNIT_TOLERANCE``), else None."""
    finite = np.isfinite(v).all(1)
    if not finite.all():  # NaN slips through the norm check below (NaN > tol is False)
        return int(np.flatnonzero(~finite)[0]), float("nan")
    norms = np.linalg.norm(v, axis=1)
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
    return (int(off[0]), float(norms[off[0]])) if len(off) else None


def check_k(k) -> None:
    """``k``, how many hits: a positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"`k` must be a positive int. Given: {k!r}.")


def check_positive(name: str, value, fix: str) -> int:
    """A search or build parameter ``name`` (``nprobe``, ``ef_search``, ``nlist``) as a positive int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValidationError(f"`{name}` must be a positive int. Given: {value!r}. Fix: {fix}.")
    return int(value)


def as_ids(ids, first) -> list:
    """``ids`` as a list of Python ints or of strs (numpy scalars converted), all of ``first``'s
    type (the index's first id; None: ``ids[0]``'s). Raises ValidationError naming the first
    other id: one type per index, as ``ids.parquet`` stores one Arrow type."""
    out, where = [], "the index's ids"
    for i, pid in enumerate(ids):
        if isinstance(pid, (int, np.integer)) and not isinstance(pid, bool):
            pid = int(pid)
            if not -(1 << 63) <= pid < 1 << 63:
                raise ValidationError(f"`ids[{i}]` must fit in int64 (ids.parquet's type). Given: {pid}. "
                                      "Fix: str ids.")
        elif isinstance(pid, str):
            pid = str(pid)
        else:
            raise ValidationError(f"`ids[{i}]` must be an int or str. Given: {pid!r} ({type(pid).__name__}).")
        if first is None:
            first, where = pid, "`ids[0]`"
        if type(pid) is not type(first):
            raise ValidationError(f"`ids[{i}]` must be a{'n' if type(first) is int else ''} {type(first).__name__} "
                                  f"like {where} (one id type per index). Given: {pid!r} ({type(pid).__name__}). "
                                  f"Fix: give every id as {type(first).__name__}.")
        out.append(pid)
    return out


def check_rescore(rescore, binary: bool) -> int:
    """``rescore`` as an int >= 0; > 0 only for a ``binary`` index."""
    if isinstance(rescore, bool) or not isinstance(rescore, (int, np.integer)) or rescore < 0:
        raise ValidationError(f"`rescore` must be an int >= 0 (0: no rescoring; m: re-rank the k*m nearest by "
                              f"Hamming with the float vectors). Given: {rescore!r}.")
    if rescore and not binary:
        raise ValidationError(f"`rescore` applies to a binary index only (a float index ranks by exact cosine "
                              f"already). Given: rescore={rescore} with binary=False. Fix: binary=True, or rescore=0.")
    return int(rescore)

"""Losses on distances and margins: Euclidean (Caffe's EuclideanLoss), hinge (HingeLoss, L1 or
L2) and contrastive (ContrastiveLoss, both versions). Conventions as ``netforge.ops.loss``:
forward kernels take ``out`` (a 0-d device array) or return a float; backward kernels take
``loss_weight`` (a number or the top diff's 0-d array) and assign the bottom gradients.

    euclidean_loss_forward(a, b, diff) -> float
    euclidean_loss_backward(diff, da, db, *, loss_weight)
    hinge_forward(x, label, margins, *, norm, ws) -> float
    hinge_backward(margins, label, dx, *, norm, loss_weight, ws)
    contrastive_workspace_shapes(num, dtype) -> spec
    contrastive_forward(a, b, similar, diff, dist_sq, *, margin, legacy, ws) -> float
    contrastive_backward(diff, dist_sq, similar, da, db, *, margin, legacy, loss_weight, ws)
"""

from __future__ import annotations

import numpy

from netforge.ops.loss_terms import (
    finish_loss,
    flat_label_index,
    gather_into,
    gradient_scale,
    label_rows,
)
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, scratch, view_as

# --------------------------------------------------------------------------- euclidean


def euclidean_loss_forward(a: Array, b: Array, diff: Array, *,
                           out: Array | None = None) -> float | Array:
    """loss = Σ (a − b)² / (2N), N = a.shape[0]; ``diff`` (a's shape) keeps a − b.

    ``b`` may have another shape with a's count (e.g. (N, C) against (N, C, 1, 1)).
    """
    xp = get_array_module(a)
    xp.subtract(a, view_as(b, a.shape), out=diff)
    flat = view_as(diff, (diff.size,))
    return finish_loss(xp, xp.dot(flat, flat), 2.0 * a.shape[0], out)


def euclidean_loss_backward(diff: Array, da: Array | None, db: Array | None, *,
                            loss_weight: float = 1.0) -> None:
    """da = loss_weight · diff / N and db = −da: the gradient reaches both bottoms."""
    xp = get_array_module(diff)
    scale = gradient_scale(xp, loss_weight, diff.shape[0], diff.dtype)
    if da is not None:
        xp.multiply(diff, scale, out=view_as(da, diff.shape))
    if db is not None:
        xp.multiply(diff, -scale, out=view_as(db, diff.shape))


# --------------------------------------------------------------------------- hinge


def _hinge_signs(xp, label: Array, a: Array, ws: dict | None) -> Array:
    """Negate, in place, the label's entry of each row of ``a`` (N, dim); return the flat
    indices of those entries."""
    n, dim = a.shape
    lab, _, _ = label_rows(xp, label, n, dim, 1, None, ws)
    idx = flat_label_index(xp, lab, n, dim, 1, ws)
    flat = view_as(a, (a.size,))
    picked = scratch(ws, "picked", (n, 1), a.dtype, xp)
    gather_into(xp, flat, idx, picked)
    xp.negative(picked, out=picked)
    if xp is numpy:
        xp.put(flat, idx, picked, mode="clip")
    else:
        flat[idx] = picked
    return idx


def hinge_forward(x: Array, label: Array, margins: Array, *, norm: str = "L1",
                  ws: dict | None = None, out: Array | None = None) -> float | Array:
    """One-vs-all hinge: t = max(0, 1 + s·x) with s = −1 at the label, +1 elsewhere;
    loss = Σ t / N (L1) or Σ t² / N (L2).

    Args:
        x: scores (N, ...), classes = all non-batch entries; label: N values.
        margins: x's shape, assigned t (kept for backward).
        ws: from ``loss_workspace_shapes((N, dim))``.
    """
    xp = get_array_module(x)
    n = x.shape[0]
    m2 = view_as(margins, (n, x.size // n))
    xp.copyto(m2, view_as(x, m2.shape))
    _hinge_signs(xp, label, m2, ws)
    xp.add(m2, 1, out=m2)
    xp.maximum(m2, 0, out=m2)
    flat = view_as(margins, (margins.size,))
    if norm == "L2":
        return finish_loss(xp, xp.dot(flat, flat), float(n), out)
    if norm != "L1":
        raise ValueError(f"norm must be L1 or L2, got {norm!r}")
    return finish_loss(xp, flat.sum(), float(n), out)


def hinge_backward(margins: Array, label: Array, dx: Array, *, norm: str = "L1",
                   loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """dx = s · [t > 0] · loss_weight / N (L1) or s · 2t · loss_weight / N (L2)."""
    xp = get_array_module(margins)
    n = margins.shape[0]
    dx2 = view_as(dx, (n, margins.size // n))
    xp.copyto(dx2, view_as(margins, dx2.shape))
    _hinge_signs(xp, label, dx2, ws)
    if norm == "L1":
        xp.sign(dx2, out=dx2)
        xp.multiply(dx2, gradient_scale(xp, loss_weight, float(n), dx.dtype), out=dx2)
    else:  # 2·w/n, as w/(n/2): the same correctly rounded quotient
        xp.multiply(dx2, gradient_scale(xp, loss_weight, n / 2.0, dx.dtype), out=dx2)


# --------------------------------------------------------------------------- contrastive


# Caffe adds this to the distance in the non-legacy gradient (so the gradient is finite at
# d = 0); the gradient is therefore not exactly that of the loss.
CONTRASTIVE_EPS = 1e-4


def contrastive_workspace_shapes(num: int, dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    dt = numpy.dtype(dtype)
    return {"term": ((num,), dt), "similar": ((num,), numpy.dtype(numpy.intp))}


def _similar(xp, similar: Array, n: int, ws: dict | None) -> Array:
    """Pair labels truncated to int, as Caffe's static_cast: non-zero means similar."""
    out = scratch(ws, "similar", (n,), numpy.intp, xp)
    xp.copyto(out, view_as(similar, (n,)), casting="unsafe")
    return out


def contrastive_forward(a: Array, b: Array, similar: Array, diff: Array, dist_sq: Array, *,
                        margin: float = 1.0, legacy: bool = False,
                        ws: dict | None = None, out: Array | None = None) -> float | Array:
    """loss = Σ_i [y_i d_i² + (1 − y_i) · max(margin − d_i, 0)²] / (2N), d = ‖a_i − b_i‖;
    the legacy version uses max(margin − d_i², 0) for dissimilar pairs.

    Args:
        a, b: (N, C, ...) features; similar: N pair labels (1 similar, 0 dissimilar).
        diff: a's shape, assigned a − b; dist_sq: (N,), assigned d².
    """
    xp = get_array_module(a)
    n = a.shape[0]
    d2 = view_as(diff, (n, a.size // n))
    xp.subtract(view_as(a, d2.shape), view_as(b, d2.shape), out=d2)
    xp.einsum("ij,ij->i", d2, d2, out=dist_sq) if xp is numpy else xp.sum(
        d2 * d2, axis=1, out=dist_sq)
    sim = _similar(xp, similar, n, ws)
    term = scratch(ws, "term", (n,), a.dtype, xp)
    if legacy:
        xp.subtract(margin, dist_sq, out=term)
    else:
        xp.sqrt(dist_sq, out=term)
        xp.subtract(margin, term, out=term)
    xp.maximum(term, 0, out=term)
    if not legacy:
        xp.multiply(term, term, out=term)
    is_sim = sim != 0  # N booleans
    xp.copyto(term, dist_sq, where=is_sim)  # no boolean indexing: its size would sync
    return finish_loss(xp, term.sum(), 2.0 * n, out)


def contrastive_backward(diff: Array, dist_sq: Array, similar: Array, da: Array | None,
                         db: Array | None, *, margin: float = 1.0, legacy: bool = False,
                         loss_weight: float = 1.0, ws: dict | None = None) -> None:
    """Caffe's gradient: da_i = c_i · (a_i − b_i), db_i = −da_i, with c_i = loss_weight/N for
    similar pairs, −loss_weight/N · [margin − d² > 0] (legacy) or −loss_weight/N ·
    (margin − d)/(d + 1e-4) · [margin − d > 0] for dissimilar ones."""
    xp = get_array_module(diff)
    n = diff.shape[0]
    alpha = gradient_scale(xp, loss_weight, float(n), diff.dtype)
    sim = _similar(xp, similar, n, ws)
    coef = scratch(ws, "term", (n,), diff.dtype, xp)
    if legacy:
        xp.subtract(margin, dist_sq, out=coef)
        xp.greater(coef, 0, out=coef, casting="unsafe")
        xp.multiply(coef, -alpha, out=coef)
    else:
        xp.sqrt(dist_sq, out=coef)
        mdist = margin - coef  # N values; the kernel's only small temporaries
        xp.add(coef, CONTRASTIVE_EPS, out=coef)
        xp.divide(mdist, coef, out=coef)
        xp.multiply(coef, -alpha, out=coef)
        xp.copyto(coef, 0, where=mdist <= 0)
    is_sim = sim != 0
    xp.copyto(coef, alpha, where=is_sim)
    d2 = view_as(diff, (n, diff.size // n))
    if da is not None:
        xp.multiply(d2, coef[:, None], out=view_as(da, d2.shape))
    if db is not None:
        xp.multiply(d2, coef[:, None], out=view_as(db, d2.shape))
        xp.negative(db, out=db)

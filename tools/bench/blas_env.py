"""The BLAS settings the benchmarks run under, and which kernels numpy's BLAS picked.

This environment exports OPENBLAS_CORETYPE (pinning an older kernel family, e.g. Haswell's
AVX2 on a newer CPU) and OPENBLAS_L2_SIZE; a user's machine has neither. The benches run
both contenders under each setting they are asked for:

    unset         both variables removed: OpenBLAS detects the CPU itself, as for users
    environment   as inherited (the pinned kernels)

``describe()`` reports, from inside a process, the BLAS libraries loaded there as
threadpoolctl sees them (library, version, kernel family, threads), e.g.
``openblas 0.3.29 Zen 2 threads``.
"""

from __future__ import annotations

import os

PINNED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SETTINGS = ("unset", "environment")


def environment(setting: str, base: dict | None = None) -> dict:
    """A copy of ``base`` (default os.environ) for the BLAS ``setting``."""
    if setting not in SETTINGS:
        raise SystemExit(f"unknown BLAS setting {setting!r}: use {', '.join(SETTINGS)}")
    env = dict(os.environ if base is None else base)
    if setting == "unset":
        for name in PINNED:
            env.pop(name, None)
    return env


def label(setting: str, env: dict) -> str:
    """What the setting meant, e.g. ``unset`` or ``OPENBLAS_CORETYPE=Haswell``."""
    pinned = [f"{name}={env[name]}" for name in PINNED if name in env]
    return f"{setting} ({', '.join(pinned) or 'nothing pinned'})"


def describe() -> str:
    """The BLAS libraries of this process (numpy's, torch's), as threadpoolctl reports."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl)"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        name = os.path.basename(info.get("filepath", ""))
        parts.append(f"{info.get('internal_api')} {info.get('version')} "
                     f"{info.get('architecture', '?')} {info.get('num_threads')} threads "
                     f"({name})")
    return "; ".join(parts) or "no BLAS found"

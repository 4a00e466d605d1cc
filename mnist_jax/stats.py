"""Statistics over seeds: mean, std, Student-t confidence intervals, Welch's t-test."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def summary(values, confidence: float = 0.95) -> dict:
    """{n, mean, std (ddof=1), ci_low, ci_high} of the finite values (NaN ones are dropped).

    The interval is mean -/+ t_{(1+c)/2, n-1} * std / sqrt(n); with one value it is that value.
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
    return {"n": int(n), "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    """`value * scale` formatted with `spec`, or 'n/a' for a missing (None or NaN) value."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return format(scale * value, spec)


def describe(summary: dict, scale: float = 100.0, unit: str = " %") -> str:
    """'97.02 % ± 0.21' (mean ± std of a `summary`), '97.02 % (one run: no spread)', or a note
    that every run diverged."""
    if not summary["n"]:
        return "n/a (every run diverged)"
    if summary["n"] == 1:
        return f"{scale * summary['mean']:.2f}{unit} (one run: no spread)"
    return f"{scale * summary['mean']:.2f}{unit} ± {scale * summary['std']:.2f}"


def welch(a, b) -> dict:
    """Welch's unequal-variance t-test of mean(a) == mean(b): {t, dof, p_value}."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return {"t": None, "dof": None, "p_value": None}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        same = bool(a.mean() == b.mean())
        return {"t": 0.0 if same else float("inf"), "dof": None, "p_value": 1.0 if same else 0.0}
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return {"t": float(t), "dof": float(dof), "p_value": float(2 * sps.t.sf(abs(t), dof))}

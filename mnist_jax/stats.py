"""Statistics over seeds: mean, std, Student-t confidence intervals, Welch's t-test, the CI of a
std, how many seeds a difference needs, and P(A > B) with its CI. Every function takes plain
sequences of per-run values (a runs table's column), NaN (diverged) runs dropped."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq


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


def _finite(values) -> np.ndarray:
    x = np.asarray(values, np.float64).ravel()
    return x[np.isfinite(x)]


def std_ci(values, confidence: float = 0.95) -> dict:
    """{n, std (ddof=1), ci_low, ci_high}: the chi-square interval of the standard deviation,
    s * sqrt((n-1) / chi2_{(1+c)/2, n-1}) to s * sqrt((n-1) / chi2_{(1-c)/2, n-1}) (normal runs)."""
    x = _finite(values)
    n = x.size
    if n < 2:
        return {"n": int(n), "std": None, "ci_low": None, "ci_high": None}
    s = float(x.std(ddof=1))
    lo = s * np.sqrt((n - 1) / sps.chi2.ppf(0.5 + confidence / 2, n - 1))
    hi = s * np.sqrt((n - 1) / sps.chi2.ppf(0.5 - confidence / 2, n - 1))
    return {"n": int(n), "std": s, "ci_low": float(lo), "ci_high": float(hi)}


def t_test_power(sigma: float, delta: float, n: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (n runs per arm, common std sigma) to detect a
    true difference of means delta: P(|T| > t_{1-alpha/2, 2n-2}) with T noncentral t."""
    dof = 2 * n - 2
    ncp = abs(delta) / (sigma * np.sqrt(2.0 / n))
    crit = sps.t.ppf(1 - alpha / 2, dof)
    # scipy's noncentral t gives NaN for a far tail (ncp in the tens and up); it is 0 to float precision there
    wrong_side = sps.nct.cdf(-crit, dof, ncp)
    return float(sps.nct.sf(crit, dof, ncp) + (wrong_side if np.isfinite(wrong_side) else 0.0))


def seeds_needed(sigma: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Runs per arm for a two-sided two-sample t-test at level alpha to detect a difference of
    means delta with the given power, when runs spread with std sigma (the smallest n >= 2).

    The normal approximation n = 2 (z_{1-alpha/2} + z_power)^2 sigma^2 / delta^2 starts the search;
    the noncentral t distribution decides (delta = sigma: 15.7 by the approximation, 17 exactly).
    """
    if sigma <= 0:
        return 2
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    n = max(2, int(np.floor(2 * (z * sigma / delta) ** 2)) - 1)
    while t_test_power(sigma, delta, n, alpha) < power:
        n += 1
    return n


def detectable_difference(sigma: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest difference of means a two-sided two-sample t-test with n runs per arm detects
    with the given power at level alpha, when runs spread with std sigma (None for n < 2)."""
    if n < 2:
        return None
    if sigma <= 0:
        return 0.0
    hi = sigma
    while t_test_power(sigma, hi, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda d: t_test_power(sigma, d, n, alpha) - power, 0.0, hi, xtol=1e-12 * hi))


def prob_greater(a, b, confidence: float = 0.95) -> dict:
    """P(A > B): the chance that a run of A scores above a run of B (ties count 1/2), the
    Mann-Whitney U / (n_a n_b) or common-language effect size, with a Wilson-style score interval
    (Newcombe 2006, method 5: Hanley-McNeil variance with n_a - 1, n_b - 1 replaced by their
    mean; it stays informative when every A beats every B). {p, ci_low, ci_high, n_a, n_b}."""
    a, b = _finite(a), _finite(b)
    m, n = a.size, b.size
    if m == 0 or n == 0:
        return {"p": None, "ci_low": None, "ci_high": None, "n_a": int(m), "n_b": int(n)}
    diff = a[:, None] - b[None, :]
    p = float(((diff > 0) + 0.5 * (diff == 0)).mean())
    z2 = sps.norm.ppf(0.5 + confidence / 2) ** 2
    big = (m + n) / 2 - 1

    def excess(theta):  # < 0 inside the interval
        var = theta * (1 - theta) / (m * n) * (1 + big * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        return (p - theta) ** 2 - z2 * var

    eps = 1e-12  # the estimate itself is always inside (excess < 0 next to it, also at 0 and 1)
    lo = brentq(excess, 0.0, p - eps) if p > eps else 0.0
    hi = brentq(excess, p + eps, 1.0) if p < 1 - eps else 1.0
    return {"p": p, "ci_low": float(lo), "ci_high": float(hi), "n_a": int(m), "n_b": int(n)}


def pairwise_disagreement(predictions, confidence: float = 0.95) -> dict:
    """Mean over pairs of runs of the share of examples two runs label differently (Summers &
    Dinneen's disagreement), for predictions (runs, examples); CI by the jackknife over runs
    (Student t, runs - 1 dof; needs 3 runs). {n, mean, ci_low, ci_high}."""
    p = np.asarray(predictions)
    n = p.shape[0]
    if n < 2:
        return {"n": int(n), "mean": None, "ci_low": None, "ci_high": None}
    d = np.array([[np.mean(p[i] != p[j]) for j in range(n)] for i in range(n)])
    pairs = n * (n - 1) / 2
    total = np.triu(d, 1).sum()
    mean = float(total / pairs)
    if n < 3:
        return {"n": int(n), "mean": mean, "ci_low": None, "ci_high": None}
    loo = (total - d.sum(axis=1)) / ((n - 1) * (n - 2) / 2)  # every pair without run i
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * se)
    return {"n": int(n), "mean": mean, "ci_low": max(0.0, mean - half), "ci_high": mean + half}


def bootstrap_mean_std(values, resamples: int = 2000, seed: int = 0) -> float:
    """The std of the mean of `values` over bootstrap resamples (with replacement, same size):
    e.g. how much one model's test accuracy moves with the sample of test images alone."""
    x = _finite(values)
    rng = np.random.default_rng(seed)
    means = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(resamples)])
    return float(means.std(ddof=1))

"""Statistics over seeds: mean, std, Student-t confidence intervals, Welch's t-test, the CI of a
std, how many seeds a difference needs, and P(A > B) with its CI. Every function takes plain
sequences of per-run values (a runs table's column), NaN (diverged) runs dropped.

On a trained grid's outputs (per-run logits or predictions, `mnist_jax.grid.TrainedGrid`): the
ensemble of the runs and its accuracy against its size, how often a selection would come out the
same with other seeds (`selection_stability`), and which examples flip between runs (`flips`)."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
from scipy import special

# Quantiles and tails as scipy.stats computes them (its t, normal and chi-square distributions
# call these functions of scipy.special), without importing scipy.stats, which takes seconds:
# every command pays its imports. The noncentral t and the root finder come from scipy where used.


def _t_ppf(q, dof):
    return special.stdtrit(dof, q)


def _t_sf(x, dof):
    return special.stdtr(dof, -x)


def _norm_ppf(q):
    return special.ndtri(q)


def _chi2_ppf(q, dof):
    return 2 * special.gammaincinv(dof / 2, q)


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
    half = float(_t_ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
    return {"n": int(n), "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The Wilson score interval (low, high) of a binomial share successes / n ((None, None) for n = 0)."""
    if n <= 0:
        return None, None
    z = float(_norm_ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


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
    return {"t": float(t), "dof": float(dof), "p_value": float(2 * _t_sf(abs(t), dof))}


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
    lo = s * np.sqrt((n - 1) / _chi2_ppf(0.5 + confidence / 2, n - 1))
    hi = s * np.sqrt((n - 1) / _chi2_ppf(0.5 - confidence / 2, n - 1))
    return {"n": int(n), "std": s, "ci_low": float(lo), "ci_high": float(hi)}


def t_test_power(sigma: float, delta: float, n: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (n runs per arm, common std sigma) to detect a
    true difference of means delta: P(|T| > t_{1-alpha/2, 2n-2}) with T noncentral t."""
    from scipy import stats as sps

    dof = 2 * n - 2
    ncp = abs(delta) / (sigma * np.sqrt(2.0 / n))
    crit = _t_ppf(1 - alpha / 2, dof)
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
    z = _norm_ppf(1 - alpha / 2) + _norm_ppf(power)
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
    from scipy.optimize import brentq

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
    from scipy.optimize import brentq

    diff = a[:, None] - b[None, :]
    p = float(((diff > 0) + 0.5 * (diff == 0)).mean())
    z2 = _norm_ppf(0.5 + confidence / 2) ** 2
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
    half = float(_t_ppf(0.5 + confidence / 2, n - 1) * se)
    return {"n": int(n), "mean": mean, "ci_low": max(0.0, mean - half), "ci_high": mean + half}


def bootstrap_mean_std(values, resamples: int = 2000, seed: int = 0) -> float:
    """The std of the mean of `values` over bootstrap resamples (with replacement, same size):
    e.g. how much one model's test accuracy moves with the sample of test images alone."""
    x = _finite(values)
    rng = np.random.default_rng(seed)
    means = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(resamples)])
    return float(means.std(ddof=1))


# --- Ensembles of runs, how stable a selection is, and which examples flip ---
# These take a trained grid's outputs (`mnist_jax.grid.TrainedGrid`): logits (runs, N, C) or
# predicted labels (runs, N), and the labels (N,).

ECE_BINS = 15


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Softmax of `logits` along `axis`, in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of class probabilities (N, C): the confidence (top probability)
    in `bins` equal-width bins (lo, hi] of [0, 1], sum over bins of (share of examples) x
    |accuracy - mean confidence| (Guo et al. 2017)."""
    p = np.asarray(probs, np.float64)
    conf = p.max(axis=-1)
    right = (p.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.bincount(which, right, bins) - np.bincount(which, conf, bins)  # sum of (right - confidence) per bin
    return float(np.abs(gap).sum() / max(count.sum(), 1))


def scores(probs, labels, bins: int = ECE_BINS) -> dict:
    """{accuracy, nll, ece} of class probabilities (N, C): the share of argmax labels that are
    right, the mean -log p(label), and the expected calibration error (`calibration_error`)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels)
    picked = p[np.arange(y.size), y]
    with np.errstate(divide="ignore"):
        nll = float(-np.log(picked).mean())
    return {"accuracy": float((p.argmax(axis=-1) == y).mean()), "nll": nll, "ece": calibration_error(p, y, bins)}


def _subset_probs(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The ensembles (M, N, C) of the subsets of runs `masks` (M, S) bool: each subset's runs'
    probabilities (S, N, C) averaged. The full ensemble is the subset of every run, so both are
    computed by the same arithmetic."""
    weights = masks / masks.sum(axis=1, keepdims=True)
    return (weights @ probs.reshape(probs.shape[0], -1)).reshape(len(masks), *probs.shape[1:])


def ensemble(logits, labels, bins: int = ECE_BINS, confidence: float = 0.95) -> dict:
    """The ensemble of the runs of `logits` (S, N, C): their softmax averaged over runs, with its
    accuracy, NLL and ECE (`scores`), against the members' (`summary` over runs of each score).
    {runs, ensemble: {accuracy, nll, ece}, members: {accuracy, nll, ece: summary}, gain: ensemble
    minus mean member of each score}."""
    probs = softmax(logits)
    s = probs.shape[0]
    whole = scores(_subset_probs(probs, np.ones((1, s), bool))[0], labels, bins)
    each = [scores(p, labels, bins) for p in probs]
    members = {k: summary([e[k] for e in each], confidence) for k in whole}
    return {"runs": int(s), "ensemble": whole, "members": members,
            "gain": {k: whole[k] - members[k]["mean"] for k in whole}}


def _subsets(s: int, k: int, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(masks (M, s) bool, exhaustive): every subset of size k of s runs when there are at most
    `limit`, else `limit` random ones (each drawn uniformly, repeats allowed)."""
    if comb(s, k) <= limit:
        masks = np.zeros((comb(s, k), s), bool)
        for i, members in enumerate(itertools.combinations(range(s), k)):
            masks[i, list(members)] = True
        return masks, True
    masks = np.zeros((limit, s), bool)
    for i in range(limit):
        masks[i, rng.choice(s, k, replace=False)] = True
    return masks, False


def ensemble_sizes(s: int, most: int = 32) -> list[int]:
    """The ensemble sizes k that `ensemble_by_size` evaluates of s runs: every k = 1..s when
    s <= `most`, else `most` of them spread evenly on a log scale, 1 and s among them."""
    if s <= most:
        return list(range(1, s + 1))
    return sorted({int(k) for k in np.round(np.geomspace(1, s, most))} | {1, s})


def ensemble_by_size(logits, labels, subsets: int = 200, seed: int = 0, confidence: float = 0.95,
                     chunk: int = 32) -> list[dict]:
    """Test accuracy of ensembles of k of the S runs of `logits` (S, N, C), k = 1..S (at most 32
    sizes: `ensemble_sizes`): per k, the mean over subsets of size k (all of them when there are at
    most `subsets`, else `subsets` random ones from a numpy Generator seeded with `seed`) and the
    percentile interval of the subsets' accuracies at `confidence`. k = S is the full ensemble
    (`ensemble`). [{k, subsets, exhaustive, mean, ci_low, ci_high}]."""
    probs = softmax(logits)
    y = np.asarray(labels)
    s = probs.shape[0]
    rng = np.random.default_rng(seed)
    out = []
    for k in ensemble_sizes(s):
        masks, exhaustive = _subsets(s, k, subsets, rng)
        acc = np.concatenate([(_subset_probs(probs, masks[i:i + chunk]).argmax(axis=-1) == y).mean(axis=1)
                              for i in range(0, len(masks), chunk)])
        lo, hi = np.percentile(acc, [50 * (1 - confidence), 50 * (1 + confidence)])
        out.append({"k": k, "subsets": int(len(masks)), "exhaustive": exhaustive, "mean": float(acc.mean()),
                    "ci_low": float(lo), "ci_high": float(hi)})
    return out


def chosen_index(means: np.ndarray) -> np.ndarray:
    """The index of the highest mean along axis 0 (the first on ties, as `np.argmax` and so
    experiments.sweep choose), a value without runs (NaN) never ahead of one with runs."""
    return np.argmax(np.where(np.isnan(means), -np.inf, means), axis=0)


def _resampled_choice(groups: list[np.ndarray], m: int | None, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The chosen index in each of `resamples` bootstrap resamples: every group's runs resampled
    with replacement (m of them, or as many as it has when m is None), their means compared."""
    means = np.full((len(groups), resamples), np.nan)
    for i, g in enumerate(groups):
        if g.size:
            means[i] = g[rng.integers(0, g.size, (resamples, m or g.size))].mean(axis=1)
    return chosen_index(means)


def selection_stability(groups, resamples: int = 2000, seed: int = 0, target: float = 0.9,
                        max_factor: int = 4) -> dict:
    """How often the value with the highest mean (e.g. validation accuracy) would be chosen with
    other seeds: `groups`, one sequence of per-seed scores per value (NaN = diverged, dropped).

    p_chosen: per value, the share of `resamples` bootstrap resamples (each value's seeds drawn S
    of S with replacement, numpy Generator seeded with `seed`) in which it has the highest mean
    (the first on ties); they sum to 1. seeds_for_target: the smallest number m of seeds per value
    (2 .. max_factor x the most seeds of a value, drawn with replacement) at which one value is
    chosen in at least `target` of the resamples, or None (with `largest_tried`), and that value;
    `curve` gives that value's share for each m tried.
    {resamples, seed, chosen, p_chosen, most_chosen, seeds_for_target, target, chosen_value_at_target,
    largest_tried, curve: [{seeds, value, p}]}."""
    groups = [_finite(g) for g in groups]
    if not any(g.size for g in groups):
        return {"resamples": 0, "seed": seed, "chosen": None, "p_chosen": [None] * len(groups), "most_chosen": None,
                "seeds_for_target": None, "target": target, "chosen_value_at_target": None, "largest_tried": 0,
                "curve": []}
    rng = np.random.default_rng(seed)
    real = chosen_index(np.array([g.mean() if g.size else np.nan for g in groups]))
    counts = np.bincount(_resampled_choice(groups, None, resamples, rng), minlength=len(groups))
    p = counts / resamples
    largest = max_factor * max(g.size for g in groups)
    curve, found = [], None
    for m in range(2, largest + 1):
        share = np.bincount(_resampled_choice(groups, m, resamples, rng), minlength=len(groups)) / resamples
        best = int(np.argmax(share))
        curve.append({"seeds": m, "value": best, "p": float(share[best])})
        if share[best] >= target:
            found = curve[-1]
            break
    return {"resamples": int(resamples), "seed": seed, "chosen": int(real), "p_chosen": [float(v) for v in p],
            "most_chosen": int(np.argmax(p)), "target": target,
            "seeds_for_target": None if found is None else found["seeds"],
            "chosen_value_at_target": None if found is None else found["value"],
            "largest_tried": curve[-1]["seeds"] if curve else 0, "curve": curve}


def flip_fraction(predictions, labels) -> np.ndarray:
    """Per example (N,), the fraction of the runs of `predictions` (runs, N) that label it wrong."""
    return (np.asarray(predictions) != np.asarray(labels)[None, :]).mean(axis=0)


def flips(predictions, labels, top: int = 16, classes: int = 10, confidence: float = 0.95) -> dict:
    """Which examples the runs of `predictions` (runs, N) get wrong, and whether their
    disagreement tracks their error (Jiang et al. 2022: the expected disagreement of two runs
    approximates their test error).

    {runs, examples, wrong_in_runs (count of examples wrong in exactly j runs, j = 0..runs),
    never_wrong, always_wrong, unstable (right in some runs, wrong in others), most_unstable
    (the `top` examples whose flip fraction is nearest 1/2, then by index: {index, label,
    wrong_fraction, votes per class}), disagreement (`pairwise_disagreement`), test_error (`summary`
    of the runs' error), disagreement_over_error}."""
    p = np.asarray(predictions)
    y = np.asarray(labels)
    r, n = p.shape
    wrong = (p != y[None, :]).sum(axis=0)
    frac = wrong / r
    unstable = np.flatnonzero((wrong > 0) & (wrong < r))
    order = unstable[np.lexsort((unstable, np.abs(frac[unstable] - 0.5)))][:top]
    error = summary((p != y[None, :]).mean(axis=1), confidence)
    dis = pairwise_disagreement(p, confidence)
    ratio = None if dis["mean"] is None or not error["mean"] else dis["mean"] / error["mean"]
    return {"runs": int(r), "examples": int(n), "wrong_in_runs": np.bincount(wrong, minlength=r + 1).tolist(),
            "never_wrong": int((wrong == 0).sum()), "always_wrong": int((wrong == r).sum()), "unstable": int(unstable.size),
            "most_unstable": [{"index": int(i), "label": int(y[i]), "wrong_fraction": float(frac[i]),
                               "votes": np.bincount(p[:, i], minlength=classes).tolist()} for i in order],
            "disagreement": dis, "test_error": error, "disagreement_over_error": ratio}

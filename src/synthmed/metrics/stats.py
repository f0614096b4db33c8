"""Statistics over seeds: mean, std, 95% t-interval, and paired differences between policies on the same seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _t_quantile(df: int, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, df))


def summarize(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the t-distribution CI of the mean; with n = 1 std and CI are None."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    n = len(v)
    out: dict[str, Any] = {"n": n, "mean": float(v.mean()) if n else None, "std": None,
                           "ci_low": None, "ci_high": None, "ci_half_width": None, "level": level}
    if n >= 2:
        std = float(v.std(ddof=1))
        half = _t_quantile(n - 1, level) * std / math.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half, ci_half_width=half)
    else:
        out["note"] = "CI undefined (n=1)" if n == 1 else "no values"
    return out


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> dict[str, Any]:
    """Mean of a[s] - b[s] over the seeds s both have, with a t-interval on the differences and a paired t-test p."""
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None and not (math.isnan(a[s]) or math.isnan(b[s])))
    diffs = [a[s] - b[s] for s in seeds]
    out = summarize(diffs, level)
    out["seeds"] = seeds
    out["p_value"] = None
    if len(diffs) >= 2:
        std = out["std"]
        if std and std > 0:
            from scipy.stats import t

            stat = out["mean"] / (std / math.sqrt(len(diffs)))
            out["p_value"] = float(2 * t.sf(abs(stat), len(diffs) - 1))
        else:  # every seed gave the same difference: a t-test is undefined (not p = 0)
            out["p_value"] = None
            out["note"] = f"p undefined: all {len(diffs)} differences are equal ({out['mean']:+.4f})"
    return out

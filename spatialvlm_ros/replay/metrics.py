"""
How well a replayed reward stream matches a bag's ground truth.

Truth: the question asks "how far is the gripper from the target?", which the data engine
answers with the distance between the grasp point and the target's centroid, so distance errors
are measured against ``/ground_truth/distance/centre`` (``truth='centre'``); ``'surface'``
(grasp point to the target's surface) can be chosen instead. True success is judged on that
same distance (within ``success_threshold_m``), the one the estimator and the shaper's success
flag work on: a perfect estimator then scores precision and recall 1. (Judged on the surface
distance while the centre distance is estimated, contact with an object taller than about twice
the threshold could never be detected, however good the estimates.)

Per episode (:func:`episode_metrics`):

- ``numeric_share``: frames whose answer held a distance;
- ``mae_m`` / ``median_rel_error``: of the *raw* parsed distances (valid frames) against the
  truth; ``smoothed_mae_m`` / ``smoothed_median_rel_error``: of the smoothed distance (frames
  where the smoother had an estimate). Relative errors ``|pred - truth| / truth`` use frames
  with a positive truth;
- ``spearman`` / ``kendall_tau``: rank correlations of the reward with the true *negative*
  distance over frames with a finite reward (1: the reward orders frames exactly as closeness
  does; Kendall's tau-b counts concordant pairs and handles ties from held rewards). For the
  ``progress`` reward, a per-step change of the distance, the running sum of the rewards is
  correlated (the closeness it adds up to);
- ``success_precision`` / ``success_recall`` / ``success_f1``: the shaper's success flag per
  frame against ``true distance <= success_threshold_m`` (F1 is 0 when nothing was detected
  right, None when there is nothing to detect and nothing was flagged).

A metric with nothing to compute over (no valid frame, a constant series, no positives) is
None, so the output is plain JSON. :func:`summarize` aggregates episodes (means and medians of
the per-episode figures, pooled counts for precision / recall).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

TRUTHS = ('centre', 'surface')
SUMMARY_KEYS = ('frames', 'numeric_share', 'mae_m', 'median_rel_error', 'smoothed_mae_m',
                'smoothed_median_rel_error', 'spearman', 'kendall_tau', 'success_precision',
                'success_recall', 'success_f1')


def _none_if_nan(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float | None, float | None]:
    ok = np.isfinite(pred) & np.isfinite(truth)
    if not ok.any():
        return None, None
    err = np.abs(pred[ok] - truth[ok])
    positive = truth[ok] > 0
    rel = float(np.median(err[positive] / truth[ok][positive])) if positive.any() else math.nan
    return float(np.mean(err)), _none_if_nan(rel)


def rank_correlations(reward: Sequence[float] | np.ndarray,
                      truth: Sequence[float] | np.ndarray) -> tuple[
        float | None, float | None]:
    """Return (Spearman, Kendall tau-b) of ``reward`` with ``-truth`` over finite pairs."""
    from scipy.stats import kendalltau, spearmanr

    r = np.asarray(reward, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(t)
    if ok.sum() < 3 or np.ptp(r[ok]) == 0 or np.ptp(t[ok]) == 0:
        return None, None
    rho = spearmanr(r[ok], -t[ok]).statistic
    tau = kendalltau(r[ok], -t[ok]).statistic
    return _none_if_nan(rho), _none_if_nan(tau)


def detection(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, Any]:
    """Return true / false positive and false negative counts with precision, recall, F1."""
    p = np.asarray(predicted, dtype=bool)
    a = np.asarray(actual, dtype=bool)
    tp, fp, fn = int(np.sum(p & a)), int(np.sum(p & ~a)), int(np.sum(~p & a))
    return {'tp': tp, 'fp': fp, 'fn': fn, **_prf(tp, fp, fn)}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # 0 when no flag was right
    return {'success_precision': precision, 'success_recall': recall, 'success_f1': f1}


def episode_metrics(records: Sequence[Any], truth_centre: Sequence[float | None],
                    truth_surface: Sequence[float | None], truth: str = 'centre',
                    success_threshold_m: float = 0.05,
                    reward_mode: str = 'negative_distance') -> dict[str, Any]:
    """
    Return the metrics of one replayed episode (see the module docstring).

    :param records: the ``FrameRecord`` of each frame.
    :param truth_centre: per frame, the true centre distance (None: unknown).
    :param truth_surface: per frame, the true surface distance (None: unknown).
    :param truth: which distance the estimates are compared with, ``'centre'`` or ``'surface'``.
    :param success_threshold_m: true success is ``truth distance <= this``.
    :param reward_mode: the shaper's ``RewardConfig.mode``; for ``'progress'`` the running sum
        of the rewards is what is correlated with closeness.
    """
    if truth not in TRUTHS:
        raise ValueError(f'truth must be one of {TRUTHS}, got {truth!r}')
    n = len(records)
    if not (len(truth_centre) == len(truth_surface) == n):
        raise ValueError('records and truths must have the same length')

    def array(values: Sequence[float | None]) -> np.ndarray:
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    centre, surface = array(truth_centre), array(truth_surface)
    ref = centre if truth == 'centre' else surface
    raw = array([r.distance_raw_m if r.valid else None for r in records])
    smoothed = array([r.distance_m if r.smoothed_valid else None for r in records])
    reward = array([r.reward for r in records])
    mae, rel = _errors(raw, ref)
    smae, srel = _errors(smoothed, ref)
    if reward_mode == 'progress':  # per-step changes: their running sum follows closeness
        reward = np.where(np.isfinite(reward), np.cumsum(np.nan_to_num(reward)), np.nan)
    rho, tau = rank_correlations(reward, ref)
    has_truth = np.isfinite(ref)
    det = detection([r.success for r, ok in zip(records, has_truth, strict=True) if ok],
                    ref[has_truth] <= success_threshold_m)
    return {
        'frames': n,
        'truth': truth,
        'frames_with_truth': int(np.isfinite(ref).sum()),
        'numeric_share': float(np.mean([r.valid for r in records])) if n else None,
        'rejected': int(sum(r.rejected for r in records)),
        'mae_m': mae, 'median_rel_error': rel,
        'smoothed_mae_m': smae, 'smoothed_median_rel_error': srel,
        'spearman': rho, 'kendall_tau': tau,
        'success_threshold_m': success_threshold_m,
        **det,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    Aggregate per-episode metrics: mean and median of each figure, pooled success counts.

    :param rows: dicts from :func:`episode_metrics` (extra keys are ignored).
    """
    out: dict[str, Any] = {'episodes': len(rows)}
    for key in SUMMARY_KEYS:
        if key.startswith('success_'):
            continue
        values = np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
        out[key] = {'mean': float(values.mean()) if values.size else None,
                    'median': float(np.median(values)) if values.size else None,
                    'n': int(values.size)}
    tp, fp, fn = (int(sum(r.get(k, 0) for r in rows)) for k in ('tp', 'fp', 'fn'))
    out.update({'tp': tp, 'fp': fp, 'fn': fn, **_prf(tp, fp, fn)})
    return out

"""
Compare model folders on a ``train-default`` working folder's held-out sets.

Same settings as the recipe's evaluation (greedy, at most 1,500 questions per set, truth from
the simulator), plus the median relative error, the Spearman correlation of answered against
true distances and the number of distinct answers, per set.

Usage::

    PYTHONPATH=. python benchmarks/compare_models.py --data /tmp/svlm_v2/data
        --model shipped=/tmp/svlm_default/run/final --model new=/tmp/svlm_v2/run/final
        --out benchmarks/compare_stage1.json

(one command line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ('qualitative_accuracy', 'numeric_share', 'within_50_200', 'within_90_110', 'mse_m2')


def score(model: str, data: Path, name: str, limit: int) -> dict:
    """Return the recipe's metrics plus error, correlation and distinct answers on one set."""
    from scipy.stats import spearmanr

    from spatialvlm_ros.evaluate.runner import EvalConfig, evaluate_model

    result = evaluate_model(model, [data / name], EvalConfig(truth='sim', limit=limit,
                                                             max_new_tokens=24, batch_size=16))
    overall = result.to_dict()['greedy']['overall']
    row = {key: overall.get(key) for key in KEYS}
    truths, predictions, _ = result.distance_pairs(sampled=False)
    pairs = np.array([(t, p) for t, p in zip(truths, predictions, strict=True)
                      if p is not None and t > 0])
    if len(pairs):
        row['median_relative_error'] = float(np.median(np.abs(pairs[:, 1] - pairs[:, 0])
                                                       / pairs[:, 0]))
        row['spearman'] = float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)
        row['distinct'] = int(len(np.unique(pairs[:, 1])))
    return row


def main() -> None:
    """Score every model on both held-out sets; print and optionally save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, required=True, help='train-default data folder')
    parser.add_argument('--model', action='append', required=True, help='LABEL=FOLDER')
    parser.add_argument('--limit', type=int, default=1500)
    parser.add_argument('--out', type=Path)
    args = parser.parse_args()
    results = {}
    for item in args.model:
        label, _, folder = item.partition('=')
        results[label] = {name: score(folder, args.data, name, args.limit)
                          for name in ('heldout', 'gripper_heldout')}
        print(label, json.dumps(results[label]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + '\n', encoding='utf-8')


if __name__ == '__main__':
    main()

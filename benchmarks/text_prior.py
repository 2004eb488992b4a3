"""
A text-only baseline for the qualitative questions: what the captions alone can answer.

For every qualitative question of the training set, the answer the engine gave is counted per
(question type, object ids); a held-out question is then answered with the commonest answer of
its (type, objects) key, or of its type when the pair never occurred in training. Graded
against the simulator's truth (unambiguous questions only), per question family. It needs no
image and no model: it bounds what a model that only reads the question can reach, to compare
with the compact model's qualitative accuracy.

Run: ``PYTHONPATH=. python benchmarks/text_prior.py --data DIR/data`` (``DIR`` is a
``spatialvlm train-default`` working folder, for its ``train`` and ``heldout`` engine sets).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
import json
from pathlib import Path
from typing import Iterator

QUALITATIVE = ('predicate', 'choice', 'classify')


def qualitative(folder: Path) -> Iterator[dict]:
    """Yield the QA metadata of every qualitative question in a folder of Parquet shards."""
    import pyarrow.parquet as pq

    from spatialvlm_ros.train.data import parquet_files

    for shard in parquet_files([folder]):
        column = pq.read_table(shard, columns=['qa_metadata']).column('qa_metadata')
        for text in column.to_pylist():
            for meta in json.loads(text):
                if meta.get('kind') in QUALITATIVE:
                    yield meta


def main() -> None:
    """Fit the per-pair prior on the training set and print its held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, required=True, help='train-default data folder')
    args = parser.parse_args()
    by_pair: dict[tuple, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for meta in qualitative(args.data / 'train'):
        answer = json.dumps(meta.get('truth'))
        by_pair[(meta['qa_type'], tuple(meta['object_ids']))][answer] += 1
        by_type[meta['qa_type']][answer] += 1
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for meta in qualitative(args.data / 'heldout'):
        sim = meta.get('sim_truth') or {}
        if sim.get('ambiguous') or meta['qa_type'] not in by_type:
            continue
        truth = json.dumps(sim.get('truth', meta.get('truth')))
        counts = by_pair.get((meta['qa_type'], tuple(meta['object_ids']))) \
            or by_type[meta['qa_type']]
        for family in (meta['qa_type'].split('_')[0], 'all'):
            hits[family][0] += counts.most_common(1)[0][0] == truth
            hits[family][1] += 1
    print('| family | questions | text-prior accuracy |')
    print('|---|---|---|')
    for family, (right, n) in sorted(hits.items(), key=lambda kv: (kv[0] == 'all', kv[0])):
        print(f'| {family} | {n} | {right / n:.1%} |')


if __name__ == '__main__':
    main()

"""
Data quality against ground truth on held-out simulated scenes, per question type and noise.

Runs ``spatialvlm_ros.synth.quality.measure``: ``--scenes`` scenes of seed ``--seed`` (1000 by
default, never used for tests or training) through the full engine with perfect inputs and
with each noise preset, and prints markdown tables (43 types x conditions, totals by family,
canonicalization failures and the table normal's angle error). ``--json`` also writes the
report as JSON.

Usage: ``python benchmarks/bench_synth_quality.py [--scenes 200] [--json quality.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

from spatialvlm_ros.synth.quality import (
    CONDITIONS,
    HELD_OUT_SEED,
    markdown,
    measure,
    QualityConfig,
)


def main() -> None:
    """Print the quality tables (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--scenes', type=int, default=200, help='scenes per condition')
    parser.add_argument('--seed', type=int, default=HELD_OUT_SEED, help='held-out scene seed')
    parser.add_argument('--conditions', nargs='+', default=list(CONDITIONS),
                        help='noise presets (none = perfect inputs)')
    parser.add_argument('--width', type=int, default=320, help='image width')
    parser.add_argument('--height', type=int, default=240, help='image height')
    parser.add_argument('--qa-per-image', type=int, default=40, help='QA sampled per image')
    parser.add_argument('--json', help='write the report to this JSON file')
    args = parser.parse_args()
    config = QualityConfig(num_scenes=args.scenes, seed=args.seed,
                           conditions=tuple(args.conditions), width=args.width,
                           height=args.height, qa_per_image=args.qa_per_image)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    report = measure(config, progress=True)
    print(f'{args.scenes} scenes per condition, seed {args.seed}, {args.width}x{args.height}, '
          f'{args.qa_per_image} QA per image; {time.perf_counter() - started:.0f} s, load '
          f'{load:.2f}\n')
    print(markdown(report))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()

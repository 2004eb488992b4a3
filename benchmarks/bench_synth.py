"""
Data engine throughput with the simulator backends: per-stage ms, scenes/s and QA/s.

Runs ``spatialvlm_ros.synth.dataset.run_dataset`` (rendering, engine, PNG encoding, Parquet
shards) into a temporary folder with 1 and 2 worker processes, and prints the mean per-stage
times per image and the throughput. ``source`` is scene sampling plus rendering (one reused
PyBullet client per shard); ``encode`` is PNG encoding. Wall time includes worker start-up
(spawn, with imports) and writing: use ``--scenes`` large enough to amortise it.

Usage: ``python benchmarks/bench_synth.py [--scenes 200] [--shard-size 25] [--width 320]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

from spatialvlm_ros.synth.dataset import DatasetConfig, run_dataset
from spatialvlm_ros.synth.pipeline import EngineConfig, STAGES


def main() -> None:
    """Print a table of per-stage times and throughput for each worker count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--scenes', type=int, default=200, help='scenes per measurement')
    parser.add_argument('--shard-size', type=int, default=25, help='scenes per shard')
    parser.add_argument('--width', type=int, default=320, help='image width')
    parser.add_argument('--height', type=int, default=240, help='image height')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts')
    parser.add_argument('--noise', default='none', help='noise preset')
    args = parser.parse_args()
    stages = [*STAGES, 'source', 'encode']
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as out:
            config = DatasetConfig(out=out, num_scenes=args.scenes, shard_size=args.shard_size,
                                   source_kwargs={'width': args.width, 'height': args.height},
                                   engine=EngineConfig(seed=0, noise=args.noise))
            start = time.perf_counter()
            summary = run_dataset(config, workers=workers, progress=False)
            elapsed = time.perf_counter() - start
        rows.append((workers, summary, elapsed))
    print(f'{args.width}x{args.height}, {args.scenes} scenes, shard size {args.shard_size}, '
          f'noise {args.noise}')
    print('| workers | ' + ' | '.join(f'{s} ms' for s in stages)
          + ' | total ms/image | seconds | scenes/s | QA/s |')
    print('|---' * (len(stages) + 5) + '|')
    for workers, summary, elapsed in rows:
        ms = summary['stage_mean_ms']
        total = sum(ms.get(s, 0.0) for s in stages)
        print(f'| {workers} | ' + ' | '.join(f'{ms.get(s, 0.0):.1f}' for s in stages)
              + f' | {total:.1f} | {elapsed:.2f} | {args.scenes / elapsed:.2f} | '
              f'{summary["total_qa"] / elapsed:.1f} |', flush=True)


if __name__ == '__main__':
    main()

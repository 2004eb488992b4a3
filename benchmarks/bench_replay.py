"""
Metrics goal check of the reward pipeline on held-out simulated episodes.

Generates ``--episodes`` episodes (seeds 5000+, or ``--first-seed`` S+ for another set, such
as the validation episodes 7000+ that settings are chosen on; scenarios cycled through all
five, 320x240, 60 frames at 15 Hz) as bags in a cache folder (reused on later runs), replays
them with each ``--estimator`` and prints, per estimator, the mean over episodes of the
Spearman and Kendall correlation of the reward with the true negative distance, the median
relative error and MAE of the parsed distances (against the gripper-to-target centre
distance), and the numeric share; then the same per scenario.

Run: ``PYTHONPATH=. python benchmarks/bench_replay.py [--estimator oracle noisy_oracle]``;
with the trained model: ``--estimator vlm --model-folder DIR``. ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import tempfile
import time
from typing import Any

import numpy as np

from spatialvlm_ros.model.estimator import (
    DEFAULT_NUMBER_DECODING,
    DEFAULT_TEMPERATURE,
    NUMBER_DECODINGS,
)
from spatialvlm_ros.replay.runner import replay_bags, ReplayConfig
from spatialvlm_ros.sim.episode import SCENARIOS

FIRST_SEED = 5000


def episode_bags(cache: Path, episodes: int, frames: int, width: int, height: int,
                 first_seed: int = FIRST_SEED) -> list[Path]:
    """Return the bags of the episodes, generating those not in ``cache`` yet."""
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    paths = []
    for i in range(episodes):
        seed = first_seed + i
        scenario = SCENARIOS[i % len(SCENARIOS)]
        path = cache / f'episode_{seed}_{scenario}_{width}x{height}_{frames}'
        if not (path / 'metadata.yaml').is_file():
            start = time.perf_counter()
            episode = generate_episode(EpisodeConfig(seed=seed, scenario=scenario,
                                                     num_frames=frames, width=width,
                                                     height=height))
            write_episode(episode, path, overwrite=True)
            print(f'generated {path.name} in {time.perf_counter() - start:.1f} s',
                  file=sys.stderr)
        paths.append(path)
    return paths


def scenario_of(name: str) -> str:
    """Return the scenario of a bag named ``episode_<seed>_<scenario>_<w>x<h>_<frames>``."""
    return name.rsplit('_', 2)[0].split('_', 2)[2]


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _fmt(value: float | None) -> str:
    return '-' if value is None else f'{value:.3f}'


def _defined(rows: list[dict[str, Any]]) -> str:
    return f"{sum(r.get('spearman') is not None for r in rows)}/{len(rows)}"


def _mean_or_zero(rows: list[dict[str, Any]], key: str) -> float | None:
    # a constant reward (correlation undefined) carries no order information: count it as 0
    return float(np.mean([r.get(key) or 0.0 for r in rows])) if rows else None


def table(results: dict[str, dict[str, Any]]) -> str:
    """
    Return the markdown tables: overall per estimator, then per scenario.

    Spearman is undefined for an episode whose reward is constant; the tables give the mean over
    the episodes where it is defined, how many those are, and the mean counting undefined as 0.
    """
    keys = ('kendall_tau', 'median_rel_error', 'mae_m', 'smoothed_mae_m', 'numeric_share')
    lines = ['| estimator | episodes | Spearman | defined | Spearman (undefined = 0) | '
             'Kendall tau | median rel. err | MAE (m) | smoothed MAE (m) | numeric |',
             '|' + '---|' * 10]
    for name, summary in results.items():
        rows = summary['bags']
        lines.append(f'| {name} | {len(rows)} | {_fmt(_mean(rows, "spearman"))} | '
                     f'{_defined(rows)} | {_fmt(_mean_or_zero(rows, "spearman"))} | '
                     + ' | '.join(_fmt(_mean(rows, k)) for k in keys) + ' |')
    lines += ['', '| estimator | scenario | Spearman | defined | Kendall tau | median rel. err |',
              '|' + '---|' * 6]
    for name, summary in results.items():
        for scenario in SCENARIOS:
            rows = [r for r in summary['bags'] if scenario_of(r['bag_name']) == scenario]
            if rows:
                lines.append(f'| {name} | {scenario} | {_fmt(_mean(rows, "spearman"))} | '
                             f'{_defined(rows)} | {_fmt(_mean(rows, "kendall_tau"))} | '
                             f'{_fmt(_mean(rows, "median_rel_error"))} |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--first-seed', type=int, default=FIRST_SEED,
                        help=f'seed of the first episode (default {FIRST_SEED}: the held-out '
                             'episodes; 7000: the validation episodes)')
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--cache', type=Path,
                        default=Path(tempfile.gettempdir()) / 'spatialvlm_bench_replay')
    parser.add_argument('--out', type=Path, default=None,
                        help='replay outputs (default: <cache>/replay_<estimator>)')
    parser.add_argument('--estimator', nargs='+', default=['oracle', 'noisy_oracle'],
                        choices=('oracle', 'noisy_oracle', 'vlm'))
    parser.add_argument('--model-folder',
                        help='the VLM folder for --estimator vlm (default: the shipped model)')
    parser.add_argument('--answer-prefix', default=None,
                        help="VLM answer prefix ('' for none; default: the node's)")
    parser.add_argument('--samples', type=int, default=1,
                        help='VLM answers sampled and averaged per frame (default 1: one answer)')
    parser.add_argument('--number-decoding', choices=NUMBER_DECODINGS,
                        default=DEFAULT_NUMBER_DECODING,
                        help="how one answer per frame is decoded (default: the node's, "
                             f'{DEFAULT_NUMBER_DECODING})')
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help='VLM sampling temperature when --samples > 1')
    parser.add_argument('--mirror-average', action='store_true',
                        help="average each frame's distance with its mirror image's")
    parser.add_argument('--smoother', default='median_ema')
    parser.add_argument('--seed', type=int, default=0, help='noisy oracle seed')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    bags = episode_bags(args.cache, args.episodes, args.frames, args.width, args.height,
                        args.first_seed)
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for kind in args.estimator:
        config = ReplayConfig(estimator=kind, model_folder=args.model_folder,
                              answer_prefix=args.answer_prefix, samples=args.samples,
                              temperature=args.temperature,
                              number_decoding=args.number_decoding, smoother=args.smoother,
                              mirror_average=args.mirror_average,
                              seed=args.seed)
        out = (args.out or args.cache) / f'replay_{kind}'
        start = time.perf_counter()
        results[kind] = replay_bags(bags, config, out, plot=False)
        timings[kind] = time.perf_counter() - start
    if args.json:
        print(json.dumps({k: {'total': v['total'], 'seconds': timings[k]}
                          for k, v in results.items()}, indent=2))
    else:
        print(table(results))
        for kind, seconds in timings.items():
            print(f'{kind}: {seconds:.1f} s for {len(bags)} bags')
    return 0


if __name__ == '__main__':
    sys.exit(main())

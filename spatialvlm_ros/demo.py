"""
``spatialvlm demo``: the main job on a fresh machine.

For now (foundation): render a simulated episode of the Panda approaching a named object, write
it as a real ROS 2 bag, read the bag back and print its summary. Later the reward node runs on
that bag.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        'demo', help='render a simulated episode, write it as a ROS 2 bag, print its summary',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seed', type=int, default=0, help='episode seed (default: 0)')
    parser.add_argument('--scenario', default='approach',
                        help='episode scenario (default: approach)')
    parser.add_argument('--out', type=Path, default=Path('spatialvlm_demo'),
                        help='output folder (default: ./spatialvlm_demo)')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap',
                        help='bag storage (default: mcap)')
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    from spatialvlm_ros.bags.reader import read_episode
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.cli import print_result
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    config = EpisodeConfig(seed=args.seed, scenario=args.scenario)
    episode = generate_episode(config, progress=not args.json)
    bag_path = write_episode(episode, args.out / f'episode_{args.seed:04d}_{args.scenario}',
                             storage=args.storage, overwrite=True)
    bag = read_episode(bag_path)
    summary = summarize(bag, bag_path)
    print_result(summary, args.json, format_summary(summary))
    return 0


def summarize(bag: Any, bag_path: Path) -> dict[str, Any]:
    """Summarize a read-back episode bag: frames, duration, target, distances over time."""
    meta = bag.metadata
    target = meta['target_id']
    distances = [f.distance_centre[target] for f in bag.frames]
    surfaces = [f.distance_surface[target] for f in bag.frames]
    stamps = [f.stamp_ns for f in bag.frames]
    return {
        'bag': str(bag_path),
        'frames': len(bag.frames),
        'duration_s': (stamps[-1] - stamps[0]) / 1e9 if stamps else 0.0,
        'rate_hz': meta.get('rate_hz'),
        'scenario': meta.get('scenario'),
        'target_id': target,
        'target_captions': _captions(meta, target),
        'image_size': [bag.intrinsics.width, bag.intrinsics.height],
        'distance_centre_m': {'start': distances[0], 'end': distances[-1],
                              'min': min(distances)},
        'distance_surface_m': {'start': surfaces[0], 'end': surfaces[-1], 'min': min(surfaces)},
    }


def _captions(meta: dict[str, Any], target: str) -> list[str]:
    for obj in meta.get('objects', []):
        if obj.get('object_id', obj.get('id')) == target:
            return list(obj.get('captions', []))
    return []


def format_summary(summary: dict[str, Any]) -> str:
    """Format the summary for people."""
    dc, ds = summary['distance_centre_m'], summary['distance_surface_m']
    lines = [
        f"bag:       {summary['bag']}",
        f"frames:    {summary['frames']} over {summary['duration_s']:.2f} s "
        f"at {summary['rate_hz']} Hz, {summary['image_size'][0]}x{summary['image_size'][1]}",
        f"scenario:  {summary['scenario']}",
        f"target:    {summary['target_id']} "
        f"({', '.join(repr(c) for c in summary['target_captions'][:3])})",
        f"gripper-to-target centre distance:  {dc['start']:.3f} m -> {dc['end']:.3f} m "
        f"(min {dc['min']:.3f} m)",
        f"gripper-to-target surface distance: {ds['start']:.3f} m -> {ds['end']:.3f} m "
        f"(min {ds['min']:.3f} m)",
    ]
    return '\n'.join(lines)

"""
``spatialvlm demo``: the main job, the reward node on the embedded default model.

1. Render a simulated episode of the Panda approaching a named object and write it as a real
   ROS 2 bag (mcap).
2. Play the bag at its recorded rate through the reward node (``spatialvlm_reward``, a
   lifecycle node, over real DDS) with the shipped compact spatial VLM asking 'how far is the
   gripper from <target>?' every frame; record the node's stamped outputs.
3. Print the reward trace beside the simulator's true distances, the agreement figures, and
   where the CSV and the plot went.

The node runs in a child process (``python -m spatialvlm_ros.ros.bag_player``): rclpy stays
out of this process, as everywhere outside ``spatialvlm_ros/ros``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path
import random
import subprocess
import sys
from types import SimpleNamespace
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        'demo', help='run the reward node with the default model over a simulated episode',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seed', type=int, default=0, help='episode seed (default: 0)')
    parser.add_argument('--scenario', default='approach',
                        help='episode scenario (default: approach)')
    parser.add_argument('--frames', type=int, default=60, help='episode frames (default: 60)')
    parser.add_argument('--width', type=int, default=320, help='image width (default: 320)')
    parser.add_argument('--height', type=int, default=240, help='image height (default: 240)')
    parser.add_argument('--model-folder', default='',
                        help='local VLM folder (default: the shipped compact model)')
    parser.add_argument('--out', type=Path, default=Path('spatialvlm_demo'),
                        help='output folder (default: ./spatialvlm_demo)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (default: 1, the recorded rate)')
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')
    parser.set_defaults(func=run)


def _ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))
    env.setdefault('HF_HUB_OFFLINE', '1')
    if not env.get('AMENT_PREFIX_PATH'):
        env['AMENT_PREFIX_PATH'] = sys.prefix
    return env


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    from spatialvlm_ros.bags.reader import read_episode
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    output_folder(args.out, '--out')  # before the episode is rendered
    try:
        config = EpisodeConfig(seed=args.seed, scenario=args.scenario, num_frames=args.frames,
                               width=args.width, height=args.height)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not args.model_folder:
        from spatialvlm_ros.model.estimator import default_model_folder

        try:
            default_model_folder()
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from exc
    episode = generate_episode(config, progress=not args.json)
    name = f'episode_{args.seed:04d}_{args.scenario}'
    bag_path = write_episode(episode, args.out / name, storage='mcap', overwrite=True)
    target = str(episode.metadata.get('target_caption') or episode.target_captions[-1])
    target = target if target.startswith('the ') else f'the {target}'
    csv_path, report_path = args.out / f'{name}_reward.csv', args.out / f'{name}_node.json'
    command = [sys.executable, '-m', 'spatialvlm_ros.ros.bag_player', str(bag_path),
               '--csv', str(csv_path), '--report', str(report_path), '--target', target,
               '--model-folder', args.model_folder, '--rate', str(args.rate)]
    if not args.json:
        print(f'playing {bag_path} through the reward node (target {target!r}) ...',
              file=sys.stderr, flush=True)
    done = subprocess.run(command, env=_ros_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise CommandError(f'the reward node run failed:\n{done.stderr[-2000:]}')
    bag = read_episode(bag_path)
    summary = summarize(read_records(csv_path), bag, json.loads(report_path.read_text()))
    summary.update({'bag': str(bag_path), 'csv': str(csv_path), 'node_report': str(report_path),
                    'target': target})
    summary['plot'] = str(plot(summary, args.out / f'{name}_reward.png'))
    print_result(summary, args.json, format_summary(summary))
    return 0


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read the node's per-frame CSV, with numbers and flags typed."""
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        record: dict[str, Any] = dict(row)
        for key in ('distance_raw', 'distance', 'reward', 'latency_ms'):
            value = row.get(key, '')
            record[key] = float(value) if value not in ('', 'None') else math.nan
        for key in ('valid', 'success', 'stale', 'rejected'):
            record[key] = str(row.get(key, '')).lower() in ('1', 'true')
        record['stamp_ns'] = int(row['stamp_ns'])
        out.append(record)
    return out


def summarize(records: list[dict[str, Any]], bag: Any, report: dict[str, Any]) -> dict[str, Any]:
    """Join the node's outputs with the bag's truth; compute agreement figures."""
    import numpy as np
    from scipy.stats import spearmanr

    target = bag.metadata['target_id']
    truth = {f.stamp_ns: (f.distance_centre[target], f.distance_surface[target])
             for f in bag.frames}
    start = bag.frames[0].stamp_ns
    trace = []
    for r in records:
        centre, surface = truth.get(r['stamp_ns'], (math.nan, math.nan))
        trace.append({'t_s': (r['stamp_ns'] - start) / 1e9, 'answer': r.get('answer', ''),
                      'distance_raw_m': r['distance_raw'], 'distance_m': r['distance'],
                      'reward': r['reward'], 'valid': r['valid'], 'rejected': r['rejected'],
                      'success': r['success'],
                      'true_centre_m': centre, 'true_surface_m': surface,
                      'latency_ms': r['latency_ms']})
    pairs = [(t['reward'], -t['true_centre_m']) for t in trace
             if math.isfinite(t['reward']) and math.isfinite(t['true_centre_m'])]
    rel = [abs(t['distance_raw_m'] - t['true_centre_m']) / t['true_centre_m'] for t in trace
           if math.isfinite(t['distance_raw_m']) and t['true_centre_m'] > 0]
    rewards, negative = [p[0] for p in pairs], [p[1] for p in pairs]
    rho = float(spearmanr(rewards, negative).statistic) if len(pairs) > 2 else math.nan
    rho = rho if math.isfinite(rho) else None  # undefined when either side is constant
    node = report.get('node', {})
    return {
        'frames_in_bag': len(bag.frames), 'frames_played': report.get('frames_played'),
        'frames_received': node.get('frames_received'), 'frames_processed': len(records),
        'frames_dropped': node.get('frames_dropped'),
        'answers_with_distance': sum(math.isfinite(t['distance_raw_m']) for t in trace),
        'answers_accepted': sum(bool(t['valid']) for t in trace),
        'spearman_reward_vs_true_negative_distance': rho,
        'median_relative_error': float(np.median(rel)) if rel else None,
        'latency_p50_ms': node.get('latency_p50_ms'), 'model': node.get('model'),
        'device': node.get('device'), 'trace': trace}


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Plot predicted vs true distance and the reward over time."""
    from spatialvlm_ros.replay.outputs import write_plot

    trace = summary['trace']
    records = [SimpleNamespace(
        distance_raw_m=None if not math.isfinite(t['distance_raw_m']) else t['distance_raw_m'],
        distance_m=t['distance_m'], reward=t['reward'], rejected=t['rejected'],
        success=t['success']) for t in trace]
    stamps = [int(t['t_s'] * 1e9) for t in trace]
    return write_plot(path, f"reward node on {summary.get('model')}: {summary['target']}",
                      stamps, records, [t['true_centre_m'] for t in trace],
                      [t['true_surface_m'] for t in trace])


def _ms(value: object) -> str:
    """Return milliseconds with one decimal, '-' when missing or not finite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return '-'
    return f'{number:.1f}' if math.isfinite(number) else '-'


def format_summary(summary: dict[str, Any]) -> str:
    """Format the reward trace and the figures for people."""
    lines = [f"{'t (s)':>6}  {'answer':<34} {'parsed':>7} {'smoothed':>8} {'reward':>7} "
             f"{'true':>6}"]
    for t in summary['trace']:
        lines.append(f"{t['t_s']:6.2f}  {t['answer'][:34]:<34} {t['distance_raw_m']:7.3f} "
                     f"{t['distance_m']:8.3f} {t['reward']:7.3f} {t['true_centre_m']:6.3f}")
    rho, mre = summary['spearman_reward_vs_true_negative_distance'], summary[
        'median_relative_error']
    lines += [
        '',
        f"frames: {summary['frames_played']} played, {summary['frames_received']} received "
        '(newer frames replace older ones in the depth-1 input queue while the model runs), '
        f"{summary['frames_processed']} processed, {summary['frames_dropped']} dropped; "
        f"{summary['answers_with_distance']} answers held a distance, "
        f"{summary['answers_accepted']} passed the smoother; model {summary['model']} on "
        f"{summary['device']}, latency p50 {_ms(summary['latency_p50_ms'])} ms",
        f"reward vs true negative distance, Spearman: {'-' if rho is None else f'{rho:.3f}'}; "
        f"median relative distance error: {'-' if mre is None else f'{100 * mre:.1f}%'}",
        f"bag:  {summary['bag']}", f"csv:  {summary['csv']}", f"plot: {summary['plot']}",
        f"node: {summary['node_report']} (the node's diagnostics at the end)"]
    return '\n'.join(lines)

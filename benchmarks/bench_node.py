"""
End-to-end benchmark of the reward node over real DDS, and its backpressure behaviour.

1. *throughput*: the sim camera node runs in another process (``python -m
   spatialvlm_ros.ros.sim_camera_node``) publishing rendered frames at ``--rate`` Hz; the reward
   node (estimator from ``--estimator``) runs here. Reported: input and processed frames/s,
   dropped frames, node latency (frame received -> outputs published) p50/p99, and end-to-end
   latency (camera stamp -> ``spatialvlm/result`` received here; same host clock) p50/p99.
2. *backpressure*: the same camera at ``--bp-rate`` Hz (60) into a node with a deliberately
   slow fake model (``--slow-s`` per frame): RSS of this process (which hosts the node) and
   latency over ``--bp-duration`` seconds.

Usage::

    PYTHONPATH=. python benchmarks/bench_node.py --estimator oracle --duration 60
    PYTHONPATH=. python benchmarks/bench_node.py --estimator vlm --model-folder /models/x
    PYTHONPATH=. python benchmarks/bench_node.py --estimator vlm --samples 8 --temperature 1.0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
from rclpy.parameter import Parameter

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.model.estimator import (
    DEFAULT_NUMBER_DECODING,
    DEFAULT_TEMPERATURE,
    NUMBER_DECODINGS,
)
from spatialvlm_ros.ros.bag_player import ResultRecorder
from spatialvlm_ros.ros.harness import EXECUTOR_KINDS
from spatialvlm_ros.ros.reward_node import RewardNode
from spatialvlm_ros.ros.testing import FakeEstimator, RosHarness, setup_test_env

REMAPS = ['image:=' + layout.TOPICS['rgb'].name,
          'camera_info:=' + layout.TOPICS['camera_info'].name,
          'depth:=' + layout.TOPICS['depth'].name,
          'ground_truth_distance:=' + layout.TOPICS['distance_centre'].name]


def rss_mb() -> float:
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def start_camera(domain_id: int, rate: float, width: int, height: int) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    cmd = [sys.executable, '-m', 'spatialvlm_ros.ros.sim_camera_node', '--ros-args',
           '-p', f'rate:={float(rate)}', '-p', f'width:={width}', '-p', f'height:={height}',
           '-p', 'num_frames:=90', '-p', 'loop:=true', '-p', 'seed:=3', '--log-level', 'warn']
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def run_phase(args: argparse.Namespace, params: dict, factory, rate: float, duration: float,
              sample_rss: bool) -> dict:
    with RosHarness(executor=args.executor) as ros:
        node = ros.add(RewardNode(factory, context=ros.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()],
            cli_args=['--ros-args'] + [a for r in REMAPS for a in ('-r', r)]))
        node.trigger_configure()
        node.trigger_activate()
        if node.lifecycle_state != 'active':
            raise SystemExit('the reward node did not activate (see its log)')
        probe = ros.add(__import__('rclpy').create_node('bench_probe', context=ros.context))
        recorder = ResultRecorder(probe)
        camera = start_camera(ros.domain_id, rate, args.width, args.height)
        try:
            counts = node.stats.counts
            if not ros.wait_for(lambda: counts['frames_processed'] >= 5, 120):
                raise SystemExit('no frames from the sim camera within 120 s')
            start_counts, start = dict(counts), time.monotonic()
            node.stats.latency.clear()
            node.stats.inference.clear()
            node.stats.stamp_age.clear()
            first_record = len(recorder)
            rss = [rss_mb()]
            deadline = start + duration
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
                if sample_rss:
                    rss.append(rss_mb())
            elapsed = time.monotonic() - start
            end_counts = dict(counts)
            latency = np.array(node.stats.latency) * 1e3
            inference = np.array(node.stats.inference) * 1e3
            stamp_age = np.array(node.stats.stamp_age) * 1e3
            records = recorder.snapshot()[first_record:]
        finally:
            camera.terminate()
            camera.wait(timeout=10)
        e2e = np.array([(r['received_s'] - r['stamp_ns'] / 1e9) * 1e3 for r in records])
        delta = {k: end_counts[k] - start_counts[k] for k in end_counts}
        node.trigger_deactivate()
    return {
        'seconds': elapsed, 'input_hz': delta['frames_received'] / elapsed,
        'processed_hz': delta['frames_processed'] / elapsed,
        'dropped': delta['frames_dropped'] + delta['late_results_dropped'],
        'invalid': delta['invalid_answers'],
        'malformed': delta['malformed_messages'],
        'lat_p50': float(np.percentile(latency, 50)), 'lat_p99': float(np.percentile(latency, 99)),
        'inf_p50': float(np.percentile(inference, 50)),
        'inf_p99': float(np.percentile(inference, 99)),
        'age_p50': float(np.percentile(stamp_age, 50)),
        'age_p99': float(np.percentile(stamp_age, 99)),
        'e2e_p50': float(np.percentile(e2e, 50)), 'e2e_p99': float(np.percentile(e2e, 99)),
        'rss_start': rss[0], 'rss_end': rss[-1],
        'rss_growth': max(rss) - rss[min(2, len(rss) - 1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--estimator', choices=('oracle', 'vlm', 'fake'), default='oracle')
    parser.add_argument('--model-folder', default='', help="VLM folder ('' = default)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--executor', choices=EXECUTOR_KINDS, default='single_threaded',
                        help="executor of the node's process (main() uses the node's "
                        "'executor' parameter)")
    parser.add_argument('--target', default='the coke can',
                        help="the node's target phrase (its default: 'the coke can'; the "
                        "camera's episode (seed 3) shows 'the purple wooden toy cylinder')")
    parser.add_argument('--workers', type=int, default=0,
                        help="the node's inference_workers (frames answered at once; 0: auto)")
    parser.add_argument('--in-process', action='store_true',
                        help='run the VLM in the node process (estimator_process:=false)')
    parser.add_argument('--samples', type=int, default=1,
                        help="the node's samples_per_frame (answers averaged per frame)")
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help="the node's sampling_temperature")
    parser.add_argument('--number-decoding', choices=NUMBER_DECODINGS,
                        default=DEFAULT_NUMBER_DECODING,
                        help="the node's number_decoding (one answer per frame)")
    parser.add_argument('--mirror-average', action='store_true',
                        help="the node's mirror_average (two inferences a frame)")
    parser.add_argument('--duration', type=float, default=60.0)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--bp-duration', type=float, default=60.0)
    parser.add_argument('--bp-rate', type=float, default=60.0)
    parser.add_argument('--slow-s', type=float, default=0.25)
    parser.add_argument('--skip-throughput', action='store_true')
    parser.add_argument('--skip-backpressure', action='store_true')
    args = parser.parse_args()
    setup_test_env()
    rows = []
    if not args.skip_throughput:
        params = {'estimator': 'oracle' if args.estimator == 'fake' else args.estimator,
                  'model_folder': args.model_folder, 'device': args.device,
                  'estimator_process': not args.in_process, 'target': args.target,
                  'inference_workers': args.workers, 'samples_per_frame': args.samples,
                  'sampling_temperature': args.temperature,
                  'number_decoding': args.number_decoding,
                  'mirror_average': args.mirror_average}
        factory = (lambda spec: FakeEstimator()) if args.estimator == 'fake' else None
        rows.append((f'throughput, {args.estimator}', args.rate,
                     run_phase(args, params, factory, args.rate, args.duration, False)))
    if not args.skip_backpressure:
        slow = FakeEstimator(delay_s=args.slow_s)
        rows.append((f'backpressure, fake {args.slow_s * 1e3:.0f} ms', args.bp_rate,
                     run_phase(args, {'estimator': 'oracle'}, lambda spec: slow, args.bp_rate,
                               args.bp_duration, True)))
    where = 'the node' if args.in_process else 'a child'
    print(f'\nreward node over DDS, {args.width}x{args.height} rgb8, sim camera in another '
          f'process, {args.executor} executor, model in {where} process, target '
          f'{args.target!r}, inference_workers {args.workers}, samples_per_frame '
          f'{args.samples} (T {args.temperature:g}), number_decoding {args.number_decoding}, '
          f'mirror_average {args.mirror_average}\n')
    print('| run | camera Hz | s | input fps | processed fps | dropped | node latency p50/p99 '
          'ms | inference p50/p99 ms | camera stamp->node publication p50/p99 ms | '
          'camera stamp->result received p50/p99 ms | RSS start -> end MB (growth after 2 s) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for name, rate, r in rows:
        print(f"| {name} | {rate:g} | {r['seconds']:.0f} | {r['input_hz']:.1f} | "
              f"{r['processed_hz']:.1f} | {r['dropped']} | {r['lat_p50']:.1f} / "
              f"{r['lat_p99']:.1f} | {r['inf_p50']:.1f} / {r['inf_p99']:.1f} | "
              f"{r['age_p50']:.1f} / {r['age_p99']:.1f} | "
              f"{r['e2e_p50']:.1f} / {r['e2e_p99']:.1f} | "
              f"{r['rss_start']:.0f} -> {r['rss_end']:.0f} ({r['rss_growth']:+.1f}) |")
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
Inference throughput of the compact spatial VLM: image + question -> parsed distance.

The default ``CompactVLMConfig`` with random weights (speed does not depend on training): each
call runs the processor (resize, normalise, chat template), the vision tower, the prefill and
exactly ``--new-tokens`` greedy decoding steps (``min_new_tokens`` forces the length, so a
random model cannot stop early), decodes and parses the answer. Batch 1 is one
``SpatialVLM.ask`` per image; batch B asks B pairs at once. Latency is per call.

With ``--shipped`` it measures the trained shipped default instead, the way the reward node
uses it: ``VLMDistanceEstimator.estimate`` on rendered simulator frames (320x240) with the
gripper question, real answers: as the node asks (answer prefix 'The distance is', stopping once
the distance is read), without the prefix, and without either (the whole sentence).

Usage: ``python benchmarks/bench_inference.py [--calls 60] [--new-tokens 8] [--threads 2]
[--shipped]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, count_parameters
from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
from spatialvlm_ros.model.loading import from_memory

QUESTION = 'What is the distance between the red mug and the small blue ceramic coffee mug?'


def _measure(vlm: SpatialVLM, images: list[np.ndarray], batch: int, calls: int,
             warmup: int = 3) -> list[float]:
    """Return per-call latencies (s) of asking ``batch`` pairs at a time."""
    times = []
    for i in range(warmup + calls):
        chunk = [images[(i * batch + j) % len(images)] for j in range(batch)]
        start = time.perf_counter()
        vlm.ask(chunk, [QUESTION] * batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def shipped(calls: int, threads: int) -> None:
    """Print rows for the shipped default answering the gripper question on rendered frames."""
    import torch

    from spatialvlm_ros.model.estimator import VLMDistanceEstimator
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=9200, num_frames=20, width=320, height=240))
    caption = episode.metadata['target_caption']
    target = caption if caption.startswith('the ') else f'the {caption}'
    frames = [f.rgb for f in episode.frames]
    print(f'shipped default; torch threads {torch.get_num_threads()}; target {target!r}')
    print('| device | decoding | calls | answers/s | p50 ms/call | p99 ms/call | mean answer |')
    print('|---|---|---|---|---|---|---|')
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        estimator = VLMDistanceEstimator(None, device=device,
                                         threads=threads or None)
        rows = (("prefix 'The distance is' + stop at distance (the node's default)", True,
                 estimator._vlm.config.answer_prefix),
                ('no prefix, stop at distance', True, ''), ('no prefix, whole answer', False, ''))
        for label, stop, prefix in rows:
            estimator._vlm.config.stop_at_distance = stop
            estimator._vlm.config.answer_prefix = prefix
            times, lengths = [], []
            for i in range(3 + calls):
                start = time.perf_counter()
                result = estimator.estimate(frames[i % len(frames)], 'the gripper', target)
                if i >= 3:
                    times.append(time.perf_counter() - start)
                    lengths.append(len(result.text))
            t = np.array(times)
            p50, p99 = np.percentile(t, [50, 99]) * 1e3
            print(f'| {device} | {label} | {calls} | {len(t) / t.sum():.1f} | {p50:.1f} | '
                  f'{p99:.1f} | {np.mean(lengths):.0f} chars |', flush=True)
        estimator.close()


def main() -> None:
    """Print a table of answers/s and latency percentiles."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--calls', type=int, default=60, help='timed calls per row')
    parser.add_argument('--new-tokens', type=int, default=8, help='generated tokens per answer')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8], help='batch sizes')
    parser.add_argument('--shipped', action='store_true',
                        help='measure the trained shipped default on rendered frames')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shipped:
        shipped(args.calls, args.threads)
        return
    cfg = CompactVLMConfig()
    model, processor = build_compact_model(cfg)
    counts = count_parameters(model)
    print(f'compact model: {counts["total"] / 1e6:.2f} M parameters (vision '
          f'{counts["vision"] / 1e6:.2f} M, projector {counts["projector"] / 1e6:.2f} M, text '
          f'{counts["text"] / 1e6:.2f} M); {cfg.image_size} px, {cfg.num_image_tokens} image '
          f'tokens; {args.new_tokens} new tokens; torch threads {torch.get_num_threads()}')
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(16)]
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    print('| device | batch | calls | answers/s | p50 ms/call | p99 ms/call |')
    print('|---|---|---|---|---|---|')
    for device in devices:
        loaded = from_memory(model, processor, device=device)
        for batch in args.batches:
            vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=args.new_tokens,
                                                     batch_size=batch))
            forced = vlm.generation_kwargs()
            forced['min_new_tokens'] = args.new_tokens
            vlm.generation_kwargs = lambda forced=forced: forced  # type: ignore[method-assign]
            times = np.array(_measure(vlm, images, batch, args.calls))
            p50, p99 = np.percentile(times, [50, 99]) * 1e3
            print(f'| {device} | {batch} | {args.calls} | {batch * len(times) / times.sum():.1f} '
                  f'| {p50:.1f} | {p99:.1f} |', flush=True)


if __name__ == '__main__':
    main()

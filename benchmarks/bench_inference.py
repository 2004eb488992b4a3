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
the distance is read), without the prefix, and without either (the whole sentence); with
``--samples K ...`` also as the node asks with ``samples_per_frame: K`` (K answers sampled at
``--temperature`` and averaged: one pass over the image and prompt on the fast path, K through
``generate()``); and as the node asks with ``mirror_average`` (the frame and its mirror image
in one batch of two).

Batch-1 rows are measured twice, interleaved call by call in the same process (so a busy
machine slows both alike): through the fast path (``InferenceConfig.fast_path``: cached prompt,
numpy image preprocessing, the lean greedy loop) and through the processor and ``generate()``;
``vs generate`` is the fast path's answers/s over ``generate()``'s, and the shipped rows check
that both give the same answers.

Usage: ``python benchmarks/bench_inference.py [--calls 60] [--new-tokens 8] [--threads 2]
[--shipped [--samples 4 16] [--temperature 0.7]]``
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, count_parameters
from spatialvlm_ros.model.estimator import DEFAULT_TEMPERATURE
from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
from spatialvlm_ros.model.loading import from_memory

QUESTION = 'What is the distance between the red mug and the small blue ceramic coffee mug?'


def _measure(vlms: dict[str, SpatialVLM], images: list[np.ndarray], batch: int, calls: int,
             warmup: int = 3) -> dict[str, list[float]]:
    """Return per-call latencies (s) of each VLM asking ``batch`` pairs at a time, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in vlms}
    names = list(vlms)
    for i in range(warmup + calls):
        chunk = [images[(i * batch + j) % len(images)] for j in range(batch)]
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            vlms[name].ask(chunk, [QUESTION] * batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _stats(times: list[float], batch: int = 1) -> tuple[float, float, float]:
    """Return answers/s, p50 and p99 (ms) of per-call latencies."""
    t = np.array(times)
    p50, p99 = np.percentile(t, [50, 99]) * 1e3
    return batch * len(t) / t.sum(), p50, p99


def shipped(calls: int, threads: int, samples: list[int] | None = None,
            temperature: float = DEFAULT_TEMPERATURE) -> None:
    """Print rows for the shipped default answering the gripper question on rendered frames."""
    import torch

    from spatialvlm_ros.model.estimator import VLMDistanceEstimator
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=9200, num_frames=20, width=320, height=240))
    caption = episode.metadata['target_caption']
    target = caption if caption.startswith('the ') else f'the {caption}'
    frames = [f.rgb for f in episode.frames]
    print(f'shipped default; torch threads {torch.get_num_threads()}; target {target!r}')
    print('| device | decoding | path | calls | answers/s | p50 ms/call | p99 ms/call | '
          'mean answer | vs generate |')
    print('|---|---|---|---|---|---|---|---|---|')
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        estimator = VLMDistanceEstimator(None, device=device,
                                         threads=threads or None)
        vlm = estimator._vlm
        node = {'answer_prefix': vlm.config.answer_prefix, 'stop_at_distance': True,
                'decoding': vlm.config.decoding}
        rows = [("prefix 'The distance is' + stop at distance, "
                 f"{vlm.config.decoding} digits (the node's default)", node),
                ("the node's, greedy digits", {**node, 'decoding': 'greedy'}),
                ('no prefix, stop at distance', {'stop_at_distance': True, 'answer_prefix': ''}),
                ('no prefix, whole answer', {'stop_at_distance': False, 'answer_prefix': ''})]
        mirror = "the node's with mirror_average (the frame and its mirror image, one batch)"
        rows.append((mirror, {**node, 'batch_size': 2}))
        rows += [(f"the node's, {k} answers sampled at T {temperature} and averaged",
                  {**node, 'decoding': 'sample', 'num_samples': k, 'batch_size': k,
                   'temperature': temperature}) for k in samples or [] if k > 1]
        for label, overrides in rows:
            estimator.mirror_average = label == mirror
            configs = {path: dataclasses.replace(vlm.config, fast_path=fast, **overrides)
                       for path, fast in (('fast', True), ('generate', False))}
            times: dict[str, list[float]] = {path: [] for path in configs}
            lengths: dict[str, list[int]] = {path: [] for path in configs}
            used, differ = {}, 0
            for i in range(3 + calls):
                texts = {}
                for path in configs if i % 2 == 0 else list(configs)[::-1]:
                    vlm.config = configs[path]
                    start = time.perf_counter()
                    result = estimator.estimate(frames[i % len(frames)], 'the gripper', target)
                    elapsed = time.perf_counter() - start
                    texts[path] = result.text
                    if i >= 3:
                        times[path].append(elapsed)
                        lengths[path].append(len(result.text))
                        used[path] = vlm.last_path
                differ += texts['fast'] != texts['generate']
            rate = {path: _stats(times[path])[0] for path in configs}
            for path in configs:
                answers_per_s, p50, p99 = _stats(times[path])
                ratio = f'x{rate[path] / rate["generate"]:.2f}'
                print(f'| {device} | {label} | {path} ({used[path]}) | {calls} | '
                      f'{answers_per_s:.1f} | '
                      f'{p50:.1f} | {p99:.1f} | {np.mean(lengths[path]):.0f} chars | {ratio} |',
                      flush=True)
            if differ:
                print(f'| {device} | {label} | {differ} of {3 + calls} answers differ between '
                      'the paths |', flush=True)
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
    parser.add_argument('--samples', type=int, nargs='*', default=[],
                        help='--shipped: also rows with this many sampled answers per call')
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help='--shipped --samples: the sampling temperature')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shipped:
        shipped(args.calls, args.threads, args.samples, args.temperature)
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
    print('| device | batch | path | calls | answers/s | p50 ms/call | p99 ms/call | '
          'vs generate |')
    print('|---|---|---|---|---|---|---|---|')
    for device in devices:
        loaded = from_memory(model, processor, device=device)
        for batch in args.batches:
            vlms = {}
            paths = ('fast', 'generate') if batch == 1 else ('generate',)
            for path in paths:
                vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=args.new_tokens,
                                                         batch_size=batch,
                                                         fast_path=path == 'fast'))
                forced = vlm.generation_kwargs()
                forced['min_new_tokens'] = args.new_tokens
                vlm.generation_kwargs = lambda forced=forced: forced  # type: ignore[method-assign]
                vlms[path] = vlm
            times = _measure(vlms, images, batch, args.calls)
            rate = {path: _stats(times[path], batch)[0] for path in paths}
            for path in paths:
                answers_per_s, p50, p99 = _stats(times[path], batch)
                print(f'| {device} | {batch} | {path} ({vlms[path].last_path}) | {args.calls} | '
                      f'{answers_per_s:.1f} | {p50:.1f} | {p99:.1f} | '
                      f'x{rate[path] / rate["generate"]:.2f} |', flush=True)


if __name__ == '__main__':
    main()

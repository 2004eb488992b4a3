"""
Benchmark: seconds per training step of the compact model, by ``TrainConfig.length_buckets``.

The default recipe's stage 1 spends about 95% of each step in the forward and backward pass
(encoding the batch: about 0.12 s of 1.5 s), and a third of the tokens it computes are padding:
its 16 conversations per batch run from about 200 to 400 tokens. With ``length_buckets`` the
trainer runs each batch as several passes over length-sorted groups, each padded only to its
own longest, and divides the summed answer-token loss by the batch's answer-token count once,
so loss and gradients are those of the single padded pass (``test/test_train_loop.py``).

This times real optimizer steps of ``Trainer`` on the same batches for each setting, the
settings interleaved step by step so that machine load hits them alike, and prints a table:
seconds per step (median), computed tokens per step and their padding share, the mean loss
(equal across settings up to float rounding).

Run: ``PYTHONPATH=. python benchmarks/bench_train_step.py --model /tmp/svlm_default/init
--data /tmp/svlm_default/data/train /tmp/svlm_default/data/gripper_train`` (the default
recipe's initial model and stage-1 data; about 2 min).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    """Time the steps and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--model', required=True, help='a compact model folder')
    parser.add_argument('--data', nargs='+', required=True, help='spatial QA Parquet folders')
    parser.add_argument('--buckets', nargs='+', type=int, default=[1, 2, 4])
    parser.add_argument('--steps', type=int, default=12, help='timed steps per setting')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    args = parser.parse_args()
    if args.steps < 2 or min(args.buckets) < 1 or args.batch_size < 1:
        parser.error('--steps must be >= 2, --buckets and --batch-size >= 1')

    import torch

    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.trainer import load_pretrained, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    trainers = {}
    for buckets in args.buckets:  # one model per setting, each from the same weights
        model, processor = load_pretrained(args.model)
        config = TrainConfig(model=args.model, data=tuple(args.data), general_ratio=0.05,
                             out_dir='/tmp/bench_train_step', max_steps=args.steps,
                             batch_size=args.batch_size, lr=1e-3, warmup_steps=1,
                             freeze_vision=False, progress=False, save_final=False,
                             length_buckets=buckets)
        trainer = Trainer(config, model, processor)
        trainer._setup()
        trainers[buckets] = trainer
    seconds = {b: [] for b in args.buckets}
    tokens = {b: [] for b in args.buckets}
    losses = {b: [] for b in args.buckets}
    real = []
    for step in range(args.steps):
        for buckets, trainer in trainers.items():
            examples = trainer.stream.examples(step * args.batch_size, args.batch_size)
            start = time.perf_counter()
            if buckets == 1:
                batch = trainer.encoder.batch(examples)
                loss = trainer.model(**batch).loss
                loss.backward()
            else:
                loss, _ = trainer._bucketed_backward(examples, last=True)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            seconds[buckets].append(time.perf_counter() - start)
            groups = _groups(trainer, examples, buckets)  # untimed: what was computed
            tokens[buckets].append(sum(max(int(e['input_ids'].shape[1]) for e in group)
                                       * len(group) for group in groups))
            if buckets == 1:
                real.append(sum(int(e['attention_mask'].sum()) for e in groups[0]))
            losses[buckets].append(float(loss.detach()))
    answer_tokens = float(np.mean(real)) if real else float('nan')
    print(f'torch threads {torch.get_num_threads()}, batch {args.batch_size}, '
          f'{args.steps} steps per setting (the first is left out of the median)')
    print('| length_buckets | s/step (median) | vs 1 | computed tokens/step | padding share | '
          'mean loss |')
    print('|---|---|---|---|---|---|')
    base = float(np.median(seconds[args.buckets[0]][1:]))
    for buckets in args.buckets:
        median = float(np.median(seconds[buckets][1:]))
        computed = float(np.mean(tokens[buckets]))
        print(f'| {buckets} | {median:.3f} | x{base / median:.2f} | {computed:.0f} | '
              f'{1 - answer_tokens / computed:.1%} | {np.mean(losses[buckets]):.5f} |')


def _groups(trainer, examples, buckets):
    """Return the encoded groups the trainer's bucketed pass forms for ``examples``."""
    from spatialvlm_ros.train.trainer import length_groups

    encoded = [trainer.encoder.encode(e) for e in examples]
    return [[encoded[int(i)] for i in group]
            for group in length_groups([int(e['input_ids'].shape[1]) for e in encoded], buckets)]


if __name__ == '__main__':
    main()

"""``spatialvlm train``: train or fine-tune a VLM, or run the small-scale ablations."""

from __future__ import annotations

import argparse
from typing import Any

from spatialvlm_ros.core.decoding import NUMBER_DECODINGS

# flag -> TrainConfig field, for the common overrides
_FLAGS: dict[str, str] = {
    'model': 'model', 'data': 'data', 'general_data': 'general_data',
    'general_ratio': 'general_ratio', 'eval_data': 'eval_data', 'out': 'out_dir',
    'max_steps': 'max_steps', 'batch_size': 'batch_size', 'grad_accum': 'grad_accum',
    'lr': 'lr', 'warmup_steps': 'warmup_steps', 'seed': 'seed', 'label_noise': 'label_noise_std',
    'lora_r': 'lora_r', 'bf16': 'bf16', 'save_every': 'save_every', 'max_length': 'max_length',
    'length_buckets': 'length_buckets',
}


def register(subparsers: Any) -> None:
    """Add the ``train`` command."""
    from spatialvlm_ros.evaluate.reasoning import REASONINGS

    parser = subparsers.add_parser(
        'train', help='train / fine-tune a spatial VLM (accelerate, LoRA, exact resume)',
        description='Train the model in --model on spatial QA Parquet shards mixed with general '
                    'description data. Multi-GPU: accelerate launch -m spatialvlm_ros.cli '
                    'train ... . With --ablations, train and evaluate the small-scale ablations '
                    '(with / without spatial data, frozen / unfrozen vision, label noise).')
    parser.add_argument('--config', help='YAML file of TrainConfig fields (a train: key may wrap '
                        'them); flags given explicitly override it')
    parser.add_argument('--model', help='model folder (config.json + safetensors + processor)')
    parser.add_argument('--data', nargs='+', help='spatial QA Parquet folders')
    parser.add_argument('--general-data', nargs='+', help='general description Parquet folders '
                        '(default: generated from the spatial rows)')
    parser.add_argument('--general-ratio', type=float, help='share of general examples, 0..1')
    parser.add_argument('--eval-data', nargs='+',
                        help='held-out Parquet folders: the eval loss every eval_every steps '
                             '(max-steps / 10 unless --set eval_every=N), or the ablation '
                             "suite's evaluation")
    parser.add_argument('--out', help='run folder')
    parser.add_argument('--max-steps', type=int, help='optimizer steps')
    parser.add_argument('--batch-size', type=int, help='examples per micro-batch per process')
    parser.add_argument('--grad-accum', type=int, help='micro-batches per step')
    parser.add_argument('--lr', type=float, help='peak learning rate')
    parser.add_argument('--warmup-steps', type=int, help='linear warm-up steps')
    parser.add_argument('--seed', type=int, help='seed')
    parser.add_argument('--label-noise', type=float, help='label noise std on distances')
    parser.add_argument('--lora-r', type=int, help='LoRA rank (0: full fine-tuning)')
    parser.add_argument('--bf16', choices=('auto', 'yes', 'no'), help='bf16 mixed precision')
    parser.add_argument('--save-every', type=int, help='steps between checkpoints')
    parser.add_argument('--max-length', type=int, help='token limit per example')
    parser.add_argument('--length-buckets', type=int,
                        help='forward passes per micro-batch over length-sorted groups (same '
                             'loss and gradients, less padding; default 1)')
    freeze = parser.add_mutually_exclusive_group()
    freeze.add_argument('--freeze-vision', dest='freeze_vision', action='store_true',
                        default=None, help='freeze the vision encoder')
    freeze.add_argument('--unfreeze-vision', dest='freeze_vision', action='store_false',
                        help='train the vision encoder')
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                        help='any other TrainConfig field (VALUE parsed as YAML)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the latest checkpoint in the run folder')
    parser.add_argument('--ablations', nargs='*', metavar='NAME',
                        help='run the ablation suite (all when no NAME) into --out; needs '
                             '--eval-data')
    parser.add_argument('--samples', type=int, default=1,
                        help='ablations: answers averaged per question (default 1: greedy)')
    parser.add_argument('--eval-limit', type=int, default=0,
                        help='ablations: questions evaluated per variant (default 0: all)')
    parser.add_argument('--eval-truth', choices=('value_m', 'sim'), default='sim',
                        help="ablations: grade against the simulator's truth (default) or the "
                             "engine's value")
    parser.add_argument('--eval-decoding', choices=NUMBER_DECODINGS, default='greedy',
                        help="ablations: how the one-answer pass decodes ('median': each "
                             "number at the median of the model's distribution, as the reward "
                             'node does; default greedy)')
    parser.add_argument('--eval-reasoning', choices=REASONINGS,
                        default='direct',
                        help='ablations: how comparisons are answered (see spatialvlm eval '
                             '--reasoning; default direct)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    parser.set_defaults(func=_train)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from spatialvlm_ros.cli import CommandError

    values = {field: getattr(args, flag) for flag, field in _FLAGS.items()}
    values['freeze_vision'] = args.freeze_vision
    if args.no_progress:
        values['progress'] = False
    for item in args.set:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise CommandError(f'--set expects KEY=VALUE, got {item!r}')
        values[key.strip()] = yaml.safe_load(text)
    return values


def _train(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, print_result
    from spatialvlm_ros.configfile import ConfigError, load_config
    from spatialvlm_ros.train.config import TrainConfig

    overrides = _overrides(args)
    try:
        config = load_config(TrainConfig, args.config, 'train', overrides)
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc
    if args.ablations is not None:
        return _ablations(args, config)
    if config.eval_data and not config.eval_every:  # else the held-out data is never read
        import dataclasses

        config = dataclasses.replace(config, eval_every=max(1, config.max_steps // 10))
    from spatialvlm_ros.train.trainer import train

    try:
        result = train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    summary = {'step': result.step, 'resumed_from': result.resumed_from,
               'final_loss': result.losses[-1] if result.losses else None,
               'first_loss': result.losses[0] if result.losses else None,
               'eval_losses': result.eval_losses, 'out_dir': str(result.out_dir),
               'final_dir': str(result.final_dir) if result.final_dir else None,
               'checkpoints': [str(p) for p in result.checkpoints],
               'trainable_parameters': result.trainable_parameters}
    text = (f'trained {result.step} steps (from {result.resumed_from}); loss '
            f'{summary["first_loss"]} -> {summary["final_loss"]}; '
            f'{result.trainable_parameters} trainable parameters; final model: '
            f'{summary["final_dir"]}')
    print_result(summary, args.json, text)
    return 0


def _ablations(args: argparse.Namespace, config: Any) -> int:
    from spatialvlm_ros.cli import CommandError, print_result
    from spatialvlm_ros.evaluate.runner import EvalConfig
    from spatialvlm_ros.train.ablations import markdown_table, run_ablations

    if not config.eval_data:
        raise CommandError('--ablations needs --eval-data (a held-out Parquet folder)')
    try:
        rows = run_ablations(config, config.eval_data, config.out_dir, args.ablations or None,
                             EvalConfig(samples=args.samples, limit=args.eval_limit,
                                        truth=args.eval_truth, max_new_tokens=24,
                                        batch_size=16, decoding=args.eval_decoding,
                                        reasoning=args.eval_reasoning),
                             progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    print_result(rows, args.json, markdown_table(rows))
    return 0

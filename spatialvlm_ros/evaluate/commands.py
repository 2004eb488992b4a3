"""``spatialvlm eval``: the paper's metrics for a model folder on a held-out QA set."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``eval`` command."""
    from spatialvlm_ros.core.decoding import NUMBER_DECODINGS
    from spatialvlm_ros.evaluate.reasoning import REASONINGS

    parser = subparsers.add_parser(
        'eval', help="evaluate a model on held-out spatial QA (the paper's metrics)",
        description='Ask every QA turn of the Parquet shards in DATA_DIR with its image and '
                    'score the answers: qualitative accuracy; numeric share, shares within '
                    '[50%, 200%], [66.7%, 150%], [90%, 110%] of the truth and MSE for '
                    'quantitative questions; overall, per kind and per question type; greedy '
                    'and (with --samples N > 1) averaged over N sampled answers.')
    parser.add_argument('model_dir', metavar='MODEL_DIR', help='model folder')
    parser.add_argument('data', metavar='DATA_DIR', nargs='+', help='held-out Parquet folders')
    parser.add_argument('--samples', type=int, default=1,
                        help='sampled answers averaged per question (default 1: greedy only)')
    parser.add_argument('--temperature', type=float, default=0.7,
                        help='sampling temperature (default 0.7)')
    parser.add_argument('--decoding', choices=NUMBER_DECODINGS, default='greedy',
                        help='the one-answer pass: greedy (default) or median (each number at '
                             "the median of the model's distribution, the reward node's "
                             'default)')
    parser.add_argument('--reasoning', choices=REASONINGS, default='direct',
                        help='decompose: answer size comparisons (taller, wider, bigger...), '
                             'above / below and the vertical distance from metric questions '
                             'about each object, as the paper '
                             'coordinates chain-of-thought queries (by rule here); '
                             'decompose_grounded: also left / right / front / behind, and '
                             '"how far to the left of B is A?" as a share of their horizontal '
                             "distance, from where the model's grounding head points at each "
                             'object (models trained with supervised grounding, such as the '
                             'shipped default); default direct')
    parser.add_argument('--max-new-tokens', type=int, default=48, help='answer length limit')
    parser.add_argument('--batch-size', type=int, default=8, help='questions per batch')
    parser.add_argument('--limit', type=int, default=0, help='at most N questions (0: all)')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (default 0)')
    parser.add_argument('--truth', choices=('value_m', 'sim'), default='value_m',
                        help="quantitative truth: the engine's value_m or the simulator's")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda[:N]'")
    parser.add_argument('--plot', help='PNG of predicted vs true distance')
    parser.add_argument('--items', action='store_true', help='include every answer in the JSON')
    parser.add_argument('--out', help='also write the JSON report to this file')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    parser.add_argument('--json', action='store_true', help='print JSON')
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json

    from spatialvlm_ros.cli import CommandError, output_file, print_result
    from spatialvlm_ros.core.files import write_text_atomic
    from spatialvlm_ros.evaluate.runner import EvalConfig, evaluate_model, summary_lines

    # checked before the evaluation, so that a bad path does not throw its answers away
    out = output_file(args.out, '--out') if args.out else None
    plot = output_file(args.plot, '--plot') if args.plot else None
    try:
        config = EvalConfig(samples=args.samples, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            seed=args.seed, limit=args.limit, truth=args.truth,
                            decoding=args.decoding, reasoning=args.reasoning)
        result = evaluate_model(args.model_dir, args.data, config,
                                progress=not (args.no_progress or args.json),
                                device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    report = result.to_dict(include_items=args.items)
    lines = summary_lines(result)
    if plot is not None:
        from spatialvlm_ros.evaluate.plots import plot_predicted_vs_true

        truths, predictions, types = result.distance_pairs(sampled=result.sampled is not None)
        report['plot'] = str(plot_predicted_vs_true(truths, predictions, plot, types))
        lines.append(f'plot: {report["plot"]}')
    if out is not None:
        write_text_atomic(out, json.dumps(report, indent=1, default=str))
    print_result(report, args.json, '\n'.join(lines))
    return 0

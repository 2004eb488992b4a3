"""
``spatialvlm replay``: score recorded bags with the reward node's pipeline, offline.

Every image of each bag goes through the same estimator, smoother and reward shaping as the
ROS 2 reward node, deterministically. Per bag: a CSV of every frame (answer, parsed and smoothed
distance, reward, success, true distances), a PNG plot and metrics against the bag's ground
truth (distance error against the gripper-to-target centre distance, Spearman and Kendall rank
correlation of the reward with the true negative distance, success precision / recall against
the true surface distance); for the run a summary table (summary.md, summary.json).
``--write-bag`` also writes a copy of each bag with the reward topics added.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    from spatialvlm_ros.model.estimator import (
        DEFAULT_NUMBER_DECODING,
        DEFAULT_QUESTION_TEMPLATE,
        DEFAULT_TEMPERATURE,
        NUMBER_DECODINGS,
    )
    from spatialvlm_ros.replay.estimators import ESTIMATOR_KINDS
    from spatialvlm_ros.replay.pipeline import DEFAULT_SUBJECT, SMOOTHER_KINDS
    from spatialvlm_ros.replay.source import DEFAULT_IMAGE_TOPIC

    parser = subparsers.add_parser(
        'replay', help='score bags offline with the reward pipeline and compare with the truth',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bags', nargs='+', metavar='BAG', help='bag folders or storage files')
    parser.add_argument('--subject', default=DEFAULT_SUBJECT,
                        help=f'subject phrase (default {DEFAULT_SUBJECT!r})')
    parser.add_argument('--target', help='target phrase (default: the target caption in each '
                        "bag's metadata)")
    parser.add_argument('--estimator', choices=ESTIMATOR_KINDS, default='vlm',
                        help='vlm (the spatial VLM), oracle (the true distance) or '
                             'noisy_oracle (true distance with seeded noise and unreadable '
                             'answers) (default vlm)')
    parser.add_argument('--model-folder', help='the spatial VLM folder for --estimator vlm '
                        '(default: the shipped model)')
    parser.add_argument('--answer-prefix', help="text the VLM's answers are made to start with "
                        "('' for none; default: the node's, 'The distance is')")
    parser.add_argument('--samples', type=int, default=1,
                        help="VLM answers sampled per frame and averaged, as the node's "
                             'samples_per_frame (default 1: one answer, see '
                             '--number-decoding)')
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help='VLM sampling temperature when --samples > 1 (default '
                             f'{DEFAULT_TEMPERATURE})')
    parser.add_argument('--number-decoding', choices=NUMBER_DECODINGS,
                        default=DEFAULT_NUMBER_DECODING,
                        help='with one answer per frame: median (each number at the median of '
                             "the VLM's distribution) or greedy, as the node's number_decoding "
                             f'(default {DEFAULT_NUMBER_DECODING})')
    parser.add_argument('--mirror-average', action='store_true',
                        help="also ask about each frame's mirror image and average the two "
                             "distances, as the node's mirror_average (one batch of both images)")
    parser.add_argument('--question-template', default=DEFAULT_QUESTION_TEMPLATE,
                        help="the VLM's question, with {subject} and {target} (default: the "
                             f"node's, {DEFAULT_QUESTION_TEMPLATE!r})")
    parser.add_argument('--smoother', choices=sorted(SMOOTHER_KINDS), default='median_ema',
                        help='temporal smoother (default median_ema)')
    parser.add_argument('--reward-mode', default='negative_distance',
                        help='negative_distance, progress or exp (default negative_distance)')
    parser.add_argument('--reward-scale', type=float, default=1.0,
                        help='distance scale of the reward in metres (default 1)')
    parser.add_argument('--success-threshold', type=float, default=0.05,
                        help='success when the estimated distance is at most this (m, '
                             'default 0.05)')
    parser.add_argument('--truth', choices=('centre', 'surface'), default='centre',
                        help='true distance the estimates are compared with (default centre: '
                             'the gripper-to-target centre distance the question asks)')
    parser.add_argument('--true-success', type=float, default=0.05,
                        help='true success: the --truth distance at most this (m, default 0.05)')
    parser.add_argument('--image-topic', default=DEFAULT_IMAGE_TOPIC,
                        help=f'image topic (default {DEFAULT_IMAGE_TOPIC})')
    parser.add_argument('--seed', type=int, default=0, help='noisy oracle seed (default 0)')
    parser.add_argument('--out', type=Path, default=Path('replay_out'),
                        help='output folder (default ./replay_out)')
    parser.add_argument('--write-bag', action='store_true',
                        help='also write each bag with the reward topics added')
    parser.add_argument('--no-plot', action='store_true', help='skip the PNG plots')
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay the bags and print the summary table."""
    from spatialvlm_ros.bags.errors import BagError
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.replay.runner import replay_bags, ReplayConfig

    output_folder(args.out, '--out')  # before any bag is scored
    try:
        config = ReplayConfig(
            estimator=args.estimator, model_folder=args.model_folder,
            answer_prefix=args.answer_prefix, samples=args.samples,
            temperature=args.temperature, number_decoding=args.number_decoding,
            mirror_average=args.mirror_average,
            question_template=args.question_template,
            subject=args.subject,
            target=args.target, smoother=args.smoother, reward_mode=args.reward_mode,
            reward_scale=args.reward_scale, success_threshold_m=args.success_threshold,
            truth=args.truth, true_success_m=args.true_success, image_topic=args.image_topic,
            seed=args.seed)
        summary = replay_bags(args.bags, config, args.out, write_bag=args.write_bag,
                              plot=not args.no_plot, progress=not args.json)
    except (BagError, ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    text = (args.out / 'summary.md').read_text(encoding='utf-8')
    text += f'\noutputs in {args.out}/ (per-bag CSV and PNG, summary.json)'
    print_result(summary, args.json, text)
    return 0

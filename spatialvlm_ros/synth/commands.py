"""``spatialvlm synth run|summary|plain|gripper``: spatial VQA datasets and gripper-distance QA."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``synth`` command and its ``run`` and ``summary`` subcommands."""
    parser = subparsers.add_parser('synth', help='the SpatialVLM data engine (QA datasets)')
    sub = parser.add_subparsers(dest='synth_command', metavar='SUBCOMMAND', required=True)
    run = sub.add_parser('run', help='generate a sharded chat-format dataset (resumable)',
                         description='Run the data engine over N scenes and write Parquet '
                                     'shards, metadata.jsonl and summary.json to --out. '
                                     'Re-running the same command resumes an interrupted run.')
    run.add_argument('--source', default='sim', help='scene source (default sim)')
    run.add_argument('--scenes', type=int, required=True, help='number of scenes (images)')
    run.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    run.add_argument('--out', required=True, help='output folder')
    run.add_argument('--shard-size', type=int, default=100, help='scenes per shard (default 100)')
    run.add_argument('--workers', type=int, default=1,
                     help='worker processes of the local runner (default 1)')
    run.add_argument('--runner', choices=('local', 'ray'), default='local',
                     help='local: multiprocessing pool of --workers; ray: Ray Data, local or '
                          'on a cluster (default local)')
    run.add_argument('--ray-address', default=None,
                     help="Ray cluster to join ('auto' = the one started with `ray start` on "
                          'this node); default: start a local Ray instance')
    run.add_argument('--num-cpus', type=int, default=None,
                     help='CPUs of the local Ray instance (default all; --runner ray only)')
    run.add_argument('--noise', default='none',
                     help='input noise preset: none, mild, monocular, harsh (default none)')
    run.add_argument('--qa-per-image', type=int, default=10, help='QA pairs per image')
    run.add_argument('--width', type=int, default=320, help='sim image width (default 320)')
    run.add_argument('--height', type=int, default=240, help='sim image height (default 240)')
    run.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    run.add_argument('--json', action='store_true', help='print the summary as JSON')
    run.set_defaults(func=_run)
    summary = sub.add_parser('summary', help="print a dataset folder's summary")
    summary.add_argument('dir', help='dataset folder (written by synth run)')
    summary.add_argument('--json', action='store_true', help='print JSON')
    summary.set_defaults(func=_summary)
    plain = sub.add_parser(
        'plain', help="restate a dataset's qualitative turns in one template per type",
        description='Write the unambiguous qualitative turns of engine datasets, asked in each '
                    "type's plainest template and answered in the shortest form ('Yes.', the "
                    "chosen object, 'Taller than B.'), as a dataset of their own (a curriculum "
                    'for small models; see spatialvlm_ros/synth/plain.py). Resumable.')
    plain.add_argument('sources', nargs='+', help='engine dataset folders or Parquet shards')
    plain.add_argument('--out', required=True, help='output folder')
    plain.add_argument('--families', nargs='*', default=[],
                       help='predicate/choice families to keep, e.g. tall short wide thin big '
                            'small (default: all)')
    plain.add_argument('--kinds', nargs='+', default=['predicate', 'choice', 'classify'],
                       help='answer kinds to keep (default: predicate choice classify)')
    plain.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    plain.add_argument('--json', action='store_true', help='print the summary as JSON')
    plain.set_defaults(func=_plain)
    grip = sub.add_parser(
        'gripper', help='gripper-to-object distance QA from simulated robot episodes',
        description='Render simulated Panda episodes and write the reward node\'s question ("how '
                    'far is the gripper from the X?") with exact answers as sharded chat-format '
                    'Parquet (spatialvlm_ros/synth/gripper.py). Resumable.')
    grip.add_argument('--out', required=True, help='output folder')
    grip.add_argument('--episodes', type=int, default=100, help='episodes (default 100)')
    grip.add_argument('--seed', type=int, default=0, help='base seed (default 0)')
    grip.add_argument('--frames-per-episode', type=int, default=30,
                      help='frames each episode spans (default 30)')
    grip.add_argument('--samples-per-episode', type=int, default=6,
                      help='frames of each episode rendered and written (default 6)')
    grip.add_argument('--qa-per-frame', type=int, default=2,
                      help='questions per frame, the target first (default 2)')
    grip.add_argument('--answer-style', choices=('human', 'metric'), default='human',
                      help="'human' rounding in mixed units (default) or fixed-width metres "
                           "('The distance is 0.46 m.')")
    grip.add_argument('--n-objects', type=int, nargs=2, default=[3, 8], metavar=('MIN', 'MAX'),
                      help='objects on the table (default 3 8; 1 1: the target alone)')
    grip.add_argument('--width', type=int, default=320, help='image width (default 320)')
    grip.add_argument('--height', type=int, default=240, help='image height (default 240)')
    grip.add_argument('--workers', type=int, default=1, help='render processes (default 1)')
    grip.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    grip.add_argument('--json', action='store_true', help='print the summary as JSON')
    grip.set_defaults(func=_gripper)


def _run(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.synth.dataset import DatasetConfig, DatasetError, run_dataset
    from spatialvlm_ros.synth.pipeline import EngineConfig

    output_folder(args.out, '--out')
    try:
        engine = EngineConfig(seed=args.seed, noise=args.noise, qa_per_image=args.qa_per_image)
        source_kwargs = {'width': args.width, 'height': args.height} if args.source == 'sim' \
            else {}
        config = DatasetConfig(out=args.out, num_scenes=args.scenes, shard_size=args.shard_size,
                               source=args.source, source_kwargs=source_kwargs, engine=engine)
        if args.runner == 'ray':
            from spatialvlm_ros.synth.ray_runner import run_dataset_ray

            summary = run_dataset_ray(config, num_cpus=args.num_cpus, address=args.ray_address,
                                      progress=not args.no_progress)
        else:
            summary = run_dataset(config, workers=args.workers, progress=not args.no_progress)
    except (ValueError, DatasetError) as exc:
        raise CommandError(str(exc)) from exc
    print_result(summary, args.json, format_summary(summary))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, print_result
    from spatialvlm_ros.synth.dataset import DatasetError, read_summary

    try:
        summary = read_summary(args.dir)
    except (OSError, DatasetError) as exc:
        raise CommandError(str(exc)) from exc
    print_result(summary, args.json, format_summary(summary))
    return 0


def _plain(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.synth.plain import PlainConfig, write_plain_dataset

    output_folder(args.out, '--out')
    try:
        config = PlainConfig(families=tuple(args.families), kinds=tuple(args.kinds))
        summary = write_plain_dataset(args.sources, args.out, config,
                                      progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    turns = ', '.join(f'{k} {v}' for k, v in summary['turns'].items())
    print_result(summary, args.json,
                 f'{summary["rows"]} rows ({turns}) in {args.out}; shards written '
                 f'{summary["shards_written"]}, already there {summary["shards_skipped"]}')
    return 0


def _gripper(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.synth.gripper import GripperDataConfig, write_gripper_dataset

    output_folder(args.out, '--out')
    try:
        config = GripperDataConfig(
            out=args.out, episodes=args.episodes, seed=args.seed,
            frames_per_episode=args.frames_per_episode,
            samples_per_episode=args.samples_per_episode, qa_per_frame=args.qa_per_frame,
            width=args.width, height=args.height, answer_style=args.answer_style,
            n_objects=tuple(args.n_objects))
        summary = write_gripper_dataset(config, progress=not args.no_progress,
                                        workers=args.workers)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print_result(summary, args.json,
                 f'{summary["rows"]} rows, {summary["qa"]} questions in {args.out}; shards '
                 f'written {summary["written"]}, already there {summary["skipped"]}')
    return 0


def _runner_text(run: dict[str, Any]) -> str:
    if run.get('runner') == 'ray':
        where = run.get('ray_address') or f'local, {run.get("workers") or "all"} CPUs'
        return f'ray ({where})'
    return f'{run.get("workers")} workers'


def format_summary(summary: dict[str, Any]) -> str:
    """Return the human-readable summary text."""
    lines = [f'images {summary["images"]}, kept {summary["images_kept"]}, rows '
             f'{summary.get("rows", "?")}, shards {summary.get("shards", "?")}, '
             f'QA {summary["total_qa"]} ({summary["qa_qualitative"]} qualitative)']
    if summary['images_rejected']:
        lines.append('rejected: ' + ', '.join(f'{k} {v}'
                                              for k, v in summary['images_rejected'].items()))
    lines.append(f'canonicalization failures: {summary["canonical_failures"]}')
    for reason, n in summary['canonical_failure_reasons'].items():
        lines.append(f'  {reason}: {n}')
    lines.append('mean ms per image: ' + ', '.join(
        f'{k} {v:.1f}' for k, v in summary['stage_mean_ms'].items()))
    run = summary.get('last_run')
    if run and run.get('scenes_per_s'):
        lines.append(f'last run: {run["scenes"]} scenes in {run["seconds"]:.1f} s '
                     f'({run["scenes_per_s"]:.2f} scenes/s, {_runner_text(run)})')
    agree = summary.get('sim_agreement', {})
    for kind, c in agree.items():
        known = c.get('agree', 0) + c.get('disagree', 0)
        if known:
            lines.append(f'sim truth agreement ({kind}): {c.get("agree", 0)}/{known}')
    lines.append('QA per type:')
    for name, n in summary['qa_per_type'].items():
        lines.append(f'  {name:<24} {n}')
    return '\n'.join(lines)

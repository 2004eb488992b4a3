"""``spatialvlm sim scene|episode``: render a random scene or record an episode as a bag."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``sim`` command and its ``scene`` and ``episode`` subcommands."""
    parser = subparsers.add_parser('sim', help='simulated tabletop scenes and episodes')
    sub = parser.add_subparsers(dest='sim_command', metavar='SUBCOMMAND', required=True)
    scene = sub.add_parser('scene', help='render one random scene and print its ground truth')
    scene.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    scene.add_argument('--width', type=int, default=320, help='image width (default 320)')
    scene.add_argument('--height', type=int, default=240, help='image height (default 240)')
    scene.add_argument('--out', help='folder for rgb.png, depth.npy and seg.png')
    scene.add_argument('--json', action='store_true', help='print JSON')
    scene.set_defaults(func=_scene)
    episode = sub.add_parser('episode', help='generate an episode and write it as a ROS 2 bag')
    episode.add_argument('--config', help='YAML file of EpisodeConfig fields (see '
                         'config/sim_episode.yaml); flags given explicitly override it')
    episode.add_argument('--seed', type=int, help='random seed (default 0)')
    episode.add_argument('--scenario',
                         help='approach, approach_retreat, pause, grasp_lift or '
                              'distractor_first (default approach)')
    episode.add_argument('--rate', type=float, help='frame rate in Hz, 10..30 (default 15)')
    episode.add_argument('--frames', type=int, help='number of frames (default 60)')
    episode.add_argument('--width', type=int, help='image width (default 320)')
    episode.add_argument('--height', type=int, help='image height (default 240)')
    episode.add_argument('--target', help='target object id (default: random)')
    episode.add_argument('--out', help='bag folder to write (default: do not write)')
    episode.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                         help='rosbag2 storage (default sqlite3)')
    episode.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    episode.add_argument('--progress', action='store_true', help='show a progress bar')
    episode.add_argument('--json', action='store_true', help='print JSON')
    episode.set_defaults(func=_episode)


def _scene(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.sim.scene import sample_scene, SceneConfig, World
    from spatialvlm_ros.sim.truth import capture

    if args.out:
        output_folder(args.out, '--out')
    try:
        config = SceneConfig(width=args.width, height=args.height)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.seed < 0:
        raise CommandError(f'--seed must be non-negative, got {args.seed}')
    scene = sample_scene(config, np.random.default_rng(args.seed))
    with World(scene) as world:
        frame = capture(world, 0, 0)
    objects = [{'id': o.object_id, 'category': o.category, 'attributes': o.attributes,
                'captions': list(o.captions), 'centroid_world': o.centroid_world,
                'centroid_cam': o.centroid_cam, 'half_extents': o.obb_world.half_extents,
                'visible_pixels': o.visible_pixels,
                'distance_centre': frame.distance_centre[o.object_id],
                'distance_surface': frame.distance_surface[o.object_id]}
               for o in frame.objects]
    result: dict[str, Any] = {'seed': args.seed, 'camera': scene.metadata()['camera'],
                              'gripper_world': frame.gripper_world, 'objects': objects}
    if args.out:
        import matplotlib.pyplot as plt

        os.makedirs(args.out, exist_ok=True)
        plt.imsave(os.path.join(args.out, 'rgb.png'), frame.rgb)
        np.save(os.path.join(args.out, 'depth.npy'), frame.depth)
        seg = frame.segmentation.astype(np.float64) + 1.0  # 0 = none, 1.. = objects
        plt.imsave(os.path.join(args.out, 'seg.png'), seg, cmap='tab10', vmin=0, vmax=9)
        result['out'] = args.out
    lines = [f'seed {args.seed}: {len(objects)} objects, {args.width}x{args.height}, '
             f'fx {scene.intrinsics.fx:.1f}']
    for o in objects:
        lines.append(f'  {o["id"]:<12} {o["captions"][-1]!r:<40} px {o["visible_pixels"]:>6}  '
                     f'centre {o["distance_centre"]:.3f} m  surface '
                     f'{o["distance_surface"]:.3f} m')
    if args.out:
        lines.append(f'wrote rgb.png, depth.npy, seg.png to {args.out}')
    print_result(result, args.json, '\n'.join(lines))
    return 0


def _episode(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, output_folder, print_result
    from spatialvlm_ros.configfile import load_config
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    if args.out:
        output_folder(args.out, '--out')
    overrides = {'seed': args.seed, 'scenario': args.scenario, 'rate_hz': args.rate,
                 'num_frames': args.frames, 'width': args.width, 'height': args.height,
                 'target_id': args.target}
    try:
        config = load_config(EpisodeConfig, args.config, 'episode', overrides)
        episode = generate_episode(config, progress=args.progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    distances = [f.distance_surface[episode.target_id] for f in episode.frames]
    duration = (episode.frames[-1].stamp_ns - episode.frames[0].stamp_ns) / 1e9
    result: dict[str, Any] = {
        'seed': config.seed, 'scenario': config.scenario, 'frames': len(episode.frames),
        'rate_hz': episode.rate_hz, 'duration_s': duration, 'target_id': episode.target_id,
        'target_caption': episode.metadata['target_caption'],
        'captions': list(episode.target_captions),
        'distractor_id': episode.metadata['distractor_id'],
        'distance_surface': {'start': distances[0], 'end': distances[-1],
                             'min': min(distances)},
        'bag': None}
    if args.out:
        from spatialvlm_ros.bags.errors import BagError
        from spatialvlm_ros.bags.writer import write_episode

        try:
            result['bag'] = str(write_episode(episode, args.out, storage=args.storage,
                                              overwrite=args.overwrite))
        except (BagError, OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
    d = result['distance_surface']
    text = '\n'.join([
        f'{config.scenario} seed {config.seed}: {len(episode.frames)} frames at '
        f'{episode.rate_hz:g} Hz ({duration:.2f} s)',
        f'target:   {episode.target_id} ({result["target_caption"]!r})',
        f'captions: {", ".join(result["captions"])}',
        f'surface distance: start {d["start"]:.3f} m, end {d["end"]:.3f} m, '
        f'min {d["min"]:.3f} m',
        f'bag:      {result["bag"] or "(not written; use --out)"}'])
    print_result(result, args.json, text)
    return 0

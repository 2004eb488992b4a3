"""
Canonicalization on the shared NYU Depth v2 frames: the chosen plane, with and without the trap.

For each frame in ``--data`` (``depth/sync_depth_*.png``, uint16 millimetres, 0 = no reading)
runs ``synth.canonical.Canonicalizer`` on every valid depth pixel (no surface mask, no gravity
hint: the prior up is the optical frame's -y) with the engine's default ``'horizontal'`` plane
search and with plain largest-plane RANSAC (``'largest'``), and prints a markdown table: plane
normal (camera frame), its angle to the camera's up axis, the camera height above it and the
inlier share. Seeded (``--seed``): the same numbers on every run.

Usage: ``python benchmarks/nyu_canonical.py [--data ../shared/data/nyu_rgbd]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth.canonical import CanonicalizationConfig, Canonicalizer

NYU_FX_FY_CX_CY = (518.8579, 519.46961, 325.58245, 253.73617)


def load_depth(path: Path) -> np.ndarray:
    """Return the metric depth (float32 metres, nan = none) of a uint16 millimetre PNG."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(path)
    depth = raw.astype(np.float32) / 1000.0
    depth[raw == 0] = np.nan
    return depth


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    default = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'nyu_rgbd'
    parser.add_argument('--data', type=Path, default=default, help='nyu_rgbd folder')
    parser.add_argument('--seed', type=int, default=0, help='RANSAC seed')
    args = parser.parse_args()
    print('| frame | plane search | ok | normal (camera frame) | angle to camera up (deg) '
          '| camera height (m) | inliers | note |')
    print('|---|---|---|---|---|---|---|---|')
    for path in sorted((args.data / 'depth').glob('sync_depth_*.png')):
        depth = load_depth(path)
        height, width = depth.shape
        intrinsics = CameraIntrinsics(*NYU_FX_FY_CX_CY, width, height)
        frame = path.stem.rsplit('_', 1)[-1]
        for search in ('horizontal', 'largest'):
            config = CanonicalizationConfig(plane_search=search)
            result = Canonicalizer(config).run(depth, intrinsics,
                                               np.random.default_rng(args.seed))
            normal = ('-' if result.plane_normal is None else
                      '(' + ', '.join(f'{v:+.2f}' for v in result.plane_normal) + ')')
            note = result.reason
            if result.plane_normal is not None and not note:
                note = 'floor-like (level)' if result.angle_to_up_deg <= 30 else 'vertical plane'
            print(f'| {frame} | {search} | {"yes" if result.ok else "no"} | {normal} | '
                  f'{result.angle_to_up_deg:.1f} | {result.camera_height:.2f} | '
                  f'{result.inlier_fraction:.0%} | {note} |', flush=True)


if __name__ == '__main__':
    main()

"""
Experiment: what a compact vision tower learns about each patch from fresh simulator renders.

``exp_real_pairs.py``'s connector arm pre-trains the tower and projector on 2,000 engine images
and memorises them (object type right on 66% of object patches of training images, 11.5% of
held-out ones). Here every training frame is a fresh render (``sim.parallel.render_scenes``,
scene seeds from 100000, two arm poses per scene; held-out scenes from seed 600000) and each
patch gets its labels from the exact segmentation (:func:`segment_patch_labels`): the colour
(12 palette colours) and the catalogue type (14) of the object with the most pixels on the
patch, or background. A throw-away linear head on the projector's output tokens predicts the
patch's column and row (MSE), colour and type (cross-entropy, background weighted 0.1); the
tower and projector train with it (AdamW, one-cycle lr), frames flipped left-right at random
(labels flipped with them). Every 100 steps the table gives the colour and type accuracy on
object patches and the background accuracy, on 300 training frames and on the held-out frames.

``--save`` writes the tower, projector and head as safetensors for
``exp_real_pairs.py --connector``.

Run: ``PYTHONPATH=. python benchmarks/exp_patch_labels.py --scenes 4000 --steps 600`` (about
5 min of rendering on 2 cores, then about 2.5 min per 600 steps at 96 px).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time
from typing import Any, Sequence

import numpy as np

TRAIN_SEED = 100_000
HELDOUT_SEED = 600_000


def camera_config(fov: Sequence[float] | None, cam_distance: Sequence[float] | None) -> Any:
    """Return the engine's ``SceneConfig`` with the given camera ranges (``None``: the default)."""
    from spatialvlm_ros.sim.scene import SceneConfig

    ranges = (('fov_deg', fov), ('cam_distance', cam_distance))
    return SceneConfig(**{k: tuple(v) for k, v in ranges if v is not None})


def render_labelled(first_seed: int, scenes: int, frames_per_scene: int, grid: int,
                    min_share: float, scene_config: Any = None,
                    kind_grids: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """
    Render ``scenes`` scenes and label every patch of every frame.

    :param scene_config: a ``SceneConfig`` (camera ranges); ``None`` for the engine's default.
    :param kind_grids: more grids to label the type at, returned as ``kind{g}``.
    :return: ``rgb`` ``uint8`` ``(N, H, W, 3)``; ``colour`` and ``kind`` ``int64``
        ``(N, grid * grid)`` with ``len(PALETTE)`` / ``len(CATALOG)`` for background;
        ``object_px`` ``float64`` ``(M,)``, the square root of each visible object's pixel
        count (its typical side in pixels of the full-size render).
    """
    from spatialvlm_ros.sim.catalog import CATALOG, PALETTE
    from spatialvlm_ros.sim.parallel import render_scenes
    from spatialvlm_ros.sim.scene import SceneConfig
    from spatialvlm_ros.train.grounding import segment_patch_labels

    colours, kinds = list(PALETTE), list(CATALOG)
    rendered = render_scenes(range(first_seed, first_seed + scenes),
                             scene_config or SceneConfig(),
                             frames_per_scene=frames_per_scene, progress=True)
    rgb, colour, kind, object_px = [], [], [], []
    kind_at: dict[int, list[np.ndarray]] = {g: [] for g in kind_grids}
    for frames in rendered:
        for frame in frames:
            counts = np.bincount(frame.segmentation.reshape(-1) + 1,
                                 minlength=len(frame.objects) + 1)[1:]
            object_px.extend(np.sqrt(counts[counts > 0]).tolist())
            colour_of = [colours.index(o.attributes['colour']) for o in frame.objects]
            kind_of = [kinds.index(o.category) for o in frame.objects]
            rgb.append(frame.rgb)
            colour.append(segment_patch_labels(frame.segmentation, colour_of, grid,
                                               len(colours), min_share))
            kind.append(segment_patch_labels(frame.segmentation, kind_of, grid, len(kinds),
                                             min_share))
            for g in kind_grids:
                kind_at[g].append(segment_patch_labels(frame.segmentation, kind_of, g,
                                                       len(kinds), min_share))
    return {'rgb': np.stack(rgb), 'colour': np.stack(colour), 'kind': np.stack(kind),
            'object_px': np.asarray(object_px),
            **{f'kind{g}': np.stack(labels) for g, labels in kind_at.items()}}


def mirror(labels: np.ndarray, grid: int) -> np.ndarray:
    """Return ``(N, grid * grid)`` patch labels of the left-right mirrored images."""
    return labels.reshape(-1, grid, grid)[:, :, ::-1].reshape(labels.shape)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Render, train, and return one row per evaluation."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.sim.catalog import CATALOG, PALETTE
    from spatialvlm_ros.train.connector import image_tokens

    grid = args.image_size // args.patch_size
    n_colour, n_kind = len(PALETTE), len(CATALOG)
    scene_config = camera_config(args.fov, args.cam_distance)
    start = time.perf_counter()
    train = render_labelled(TRAIN_SEED, args.scenes, args.frames_per_scene, grid,
                            args.min_share, scene_config)
    heldout = render_labelled(HELDOUT_SEED, args.heldout_scenes, args.frames_per_scene, grid,
                              args.min_share, scene_config)
    side = np.percentile(train['object_px'], [10, 50, 90]) * args.image_size / scene_config.width
    print(f"rendered {len(train['rgb'])} training and {len(heldout['rgb'])} held-out frames "
          f'in {time.perf_counter() - start:.0f} s; object patches '
          f"{(train['colour'] < n_colour).mean():.1%}; object side at the model's input "
          f'(sqrt of pixels, 10/50/90th percentile): {side[0]:.1f} / {side[1]:.1f} / '
          f'{side[2]:.1f} px', flush=True)

    torch.manual_seed(args.seed)
    model, processor = build_compact_model(
        CompactVLMConfig(image_size=args.image_size, patch_size=args.patch_size,
                         seed=args.seed), build_default_tokenizer())
    inner = model.model
    hidden = inner.multi_modal_projector.linear_2.out_features
    head = torch.nn.Linear(hidden, 2 + n_colour + 1 + n_kind + 1)
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    place = torch.tensor(np.stack([columns, rows], 1) / max(grid - 1, 1) * 2 - 1,
                         dtype=torch.float32)
    trained = list(inner.vision_tower.parameters()) \
        + list(inner.multi_modal_projector.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps,
                                                   pct_start=0.05)
    colour_weight = torch.ones(n_colour + 1)
    colour_weight[-1] = 0.1  # the background covers about 80% of the patches
    kind_weight = torch.ones(n_kind + 1)
    kind_weight[-1] = 0.1
    split = (slice(0, 2), slice(2, 3 + n_colour), slice(3 + n_colour, 4 + n_colour + n_kind))

    def accuracy(data: dict[str, np.ndarray]) -> tuple[float, float, float]:
        model.eval()
        colour, kind = [], []
        with torch.no_grad():
            for s in range(0, min(300, len(data['rgb'])), 50):
                out = head(image_tokens(model, processor, list(data['rgb'][s:s + 50])))
                colour.append(out[..., split[1]].argmax(-1).numpy())
                kind.append(out[..., split[2]].argmax(-1).numpy())
        model.train()
        colour_hat, kind_hat = np.concatenate(colour), np.concatenate(kind)
        truth_colour, truth_kind = data['colour'][:len(colour_hat)], data['kind'][:len(kind_hat)]
        objects = truth_colour < n_colour
        return (float((colour_hat == truth_colour)[objects].mean()),
                float((kind_hat == truth_kind)[objects].mean()),
                float((colour_hat[~objects] == n_colour).mean()))

    rng = np.random.default_rng(args.seed)
    out_rows, window = [], []
    model.train()
    for step in range(1, args.steps + 1):
        pick = rng.integers(len(train['rgb']), size=args.batch_size)
        images, colour, kind = train['rgb'][pick], train['colour'][pick], train['kind'][pick]
        flip = rng.random(args.batch_size) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        colour = np.where(flip[:, None], mirror(colour, grid), colour)
        kind = np.where(flip[:, None], mirror(kind, grid), kind)
        out = head(image_tokens(model, processor, list(images)))  # (B, P, 4 + colours + kinds)
        losses = (
            torch.nn.functional.mse_loss(out[..., split[0]], place.expand_as(out[..., split[0]])),
            torch.nn.functional.cross_entropy(out[..., split[1]].reshape(-1, n_colour + 1),
                                              torch.as_tensor(colour).reshape(-1),
                                              weight=colour_weight),
            torch.nn.functional.cross_entropy(out[..., split[2]].reshape(-1, n_kind + 1),
                                              torch.as_tensor(kind).reshape(-1),
                                              weight=kind_weight))
        optimizer.zero_grad()
        sum(losses).backward()
        optimizer.step()
        schedule.step()
        window.append([float(x.detach()) for x in losses])
        if step % 100 == 0 or step == args.steps:
            mean = np.mean(window[-100:], axis=0)
            seen, unseen = accuracy(train), accuracy(heldout)
            out_rows.append({'step': step, 'position_mse': mean[0], 'colour_ce': mean[1],
                             'type_ce': mean[2], 'train': seen, 'heldout': unseen,
                             'seconds': time.perf_counter() - start})
            row = out_rows[-1]
            print(f'| {args.image_size}/{args.patch_size} | {step} | {mean[0]:.4f} | '
                  f'{mean[1]:.3f} | {mean[2]:.3f} | {seen[0]:.3f} | {seen[1]:.3f} | '
                  f'{unseen[0]:.3f} | {unseen[1]:.3f} | {unseen[2]:.3f} | '
                  f"{row['seconds']:.0f} |", flush=True)
    if args.save:
        from safetensors.torch import save_file

        tensors = {f'tower.{k}': v for k, v in inner.vision_tower.state_dict().items()}
        tensors.update({f'projector.{k}': v
                        for k, v in inner.multi_modal_projector.state_dict().items()})
        tensors.update({f'head.{k}': v for k, v in head.state_dict().items()})
        layout = {'image_size': args.image_size, 'patch_size': args.patch_size,
                  'head': {'position': [0, 2], 'colour': [2, 3 + n_colour],
                           'type': [3 + n_colour, 4 + n_colour + n_kind]}}
        args.save.parent.mkdir(parents=True, exist_ok=True)
        partial = args.save.with_name(args.save.name + '.partial')
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial),
                  metadata={'layout': json.dumps(layout)})
        partial.replace(args.save)
        print(f'saved {args.save}', flush=True)
    return out_rows


def main() -> None:
    """Parse the arguments, run, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--scenes', type=int, default=4000, help='training scenes')
    parser.add_argument('--heldout-scenes', type=int, default=150)
    parser.add_argument('--frames-per-scene', type=int, default=2)
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--patch-size', type=int, default=16)
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--min-share', type=float, default=0.03,
                        help="least share of a patch's pixels that makes it an object patch")
    parser.add_argument('--fov', type=float, nargs=2, metavar=('LO', 'HI'),
                        help="the camera's vertical field of view range in degrees "
                             "(default: the engine's SceneConfig)")
    parser.add_argument('--cam-distance', type=float, nargs=2, metavar=('LO', 'HI'),
                        help="the camera's distance range in metres (default: the engine's)")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--save', type=Path, help='write tower, projector, head (safetensors)')
    args = parser.parse_args()
    if min(args.scenes, args.heldout_scenes, args.frames_per_scene, args.steps,
           args.batch_size) < 1:
        parser.error('counts must be >= 1')
    if args.patch_size < 1 or args.image_size % args.patch_size:
        parser.error('--patch-size must divide --image-size')
    print('| input / patch | step | position MSE | colour CE | type CE | train colour | '
          'train type | held-out colour | held-out type | held-out background | seconds |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    run(args)


if __name__ == '__main__':
    main()

"""
Experiment: which vision tower learns each patch's object type from simulator renders.

``exp_patch_labels.py`` found that the compact model's SigLIP tower (96 px, 16 px patches)
learns each patch's colour but not the object's type (26% on held-out object patches). This
script trains three towers on the same renders and labels, with the same loss and schedule,
and compares them:

- ``siglip16``: the compact model's tower and projector (36 tokens), as in ``exp_patch_labels``;
- ``siglip8``: the same tower with 8 px patches (144 tokens);
- ``swin``: the compact model with its Swin tower (``CompactVLMConfig(vision_tower='swin')``:
  4 px patches, windowed attention, two patch mergings; 36 tokens) and projector;
- ``focalnet``: the compact model with its FocalNet tower
  (``CompactVLMConfig(vision_tower='focalnet')``: a 7x7 stride-4 convolution, depthwise
  convolutions in focal modulation, stride-2 convolutions between three stages; 36 tokens) and
  projector, all transformers code;
- ``focalnet192``: the same on a 192 px input with a fourth stage (36 tokens of 32 px cells);
- ``cnn``: a small convolutional network (five 3x3 convolutions, four with stride 2, then a
  3x3 and a 1x1 convolution) on the same 96 px input, one output per 16 px cell (36 cells);
- ``cnn192``: the same with a 192 px input and one more stride-2 convolution (36 cells).

Labels: each patch's object type (14 catalogue types) from the exact segmentation
(:func:`spatialvlm_ros.train.grounding.segment_patch_labels`), or background (weight 0.1).
AdamW, one-cycle lr, batch 32, random left-right flips. The table gives the training loss and
the type accuracy on object patches of 300 training and of the held-out frames.

``--fov`` and ``--cam-distance`` set the camera ranges (``SceneConfig``); ``--cache`` keeps the
renders in an ``.npz`` file, so a second run with other arms skips the rendering; ``--save``
writes each trained arm (``load_arm`` builds it again, e.g. for ``exp_real_pairs.py
--type-tower``). ``--aux-weight`` adds, on the compact arms, a second head that regresses each
patch's place and mean colour (:func:`aux_targets`), so that a tower pre-trained here and then
frozen still tells the decoder where each cell is (a FocalNet has no position embedding) and
its colour; ``--export-model`` writes such a tower into a compact model folder.

``--export-model DIR`` (with one compact-model arm and the ``--save`` path it was trained with)
writes a compact model folder with that arm's tower and projector, for ``spatialvlm
train-default --init-from DIR``.

Run: ``PYTHONPATH=. python benchmarks/exp_type_tower.py --fov 25 35 --cam-distance 0.55 0.8
--cache /tmp/close.npz`` (about 6 min of rendering on 2 cores; training per 1,200 steps:
cnn 5 min, siglip16 4 min, siglip8 18 min).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
import time
from typing import Any, Callable

import numpy as np

TRAIN_SEED = 100_000
HELDOUT_SEED = 600_000
ARMS = ('siglip16', 'siglip8', 'swin', 'focalnet', 'focalnet192', 'cnn', 'cnn192')


def _patch_labels() -> Any:
    """Return the ``exp_patch_labels`` module (renders and patch labels), from beside this file."""
    path = Path(__file__).resolve().parent / 'exp_patch_labels.py'
    spec = importlib.util.spec_from_file_location('exp_patch_labels', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(first_seed: int, scenes: int, scene_config: Any) -> dict[str, np.ndarray]:
    """
    Render ``scenes`` scenes (two frames each) and label each patch's type at both grids.

    :return: ``rgb`` ``uint8`` ``(N, H, W, 3)``; ``kind6`` and ``kind12`` ``int64``
        ``(N, g * g)`` with ``len(CATALOG)`` for background.
    """
    data = _patch_labels().render_labelled(first_seed, scenes, 2, 6, 0.03, scene_config,
                                           kind_grids=(6, 12))
    return {key: data[key] for key in ('rgb', 'kind6', 'kind12')}


Renders = dict[str, np.ndarray]


def load_or_render(args: argparse.Namespace) -> tuple[Renders, Renders]:
    """Return the training and held-out renders, from ``args.cache`` when it matches."""
    key = np.array([args.scenes, args.heldout_scenes, *(args.fov or (0, 0)),
                    *(args.cam_distance or (0, 0))], dtype=np.float64)
    if args.cache and args.cache.exists():
        with np.load(args.cache) as z:
            if np.array_equal(z['key'], key):
                return ({k[3:]: z[k] for k in z.files if k.startswith('tr_')},
                        {k[3:]: z[k] for k in z.files if k.startswith('ho_')})
        print(f'{args.cache} holds other renders; rendering again', flush=True)
    scene_config = _patch_labels().camera_config(args.fov, args.cam_distance)
    start = time.perf_counter()
    train = render(TRAIN_SEED, args.scenes, scene_config)
    heldout = render(HELDOUT_SEED, args.heldout_scenes, scene_config)
    print(f"rendered {len(train['rgb'])} + {len(heldout['rgb'])} frames in "
          f'{time.perf_counter() - start:.0f} s', flush=True)
    if args.cache:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        partial = args.cache.with_name(args.cache.name + '.partial.npz')
        np.savez(partial, key=key, **{f'tr_{k}': v for k, v in train.items()},
                 **{f'ho_{k}': v for k, v in heldout.items()})
        partial.replace(args.cache)
    return train, heldout


Arm = tuple[list[Any], Callable[[np.ndarray], Any], Callable[[bool], None], int]


COMPACT_ARMS = ('siglip', 'swin', 'focalnet')


def arm_model(arm: str) -> tuple[Any, Any]:
    """Return the fresh compact ``(model, processor)`` of an arm in ``COMPACT_ARMS`` (seed 0)."""
    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    if arm.startswith('siglip'):
        config = CompactVLMConfig(patch_size=int(arm[len('siglip'):]), seed=0)
    elif arm == 'focalnet192':  # four stages: 4 px cells, then 8, 16 and 32 px
        config = CompactVLMConfig(image_size=192, patch_size=32, stage_depths=(2, 2, 2, 2),
                                  vision_tower='focalnet', seed=0)
    else:
        config = CompactVLMConfig(vision_tower=arm, seed=0)
    return build_compact_model(config, build_default_tokenizer())


def export_model(arm: str, saved: Path, out: Path, calibration: Any) -> Path:
    """
    Write a compact model folder whose tower and projector are a trained arm's (``--save``).

    The throw-away type head (and ``--aux-weight``'s head) is dropped. The projector is centred
    and scaled to a mean token norm of 1 on ``calibration`` images (``train.connector``, as
    ``exp_real_pairs``' connector arm does), so its tokens sit at the decoder's scale. The rest
    is the fresh model's.
    """
    from safetensors.torch import load_file
    import torch

    from spatialvlm_ros.model.compact import save_compact
    from spatialvlm_ros.train.connector import centre_projector, scale_projector

    if not arm.startswith(COMPACT_ARMS):
        raise ValueError(f'only the compact-model arms {COMPACT_ARMS} make a model, not {arm!r}')
    model, processor = arm_model(arm)
    inner = model.model
    params = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters()]
    weights = load_file(str(saved))
    if len(weights) not in (len(params) + 2, len(params) + 4):  # + the heads' weights, biases
        raise ValueError(f'{saved} does not hold a {arm!r} arm')
    with torch.no_grad():
        for i, p in enumerate(params):
            if tuple(weights[f'{i:04d}'].shape) != tuple(p.shape):
                raise ValueError(f'{saved} does not hold a {arm!r} arm')
            p.copy_(weights[f'{i:04d}'])
    model.eval()
    centre_projector(model, processor, list(calibration))
    scale_projector(model, processor, list(calibration), 1.0)
    return save_compact(model, processor, out)


def build_arm(arm: str, n_out: int, n_aux: int = 0) -> Arm:
    """
    Return ``(parameters, forward, set_train, grid)`` for one arm.

    ``forward`` maps ``uint8`` ``(B, H, W, 3)`` images to ``(B, grid * grid, n_out)`` logits,
    or with ``n_aux`` (compact arms only) to ``(B, grid * grid, n_out + n_aux)``: the logits,
    then a second linear head's outputs on the same tokens.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    if arm.startswith(COMPACT_ARMS):
        from spatialvlm_ros.train.connector import image_tokens

        model, processor = arm_model(arm)
        inner = model.model
        width = inner.multi_modal_projector.linear_2.out_features
        head = nn.Linear(width, n_out)
        aux = nn.Linear(width, n_aux) if n_aux else None
        params = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(),
                  *head.parameters(), *(aux.parameters() if aux is not None else ())]
        grid = int(round(model.config.image_seq_length ** 0.5))

        def compact_forward(images: np.ndarray) -> Any:
            tokens = image_tokens(model, processor, list(images))
            if aux is None:
                return head(tokens)
            return torch.cat([head(tokens), aux(tokens)], dim=-1)

        return params, compact_forward, model.train, grid
    if n_aux:
        raise ValueError(f'--aux-weight needs a compact-model arm, not {arm!r}')

    size = 192 if arm == 'cnn192' else 96
    widths = (32, 64, 96, 128, 160, 192) if size == 192 else (32, 64, 96, 128, 192)
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(widths[i - 1] if i else 3, width, 3, stride=2 if i else 1,
                             padding=1), nn.GELU()]
    layers += [nn.Conv2d(widths[-1], 192, 3, padding=1), nn.GELU(), nn.Conv2d(192, n_out, 1)]
    net = nn.Sequential(*layers)

    def forward(images: np.ndarray) -> Any:
        x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True) * 2.0 - 1.0
        return net(x).flatten(2).transpose(1, 2)  # (B, 36, n_out)

    return list(net.parameters()), forward, net.train, 6


AUX_NAMES = ('x', 'y', 'red', 'green', 'blue')


def aux_targets(images: np.ndarray, grid: int) -> np.ndarray:
    """
    Return each patch's place and mean colour, the ``--aux-weight`` targets.

    :param images: RGB ``uint8`` ``(B, H, W, 3)``.
    :return: ``float32`` ``(B, grid * grid, 5)``: the patch centre's column and row scaled to
        ``[-1, 1]``, then its mean red, green and blue scaled to ``[-1, 1]``
        (``train.grounding.patch_mean_colour``). A convolutional tower has no position
        embedding, so it must learn where its cells are.
    """
    from spatialvlm_ros.train.grounding import patch_mean_colour

    colour = patch_mean_colour(images, grid)
    centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid * 2.0 - 1.0
    place = np.stack(np.meshgrid(centres, centres, indexing='xy'), -1).reshape(-1, 2)  # (x, y)
    return np.concatenate([np.broadcast_to(place, (len(images), grid * grid, 2)), colour],
                          axis=-1).astype(np.float32)


def run_arm(arm: str, train: dict[str, np.ndarray], heldout: dict[str, np.ndarray],
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one arm; return a row per evaluation."""
    import torch
    from torch.nn import functional as F

    from spatialvlm_ros.sim.catalog import CATALOG
    from spatialvlm_ros.train.grounding import mirror_patch_labels

    n_kind = len(CATALOG)
    torch.manual_seed(args.seed)
    aux_weight = getattr(args, 'aux_weight', 0.0)
    n_aux = len(AUX_NAMES) if aux_weight > 0 else 0
    params, forward, set_train, grid = build_arm(arm, n_kind + 1, n_aux)
    labels, held_labels = train[f'kind{grid}'], heldout[f'kind{grid}']
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps,
                                                   pct_start=0.05)
    weight = torch.ones(n_kind + 1)
    weight[-1] = 0.1  # background: most patches

    def accuracy(images: np.ndarray, truth: np.ndarray) -> float:
        set_train(False)
        with torch.no_grad():
            predicted = np.concatenate([forward(images[s:s + 50])[..., :n_kind + 1]
                                        .argmax(-1).numpy()
                                        for s in range(0, min(300, len(images)), 50)])
        set_train(True)
        truth = truth[:len(predicted)]
        objects = truth < n_kind
        return float((predicted == truth)[objects].mean())

    rng = np.random.default_rng(args.seed)
    rows, losses, start = [], [], time.perf_counter()
    set_train(True)
    for step in range(1, args.steps + 1):
        pick = rng.integers(len(train['rgb']), size=args.batch_size)
        images, kind = train['rgb'][pick], labels[pick]
        flip = rng.random(args.batch_size) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        kind = np.where(flip[:, None], mirror_patch_labels(kind, grid), kind)
        out = forward(images)  # (B, grid * grid, n_kind + 1 + n_aux)
        logits = out[..., :n_kind + 1]
        loss = F.cross_entropy(logits.reshape(-1, n_kind + 1), torch.as_tensor(kind).reshape(-1),
                               weight=weight)
        if n_aux:
            target = torch.as_tensor(aux_targets(images, grid))
            loss = loss + aux_weight * F.mse_loss(out[..., n_kind + 1:], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            if n_aux:
                set_train(False)
                with torch.no_grad():
                    held = heldout['rgb'][:100]
                    error = (forward(held)[..., n_kind + 1:].numpy()
                             - aux_targets(held, grid))
                set_train(True)
                # mean absolute error: place in patches, colour in 0-255 levels
                print(f'  held-out place error {np.abs(error[..., :2]).mean() * grid / 2:.2f} '
                      f'patches, colour error {np.abs(error[..., 2:]).mean() * 127.5:.1f} '
                      'levels', flush=True)
            rows.append({'arm': arm, 'step': step,
                         'loss': float(np.mean(losses[-args.eval_every:])),
                         'train': accuracy(train['rgb'], labels),
                         'heldout': accuracy(heldout['rgb'], held_labels),
                         'seconds': time.perf_counter() - start})
            row = rows[-1]
            print(f"| {arm} | {step} | {row['loss']:.3f} | {row['train']:.3f} | "
                  f"{row['heldout']:.3f} | {row['seconds']:.0f} |", flush=True)
    if getattr(args, 'save', None) is not None:
        save_arm(params, args.save.with_name(f'{args.save.stem}_{arm}.safetensors'))
    return rows


def save_arm(params: list[Any], path: Path) -> None:
    """Write an arm's trained parameters (safetensors, in :func:`build_arm`'s order)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.partial')
    save_file({f'{i:04d}': p.detach().contiguous() for i, p in enumerate(params)}, str(partial))
    partial.replace(path)


def load_arm(arm: str, path: Path, n_out: int) -> tuple[Callable[[np.ndarray], Any], int]:
    """
    Return ``(forward, grid)`` of an arm built by :func:`build_arm` with saved parameters.

    ``forward`` gives the type logits, also for an arm saved with ``--aux-weight``'s head.
    """
    from safetensors.torch import load_file
    import torch

    saved = load_file(str(path))
    params, forward, set_train, grid = build_arm(arm, n_out)
    if arm.startswith(COMPACT_ARMS) and len(saved) == len(params) + 2:  # --aux-weight's head
        params, aux_forward, set_train, grid = build_arm(arm, n_out, len(AUX_NAMES))

        def forward(images: np.ndarray) -> Any:
            return aux_forward(images)[..., :n_out]  # the type logits only

    shapes = [tuple(p.shape) for p in params]
    if [tuple(saved[k].shape) for k in sorted(saved)] != shapes:
        raise ValueError(f'{path} does not hold the parameters of a {arm!r} arm')
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(saved[f'{i:04d}'])
    set_train(False)
    return forward, grid


def main() -> None:
    """Parse the arguments, render (or load), train each arm, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--arms', nargs='+', choices=ARMS, default=list(ARMS))
    parser.add_argument('--scenes', type=int, default=4000, help='training scenes (2 frames)')
    parser.add_argument('--heldout-scenes', type=int, default=150)
    parser.add_argument('--steps', type=int, default=1200)
    parser.add_argument('--eval-every', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--fov', type=float, nargs=2, metavar=('LO', 'HI'),
                        help="vertical field of view range in degrees (default: the engine's)")
    parser.add_argument('--cam-distance', type=float, nargs=2, metavar=('LO', 'HI'),
                        help="camera distance range in metres (default: the engine's)")
    parser.add_argument('--cache', type=Path, help='.npz file to keep the renders in')
    parser.add_argument('--save', type=Path,
                        help='write each trained arm to STEM_ARM.safetensors beside this path')
    parser.add_argument('--export-model', type=Path,
                        help='with one compact arm and --save: write a compact model folder '
                             'with the saved tower and projector (no training)')
    parser.add_argument('--aux-weight', type=float, default=0.0,
                        help='compact arms: weight of a second head that regresses each '
                             "patch's place and mean colour (0: off)")
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if min(args.scenes, args.heldout_scenes, args.steps, args.eval_every, args.batch_size) < 1:
        parser.error('counts must be >= 1')
    if args.export_model and (len(args.arms) != 1 or args.save is None):
        parser.error('--export-model needs one arm and the --save path it was trained with')

    import torch

    torch.set_num_threads(2)
    train, heldout = load_or_render(args)
    if args.export_model:
        arm = args.arms[0]
        saved = args.save.with_name(f'{args.save.stem}_{arm}.safetensors')
        folder = export_model(arm, saved, args.export_model, train['rgb'][:64])
        print(f'wrote {folder}: the {arm} tower and projector of {saved}')
        return
    print('| arm | step | loss | type, training patches | type, held-out patches | seconds |')
    print('|---|---|---|---|---|---|')
    for arm in args.arms:
        run_arm(arm, train, heldout, args)


if __name__ == '__main__':
    main()

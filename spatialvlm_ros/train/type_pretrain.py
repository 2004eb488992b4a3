"""
Pre-training of a compact VLM's vision tower and projector on each patch's object type.

Sessions 8-14 (``benchmarks/RESULTS.md``) found what the compact model lacks to answer
questions about named objects: image tokens that say which catalogue object each patch shows.
A decoder with supervised attention answers 'Is A to the left of B?' on unseen images from
tokens that carry a tower's per-patch type, the patch's colour and its place (0.86-0.91), and
fails without the type (0.66). This module trains the tower and projector for exactly that,
on fresh simulator renders with exact labels:

- :func:`render_type_labels` renders scenes (two arm poses each) with the recipe's camera and
  labels every patch with the catalogue type of the object that covers most of it
  (``train.grounding.segment_patch_labels``) or background;
- :func:`run_type_pretrain` trains the tower and projector with
  ``train.grounding.pretrain_connector``: type (cross-entropy, background down-weighted),
  the patch's place and its mean colour (regressions; a convolutional tower has no position
  embedding, and the captions name colours), random left-right flips, a one-cycle schedule.
  With ``fold`` (the default) the projector's last layer is then replaced by a fixed random
  mix of the head's outputs (:func:`fold_projector`: the type logits scaled to a mean norm of
  1, the place and colour as predicted) and scaled to word-embedding size; without it the head
  is dropped and the projector centred and scaled (``train.connector``). The model is saved
  to a new folder, atomically, with
  ``type_pretrain.json`` (config, losses, the type accuracy on held-out object patches).
  Re-running it on a finished folder skips; a finished folder made with another config is an
  error.

Formats: images RGB ``uint8`` ``(H, W, 3)``; labels ``int64`` ``(N, grid * grid)`` row-major,
``len(CATALOG)`` for background. ``torch``, ``transformers`` and the simulator are imported
inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import math
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Any

import numpy as np

REPORT_NAME = 'type_pretrain.json'


@dataclass(frozen=True)
class TypePretrainConfig:
    """
    How the tower is pre-trained on patch types (every number ``type_pretrain.json`` records).

    :ivar scenes: rendered training scenes (seeds ``seed``, ``seed + 1``, ...).
    :ivar frames_per_scene: frames per scene (arm poses; 1..10).
    :ivar seed: first training scene seed; also seeds the sampler and the head.
    :ivar heldout_scenes: scenes (seeds from ``heldout_seed``) whose object patches measure the
        type accuracy in the report.
    :ivar heldout_seed: their first seed.
    :ivar steps: optimizer steps.
    :ivar batch_size: frames per step.
    :ivar lr: peak AdamW learning rate of the one-cycle schedule.
    :ivar background_weight: cross-entropy weight of background patches (types weigh 1).
    :ivar position_weight: weight of the place regression.
    :ivar colour_weight: weight of the mean-colour regression.
    :ivar min_share: a patch whose largest object covers less of it is background.
    :ivar width: render width in pixels.
    :ivar height: render height in pixels.
    :ivar fov_deg: the scenes' vertical field of view range in degrees (``SceneConfig``).
    :ivar cam_distance: their camera distance range in metres.
    :ivar workers: rendering processes.
    :ivar wide_share: share of the training and of the held-out scenes rendered with the
        simulator's default camera (``sim.scene.SceneConfig``'s: the robot episodes' and the
        reward node's frames, where objects look about half as large) instead of ``fov_deg`` /
        ``cam_distance``; the held-out accuracy is also reported per camera.
    :ivar fold: fold the head into the projector (:func:`fold_projector`). On the 'left of'
        pairs test (``benchmarks/exp_real_pairs.py``) a decoder learnt nothing from the
        trained projector's own tokens and 0.84-0.91 from the folded ones, with the same tower.
    """

    scenes: int = 4000
    frames_per_scene: int = 2
    seed: int = 100_000
    heldout_scenes: int = 100
    heldout_seed: int = 600_000
    steps: int = 2400
    batch_size: int = 32
    lr: float = 1e-3
    background_weight: float = 0.1
    position_weight: float = 1.0
    colour_weight: float = 1.0
    min_share: float = 0.03
    width: int = 320
    height: int = 240
    fov_deg: tuple[float, float] = (42.0, 60.0)
    cam_distance: tuple[float, float] = (0.75, 1.25)
    workers: int = 2
    fold: bool = True
    wide_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ('scenes', 'frames_per_scene', 'heldout_scenes', 'steps', 'batch_size',
                     'workers'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
        if self.frames_per_scene > 10:
            raise ValueError(f'frames_per_scene must be <= 10, got {self.frames_per_scene}')
        if min(self.seed, self.heldout_seed) < 0:
            raise ValueError('seeds must be >= 0')
        if self.seed < self.heldout_seed < self.seed + self.scenes \
                or self.heldout_seed < self.seed < self.heldout_seed + self.heldout_scenes:
            raise ValueError(f'the held-out seeds ({self.heldout_seed}+) overlap the training '
                             f'seeds ({self.seed}+)')
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f'lr must be positive, got {self.lr}')
        for name in ('background_weight', 'position_weight', 'colour_weight'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value}')
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f'min_share must be in [0, 1], got {self.min_share}')
        if not 0.0 <= self.wide_share <= 1.0:
            raise ValueError(f'wide_share must be in [0, 1], got {self.wide_share}')
        object.__setattr__(self, 'fov_deg', tuple(float(v) for v in self.fov_deg))
        object.__setattr__(self, 'cam_distance', tuple(float(v) for v in self.cam_distance))
        self.scene_config()  # raises ValueError on a bad size or camera range

    def scene_config(self, wide: bool = False) -> Any:
        """Return the ``sim.scene.SceneConfig`` of the scenes (``wide``: the default camera)."""
        from spatialvlm_ros.sim.scene import SceneConfig

        if wide:
            return SceneConfig(width=self.width, height=self.height)
        return SceneConfig(width=self.width, height=self.height, fov_deg=self.fov_deg,
                           cam_distance=self.cam_distance)

    def split(self, scenes: int) -> tuple[int, int]:
        """Return how many of ``scenes`` use the recipe's camera and the default camera."""
        wide = int(round(self.wide_share * scenes))
        return scenes - wide, wide


@dataclass
class TypePretrainResult:
    """What :func:`run_type_pretrain` did: the folder, whether it skipped, and the report."""

    folder: Path
    skipped: bool
    history: list[dict[str, float]]
    report: dict[str, Any]


def _log(message: str) -> None:
    print(f'[type-pretrain] {message}', file=sys.stderr, flush=True)


def render_type_labels(config: TypePretrainConfig, grid: int, first_seed: int, scenes: int,
                       progress: bool = True, chunk: int = 250,
                       wide: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """
    Render ``scenes`` scenes (``config.frames_per_scene`` frames each) and label their patches.

    Rendered in chunks of ``chunk`` scenes, keeping only the images and labels (a frame's
    depth and segmentation are dropped once labelled); ``wide``: with the simulator's default
    camera (``config.scene_config(wide=True)``).

    :return: ``rgb`` ``uint8`` ``(N, H, W, 3)`` and ``labels`` ``int64`` ``(N, grid * grid)``:
        the catalogue index (``sim.catalog.CATALOG`` order) of the object covering most of
        each patch, ``len(CATALOG)`` for background.
    """
    from tqdm.auto import tqdm

    from spatialvlm_ros.sim.catalog import CATALOG
    from spatialvlm_ros.sim.parallel import render_scenes
    from spatialvlm_ros.train.grounding import segment_patch_labels

    kinds = list(CATALOG)
    scene_config = config.scene_config(wide)
    rgb, labels = [], []
    bar = tqdm(total=scenes, desc='type pre-training renders', unit='scene',
               disable=not progress, dynamic_ncols=True)
    for start in range(first_seed, first_seed + scenes, chunk):
        seeds = range(start, min(start + chunk, first_seed + scenes))
        for frames in render_scenes(seeds, scene_config, frames_per_scene=config.frames_per_scene,
                                    workers=config.workers):
            for frame in frames:
                rgb.append(frame.rgb)
                labels.append(segment_patch_labels(
                    frame.segmentation, [kinds.index(o.category) for o in frame.objects], grid,
                    len(kinds), config.min_share))
        bar.update(len(seeds))
    bar.close()
    return np.stack(rgb), np.stack(labels).astype(np.int64)


def render_split(config: TypePretrainConfig, grid: int, first_seed: int, scenes: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Render ``scenes`` scenes, the ``config.wide_share`` last of them with the default camera.

    :return: ``rgb``, ``labels`` (as :func:`render_type_labels`) and ``wide`` ``bool``
        ``(N,)``: which frames the default camera took.
    """
    close, wide = config.split(scenes)
    parts = []
    for count, start, is_wide in ((close, first_seed, False), (wide, first_seed + close, True)):
        if count:
            rgb, labels = render_type_labels(config, grid, start, count, progress, wide=is_wide)
            parts.append((rgb, labels, np.full(len(rgb), is_wide)))
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore


def object_patch_accuracy(model: Any, processor: Any, head: Any, images: np.ndarray,
                          labels: np.ndarray, background: int, batch_size: int = 50,
                          groups: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """
    Return the share of object patches (label != ``background``) whose type the head names.

    :param groups: optional ``name -> bool (N,)`` frame masks, each scored apart from the same
        predictions (a group without object patches is left out).
    :return: ``{'all': share}`` plus one share per group.
    """
    import torch

    from spatialvlm_ros.train.connector import image_tokens

    was_training = model.training
    model.eval()
    predicted = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                out = head(image_tokens(model, processor, list(images[start:start + batch_size])))
                predicted.append(out[..., 2:2 + background + 1].argmax(-1).cpu().numpy())
    finally:
        model.train(was_training)
    objects = labels != background
    if not objects.any():
        raise ValueError('the held-out frames hold no object patches')
    hits = np.concatenate(predicted) == labels
    shares = {'all': float(hits[objects].mean())}
    for name, rows in (groups or {}).items():
        if objects[rows].any():
            shares[name] = float(hits[rows][objects[rows]].mean())
    return shares


def fold_projector(model: Any, processor: Any, head: Any, classes: int,
                   images: list[np.ndarray], seed: int) -> dict[str, float]:
    """
    Make the projector put out only what ``head`` reads from its tokens, at balanced scales.

    ``head`` is :func:`train.grounding.pretrain_connector`'s: its rows are the place (2), the
    ``classes`` class logits and (optionally) the mean colour (3). The class rows are divided
    by the mean norm of the class logits over ``images`` (about 15 after training, against
    about 1 for place and colour together, which would otherwise be drowned out), then the
    projector's last layer ``W2, b2`` becomes ``M @ H @ W2, M @ (H @ b2 + c)`` with ``H, c``
    the head and ``M`` a fixed random ``(hidden, rows)`` matrix seeded by ``seed``, and is
    scaled to a mean token norm of 1. The model stays a standard LLaVA model.

    :return: the class logits' mean norm before scaling, the rows kept and the final scale.
    """
    import torch

    from spatialvlm_ros.train.connector import projector_tokens, scale_projector

    last = model.model.multi_modal_projector.linear_2
    weight = head.weight.detach().to(torch.float32).cpu().clone()
    bias = head.bias.detach().to(torch.float32).cpu().clone()
    tokens = projector_tokens(model, processor, images)  # (N * T, hidden)
    logits = tokens @ weight[2:2 + classes].T + bias[2:2 + classes]
    norm = float(logits.norm(dim=-1).mean())
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f'the class logits have mean norm {norm}; is the model intact?')
    weight[2:2 + classes] /= norm
    bias[2:2 + classes] /= norm
    mix = torch.randn(last.out_features, weight.shape[0],
                      generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w2, b2 = last.weight.detach().float().cpu(), last.bias.detach().float().cpu()
        last.weight.copy_((mix @ weight @ w2).to(last.weight))
        last.bias.copy_((mix @ (weight @ b2 + bias)).to(last.bias))
    factor = scale_projector(model, processor, images, 1.0)
    return {'class_logit_norm': norm, 'rows': int(weight.shape[0]), 'scale': factor}


def _config_record(config: TypePretrainConfig) -> dict[str, Any]:
    record = asdict(config)
    if not record['wide_share']:  # folders finished before the option existed stay finished
        del record['wide_share']
    return json.loads(json.dumps(record))


def run_type_pretrain(model_dir: str | Path, out_dir: str | Path, config: TypePretrainConfig,
                      device: str = 'cpu', progress: bool = True) -> TypePretrainResult:
    """
    Pre-train the tower and projector of the model in ``model_dir`` on patch types.

    The model is loaded in float32 (``model.loading.load_vlm``), trained as the module
    docstring says, and saved with ``save_compact`` to a temporary folder beside ``out_dir``
    with ``type_pretrain.json``, which is then renamed to ``out_dir``: a finished ``out_dir``
    always holds the json. Only the tower and the projector change.

    Resumable: an ``out_dir`` that holds a ``type_pretrain.json`` with the same config is
    returned as it is. One made with another config raises ``ValueError``; an existing
    ``out_dir`` without the json raises ``FileExistsError`` (it is not overwritten).

    :param model_dir: a compact (LLaVA) model folder, e.g. ``train-default``'s ``out/init``.
    :param out_dir: the folder to write.
    :param config: the pre-training settings.
    :param device: ``'cpu'``, ``'cuda[:N]'`` or ``'auto'``.
    :param progress: show tqdm bars.
    """
    from spatialvlm_ros.model.compact import save_compact
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.sim.catalog import CATALOG
    from spatialvlm_ros.train.connector import centre_projector, scale_projector
    from spatialvlm_ros.train.grounding import ConnectorPretrainConfig, pretrain_connector
    from spatialvlm_ros.train.vision_pretrain import finished_report, model_grid

    out = Path(out_dir)
    report = finished_report(out, REPORT_NAME, _config_record(config), 'type pre-training')
    if report is not None:
        _log(f'{out} is finished; skipping')
        return TypePretrainResult(out, True, [], report)

    start = time.perf_counter()
    loaded = load_vlm(model_dir, device=device, dtype='float32')
    model, processor = loaded.model, loaded.processor
    grid = model_grid(model)
    background = len(CATALOG)
    _log(f'rendering {config.scenes} + {config.heldout_scenes} held-out scenes x '
         f'{config.frames_per_scene} frames ({grid}x{grid} patches)')
    images, labels, _ = render_split(config, grid, config.seed, config.scenes, progress)
    held_images, held_labels, held_wide = render_split(config, grid, config.heldout_seed,
                                                       config.heldout_scenes, progress)
    rendered = time.perf_counter() - start
    _log(f'training the tower and projector for {config.steps} steps on {len(images)} frames')
    weights = [1.0] * background + [config.background_weight]
    history, head = pretrain_connector(
        model, processor, list(images), labels, background + 1,
        ConnectorPretrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                                position_weight=config.position_weight, seed=config.seed,
                                colour_weight=config.colour_weight, flip=True, one_cycle=True),
        class_weights=weights, return_head=True)
    model.eval()
    groups = {'close': ~held_wide, 'wide': held_wide} if config.wide_share > 0 else None
    shares = object_patch_accuracy(model, processor, head, held_images, held_labels, background,
                                   groups=groups)
    accuracy = shares.pop('all')
    per_camera = {f'heldout_object_patch_accuracy_{name}': v for name, v in shares.items()}
    calibration = list(images[:64])
    if config.fold:
        projector = {'fold': fold_projector(model, processor, head, background + 1,
                                            calibration, config.seed)}
    else:
        projector = {'centring': centre_projector(model, processor, calibration).to_dict(),
                     'scale': scale_projector(model, processor, calibration, 1.0)}

    def window(key: str, first: bool) -> float | None:
        values = [h[key] for h in (history[:50] if first else history[-50:]) if key in h]
        return float(np.mean(values)) if values else None

    report = {
        'config': _config_record(config),
        'model_in': str(Path(model_dir)),
        'frames': len(images),
        'heldout_frames': len(held_images),
        'grid': grid,
        'object_patch_share': float((labels != background).mean()),
        'heldout_object_patch_accuracy': accuracy,
        **per_camera,
        'majority_type_share': float(np.bincount(
            held_labels[held_labels != background], minlength=background).max()
            / max(1, int((held_labels != background).sum()))),
        **{f'{key}_{part}': window(key, part == 'first')
           for key in ('class', 'position', 'colour', 'accuracy') for part in ('first', 'last')},
        'projector': projector,
        'render_seconds': round(rendered, 1),
        'seconds': round(time.perf_counter() - start, 1),
    }
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    save_compact(model, processor, tmp)
    (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1), encoding='utf-8')
    os.replace(tmp, out)
    _log(f'type accuracy on held-out object patches {accuracy:.3f} (majority '
         f"{report['majority_type_share']:.3f}); saved {out}")
    return TypePretrainResult(out, False, history, report)

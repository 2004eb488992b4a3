"""
Pre-training of a compact VLM's SigLIP vision tower on dense simulator targets.

The tower (plus a throw-away linear head) learns to predict, for every patch of its input, a
few numbers the simulator knows exactly (:func:`patch_targets`): the log median depth, the
share of object pixels and a heat map of the gripper's projected grasp point; the
``'extended'`` targets add the log distance from the grasp point to the patch's surface and the
patch's mean RGB. A compact model whose tower was pre-trained this way, and then kept frozen,
learned gripper distances far better than one trained from scratch
(``benchmarks/exp_vision_pretrain.py``).

Steps: :func:`render_targets` renders robot episodes (``spatialvlm_ros.sim.episode``) and
computes every frame's targets; :func:`pretrain_vision` trains the tower in memory;
:func:`run_vision_pretrain` does both for a saved compact model folder and writes the model with
the trained tower (everything else unchanged) to a new folder, atomically, with
``vision_pretrain.json`` (the config and the losses). Re-running it on a finished folder skips;
a finished folder made with another config is an error.

Formats: images RGB ``uint8`` ``(H, W, 3)``; depth ``float32`` metres ``(H, W)`` (``nan`` = no
reading); segmentation ``int32`` ``(H, W)`` (``-1`` = background); the grasp point in metres in
the camera optical frame. ``torch``, ``transformers`` and the simulator are imported inside the
functions that need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
import math
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np

TARGET_SETS = ('basic', 'extended')
CHANNELS: dict[str, tuple[str, ...]] = {
    'basic': ('log_depth', 'object_share', 'grasp_heat'),
    'extended': ('log_depth', 'object_share', 'grasp_heat', 'log_grasp_distance',
                 'red', 'green', 'blue'),
}
REPORT_NAME = 'vision_pretrain.json'


@dataclass(frozen=True)
class VisionPretrainConfig:
    """
    How the vision tower is pre-trained (every number ``vision_pretrain.json`` records).

    :ivar episodes: rendered simulator episodes (scenarios cycle through ``SCENARIOS``).
    :ivar frames_per_episode: frames per episode (10..10000, the episode generator's range).
    :ivar seed: episode ``e`` uses seed ``seed + e``; also seeds ``torch`` (the head's
        initialisation) and the batch sampler.
    :ivar steps: optimizer steps.
    :ivar batch_size: frames per step.
    :ivar lr: peak AdamW learning rate, decayed to 0 along a cosine over ``steps``.
    :ivar targets: ``'basic'`` (3 channels per patch) or ``'extended'`` (7), see
        :func:`patch_targets`.
    :ivar width: rendered frame width in pixels (16..4096).
    :ivar height: rendered frame height in pixels (16..4096).
    """

    episodes: int = 120
    frames_per_episode: int = 10
    seed: int = 70_000
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    targets: str = 'basic'
    width: int = 320
    height: int = 240

    def __post_init__(self) -> None:
        for name in ('episodes', 'frames_per_episode', 'seed', 'steps', 'batch_size', 'width',
                     'height'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f'{name} must be an integer, got {value!r}')
        for name in ('episodes', 'steps', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not 10 <= self.frames_per_episode <= 10_000:
            raise ValueError('frames_per_episode must be within 10..10000 (the episode '
                             f"generator's range), got {self.frames_per_episode}")
        if self.seed < 0:
            raise ValueError(f'seed must be non-negative, got {self.seed}')
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f'lr must be a positive finite number, got {self.lr!r}')
        if self.targets not in TARGET_SETS:
            raise ValueError(f'targets must be one of {TARGET_SETS}, got {self.targets!r}')
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f'width and height must be within 16..4096 px, got '
                             f'{self.width}x{self.height}')

    @property
    def extended(self) -> bool:
        """Return True for the 7-channel ``'extended'`` targets."""
        return self.targets == 'extended'

    @property
    def channels(self) -> tuple[str, ...]:
        """Return the names of the target channels, in order."""
        return CHANNELS[self.targets]


@dataclass
class VisionPretrainResult:
    """
    What :func:`run_vision_pretrain` did.

    :ivar folder: the model folder with the pre-trained tower.
    :ivar skipped: True when the folder was already finished (nothing was trained).
    :ivar losses: the loss of every step (empty when skipped).
    :ivar report: the content of ``vision_pretrain.json``.
    """

    folder: Path
    skipped: bool
    losses: list[float] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _log(message: str) -> None:
    print(f'[vision-pretrain] {message}', file=sys.stderr, flush=True)


def _cell_median(values: np.ndarray, cells: np.ndarray,
                 n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Return the median of ``values`` per cell id (``np.median`` semantics) and the counts.

    :param values: ``(N,)`` finite values.
    :param cells: ``(N,)`` cell ids in ``[0, n_cells)``.
    :return: ``(n_cells,)`` medians (0 for empty cells) and ``(n_cells,)`` counts.
    """
    counts = np.bincount(cells, minlength=n_cells)
    medians = np.zeros(n_cells, np.float64)
    if values.size == 0:
        return medians, counts
    order = np.lexsort((values, cells))  # by cell, then by value
    ordered = values[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    full = counts > 0
    lo = starts[full] + (counts[full] - 1) // 2
    hi = starts[full] + counts[full] // 2
    medians[full] = 0.5 * (ordered[lo] + ordered[hi])
    return medians, counts


def patch_targets(frame: Any, grid: int, extended: bool = False) -> np.ndarray:
    """
    Return the per-patch targets of a rendered frame, ``(grid, grid, C)`` ``float32``.

    The frame is cut into ``grid`` x ``grid`` cells along its own height and width (row and
    column edges ``np.linspace(0, size, grid + 1)`` rounded down), which is how the square
    processor resize maps it onto the model's ``grid = image_size // patch_size`` patches.
    Channels (``C`` = 3, or 7 with ``extended``):

    0. log of the median valid depth of the cell (valid: finite and > 0; ``nan`` pixels are
       ignored); 0 when the cell has no valid pixel;
    1. the share of the cell's pixels that belong to an object (segmentation >= 0);
    2. the grasp-point heat map: ``exp(-d**2 / (2 * s**2))`` with ``d`` the pixel distance from
       the cell's centre to the grasp point projected with the intrinsics (continuous pixel
       coordinates, pixel centres at +0.5) and ``s = width / grid``; 0 when the grasp point is
       not in front of the camera;
    3. (extended) the median over the cell's pixels of ``log(|p - g| + 0.01)``, with ``p`` the
       pixel back-projected from its depth and ``g`` the grasp point (metres, camera frame);
       over the cell's valid object pixels when it has any (a small object is what a question
       names), else over its valid pixels; 0 when it has no valid pixel;
    4-6. (extended) the cell's mean red, green and blue, in [0, 1].

    :param frame: an object with ``rgb`` (``uint8`` ``(H, W, 3)``), ``depth`` (``float32``
        metres ``(H, W)``), ``segmentation`` (``int`` ``(H, W)``), ``intrinsics`` (``fx``,
        ``fy``, ``cx``, ``cy``) and ``gripper_cam`` (grasp point ``(3,)``, metres, camera
        frame), e.g. a ``spatialvlm_ros.core.datatypes.Frame``.
    :param grid: patches per side (``image_size // patch_size`` of the model).
    :param extended: add channels 3-6.
    """
    if int(grid) < 1:
        raise ValueError(f'grid must be >= 1, got {grid}')
    grid = int(grid)
    depth = np.asarray(frame.depth, dtype=np.float64)
    seg = np.asarray(frame.segmentation)
    if depth.ndim != 2 or seg.shape != depth.shape:
        raise ValueError(f'depth {depth.shape} and segmentation {seg.shape} must be the same '
                         '(H, W)')
    h, w = depth.shape
    if h < grid or w < grid:
        raise ValueError(f'a {w}x{h} frame cannot be cut into {grid}x{grid} cells')
    rows = np.linspace(0, h, grid + 1).astype(int)
    cols = np.linspace(0, w, grid + 1).astype(int)
    row_cell = np.searchsorted(rows, np.arange(h), side='right') - 1  # (H,)
    col_cell = np.searchsorted(cols, np.arange(w), side='right') - 1  # (W,)
    cells = (row_cell[:, None] * grid + col_cell[None, :]).ravel()  # (H * W,)
    n = grid * grid
    pixels = np.bincount(cells, minlength=n).astype(np.float64)  # every cell is non-empty
    channels = len(CHANNELS['extended' if extended else 'basic'])
    out = np.zeros((n, channels), np.float64)

    flat_depth = depth.ravel()
    valid = np.isfinite(flat_depth) & (flat_depth > 0)
    median_depth, depth_count = _cell_median(flat_depth[valid], cells[valid], n)
    out[:, 0] = np.log(np.where(depth_count > 0, median_depth, 1.0))
    objects = (seg >= 0).ravel()
    out[:, 1] = np.bincount(cells, weights=objects.astype(np.float64), minlength=n) / pixels

    k = frame.intrinsics
    grip = np.asarray(frame.gripper_cam, np.float64).reshape(3)
    centre_u = (cols[:-1] + cols[1:]) / 2.0  # (grid,)
    centre_v = (rows[:-1] + rows[1:]) / 2.0
    if np.all(np.isfinite(grip)) and grip[2] > 0:
        u = k.fx * grip[0] / grip[2] + k.cx
        v = k.fy * grip[1] / grip[2] + k.cy
        d2 = (centre_u[None, :] - u) ** 2 + (centre_v[:, None] - v) ** 2  # (grid, grid)
        out[:, 2] = np.exp(-d2 / (2.0 * (w / grid) ** 2)).ravel()

    if extended:
        vv, uu = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
        z = np.where(valid.reshape(h, w), depth, 0.0)
        xyz = np.stack([(uu - k.cx) / k.fx * z, (vv - k.cy) / k.fy * z, z], axis=-1)
        to_grip = np.log(np.linalg.norm(xyz - grip, axis=-1) + 0.01).ravel()  # (H * W,)
        on_object = valid & objects
        near_object, object_count = _cell_median(to_grip[on_object], cells[on_object], n)
        near_any, _ = _cell_median(to_grip[valid], cells[valid], n)
        out[:, 3] = np.where(object_count > 0, near_object, near_any)
        rgb = np.asarray(frame.rgb, np.float64).reshape(-1, 3)
        for c in range(3):
            out[:, 4 + c] = np.bincount(cells, weights=rgb[:, c], minlength=n) / pixels / 255.0
    return out.reshape(grid, grid, channels).astype(np.float32)


def model_grid(model: Any) -> int:
    """
    Return the vision tower's output tokens per side.

    From the model's ``image_seq_length`` when it is a square (a Swin or FocalNet tower's
    ``patch_size`` is its first stage's 4 px, not the output cell), else ``image_size //
    patch_size``.
    """
    tokens = int(getattr(model.config, 'image_seq_length', 0) or 0)
    grid = math.isqrt(tokens)
    if tokens and grid * grid == tokens:
        return grid
    vision = model.config.vision_config
    return int(vision.image_size) // int(vision.patch_size)


def vision_tower(model: Any) -> Any:
    """Return the vision tower module of a LLaVA-style model."""
    tower = getattr(getattr(model, 'model', None), 'vision_tower', None)
    if tower is None:
        tower = getattr(model, 'vision_tower', None)
    if tower is None:
        raise ValueError(f'{type(model).__name__} has no vision_tower')
    return tower


def render_targets(config: VisionPretrainConfig, grid: int,
                   progress: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """
    Render ``config.episodes`` robot episodes; return their frames and patch targets.

    Episode ``e`` has seed ``config.seed + e`` and scenario ``SCENARIOS[e % len(SCENARIOS)]``.

    :return: the RGB ``uint8`` ``(H, W, 3)`` frames (``episodes * frames_per_episode``) and
        their targets, ``float32`` ``(N, grid, grid, C)`` (see :func:`patch_targets`).
    """
    from tqdm.auto import tqdm

    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode, SCENARIOS

    images, targets = [], []
    for e in tqdm(range(config.episodes), desc='render', disable=not progress,
                  dynamic_ncols=True):
        episode = generate_episode(EpisodeConfig(
            seed=config.seed + e, num_frames=config.frames_per_episode,
            scenario=SCENARIOS[e % len(SCENARIOS)], width=config.width, height=config.height))
        for frame in episode.frames:
            images.append(frame.rgb)
            targets.append(patch_targets(frame, grid, config.extended))
    return images, np.stack(targets)


def pretrain_vision(model: Any, processor: Any, images: Sequence[np.ndarray],
                    targets: np.ndarray, config: VisionPretrainConfig,
                    progress: bool = True) -> list[float]:
    """
    Train the model's vision tower (with a linear patch head) to predict ``targets``.

    Every target channel is normalised to zero mean and unit variance over the data set; the
    loss is the mean squared error of the head's per-patch predictions. AdamW on the tower and
    the head (nothing else is touched), learning rate ``config.lr`` with a cosine decay to 0,
    batches of ``config.batch_size`` frames drawn with a generator seeded by ``config.seed``
    (with replacement only when there are fewer frames than a batch); ``torch`` is seeded with
    ``config.seed`` inside a forked RNG state. The tower runs on the device of its parameters
    and is left in the train/eval mode it had.

    :param images: RGB ``uint8`` ``(H, W, 3)`` frames.
    :param targets: ``float32`` ``(N, grid, grid, C)`` with ``grid`` the tower's patches per side.
    :return: the loss of every step.
    """
    import torch
    from tqdm.auto import tqdm

    targets = np.asarray(targets, np.float32)
    grid = model_grid(model)
    if targets.ndim != 4 or targets.shape[:3] != (len(images), grid, grid):
        raise ValueError(f'targets must be (N, {grid}, {grid}, C) for {len(images)} images and '
                         f'a {grid}x{grid} patch grid, got {targets.shape}')
    if len(images) == 0:
        raise ValueError('no images to pre-train on')
    tower = vision_tower(model)
    device = next(tower.parameters()).device
    dtype = next(tower.parameters()).dtype
    channels = targets.shape[-1]
    pixels = processor.image_processor(images=list(images), return_tensors='pt')['pixel_values']
    y = torch.from_numpy(targets.reshape(len(images), grid * grid, channels))
    y = (y - y.mean(dim=(0, 1))) / y.std(dim=(0, 1)).clamp_min(1e-6)
    rng = np.random.default_rng(config.seed)
    losses: list[float] = []
    was_training = tower.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = torch.nn.Linear(tower.config.hidden_size, channels).to(device=device, dtype=dtype)
        params = list(tower.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        tower.train()
        try:
            bar = tqdm(range(config.steps), desc='vision pre-training', disable=not progress,
                       dynamic_ncols=True)
            for step in bar:
                index = torch.from_numpy(rng.choice(len(images), config.batch_size,
                                                    replace=len(images) < config.batch_size))
                batch = pixels[index].to(device=device, dtype=dtype)
                features = tower(pixel_values=batch).last_hidden_state  # (B, grid ** 2, hidden)
                prediction = head(features).float()
                loss = torch.nn.functional.mse_loss(prediction, y[index].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for group in optimizer.param_groups:
                    group['lr'] = config.lr * 0.5 * (1 + math.cos(math.pi * (step + 1)
                                                                  / config.steps))
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f'{losses[-1]:.3f}', refresh=False)
        finally:
            tower.train(was_training)
            optimizer.zero_grad(set_to_none=True)
    return losses


def _config_record(config: VisionPretrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def finished_report(out: Path, report_name: str, wanted: dict[str, Any],
                    what: str) -> dict[str, Any] | None:
    """
    Return the report of a finished pre-training folder made with ``wanted``, or None.

    None when ``out`` does not exist. ``FileExistsError`` when it exists without
    ``report_name`` (an unfinished or foreign folder, never overwritten); ``ValueError``,
    naming every differing field, when its report holds another config.
    """
    report_path = out / report_name
    if not out.exists():
        return None
    if not report_path.is_file():
        raise FileExistsError(f'{out} exists but holds no {report_name}: not a finished '
                              f'{what}; remove it or choose another folder')
    report = json.loads(report_path.read_text(encoding='utf-8'))
    saved = report.get('config') or {}
    if saved != wanted:
        diff = ', '.join(f'{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now'
                         for k in sorted(set(wanted) | set(saved))
                         if saved.get(k) != wanted.get(k))
        raise ValueError(f'{out} was pre-trained with another config ({diff}); remove it '
                         'or choose another folder')
    return report


def run_vision_pretrain(model_dir: str | Path, out_dir: str | Path,
                        config: VisionPretrainConfig, device: str = 'cpu',
                        progress: bool = True) -> VisionPretrainResult:
    """
    Pre-train the vision tower of the model in ``model_dir``; save the result to ``out_dir``.

    The model is loaded in float32 with ``spatialvlm_ros.model.loading.load_vlm``, its tower is
    trained with :func:`pretrain_vision` on :func:`render_targets`, and the whole model (every
    weight but the tower's unchanged) is saved with ``save_compact`` to a temporary folder
    beside ``out_dir`` together with ``vision_pretrain.json`` (the config, the source folder,
    the first and last losses, the target normalisation and the wall time), which is then
    renamed to ``out_dir``: a finished ``out_dir`` always holds the json.

    Resumable: when ``out_dir`` already holds a ``vision_pretrain.json`` with the same config,
    nothing is done. A finished ``out_dir`` made with another config raises ``ValueError``; an
    existing ``out_dir`` without the json raises ``FileExistsError`` (it is not overwritten).

    :param model_dir: a compact (LLaVA) model folder, e.g. ``train-default``'s ``out/init``.
    :param out_dir: the folder to write.
    :param config: the pre-training settings.
    :param device: ``'cpu'``, ``'cuda[:N]'`` or ``'auto'``; the run's device.
    :param progress: show tqdm bars.
    """
    from spatialvlm_ros.model.compact import save_compact
    from spatialvlm_ros.model.loading import load_vlm

    out = Path(out_dir)
    report = finished_report(out, REPORT_NAME, _config_record(config), 'vision pre-training')
    if report is not None:
        _log(f'{out} is finished; skipping')
        return VisionPretrainResult(out, True, [], report)

    start = time.perf_counter()
    loaded = load_vlm(model_dir, device=device, dtype='float32')
    model, processor = loaded.model, loaded.processor
    grid = model_grid(model)
    _log(f'rendering {config.episodes} episodes x {config.frames_per_episode} frames '
         f'({config.targets} targets, {grid}x{grid} patches)')
    images, targets = render_targets(config, grid, progress=progress)
    _log(f'training the vision tower for {config.steps} steps on {len(images)} frames')
    losses = pretrain_vision(model, processor, images, targets, config, progress=progress)
    model.eval()
    flat = targets.reshape(-1, targets.shape[-1]).astype(np.float64)
    tail = losses[-min(20, len(losses)):]
    report = {
        'config': _config_record(config),
        'model_in': str(Path(model_dir)),
        'frames': len(images),
        'grid': grid,
        'channels': list(config.channels),
        'target_mean': [float(v) for v in flat.mean(axis=0)],
        'target_std': [float(v) for v in flat.std(axis=0, ddof=1 if len(flat) > 1 else 0)],
        'first_loss': float(losses[0]),
        'last_loss': float(losses[-1]),
        'last_loss_mean20': float(np.mean(tail)),
        'seconds': round(time.perf_counter() - start, 1),
    }
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    save_compact(model, processor, tmp)
    (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1), encoding='utf-8')
    os.replace(tmp, out)
    _log(f'loss {report["first_loss"]:.3f} -> {report["last_loss_mean20"]:.3f}; saved {out}')
    return VisionPretrainResult(out, False, losses, report)

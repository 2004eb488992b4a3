"""
Experiment: does pre-training the vision tower on dense simulator targets make it look.

The shipped compact model barely uses its image (see ``benchmarks/RESULTS.md``). This script
tests one remedy at small scale. Two arms start from the same untrained compact model:

- ``scratch``: trained on the gripper-distance QA as it is;
- ``pretrained``: its SigLIP vision tower is first trained to predict, for every 16 px patch
  of the 96 px input, the median metric depth (log), the share of object pixels and a heat map
  of the gripper's projected grasp point (rendered simulator frames with their truth), then the
  model is trained exactly like ``scratch``.

Both are then scored on held-out gripper questions: Spearman correlation and median relative
error of the answered distance against the truth, the number of distinct answers, and how often
the answer changes when the image is replaced by a black one (a model that ignores the image
never changes). One seed, small scale: a direction for the recipe, not a result.

Variants: ``--labels precise`` restates every training answer as 'The distance is 0.46 m.'
(fixed-width digits instead of the human-rounded '15 cm' / '7 inches' / '1 foot', whose first
digit mixes units and magnitudes) and asks with that answer prefix; ``--targets extended`` adds
per-patch targets (log distance from the grasp point to the patch's surface, mean RGB);
``--freeze-vision`` keeps the pre-trained tower frozen during QA training; ``--image-size``.

Run: ``PYTHONPATH=. python benchmarks/exp_vision_pretrain.py --data DIR/data --out /tmp/exp``
(``DIR`` is a ``spatialvlm train-default`` working folder, for its gripper QA folders).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
from pathlib import Path
import time
from typing import Any

import numpy as np

GRID = 6  # patches per side: 96 px / 16 px (``--image-size`` changes it)
TARGETS = 3  # log depth, object share, gripper heat
EXTENDED = False  # --targets extended: + log distance to the gripper, mean RGB


def precise_copy(src: str, dst: Path) -> str:
    """Copy a gripper QA folder with every answer restated as 'The distance is 0.46 m.'."""
    import pyarrow.parquet as pq

    from spatialvlm_ros.synth.dataset import parquet_bytes

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(glob.glob(f'{src}/*.parquet')):
        rows = pq.read_table(f).to_pylist()
        for row in rows:
            qas = json.loads(row['qa_metadata'])
            for turn, qa in enumerate(qas):
                text = f"The distance is {max(qa['value_m'], 0.01):.2f} m."
                row['messages'][2 * turn + 1]['content'][0]['text'] = text
        keys = ('image', 'image_id', 'messages', 'qa_metadata')
        columns = {k: [r[k] for r in rows] for k in keys}
        (dst / Path(f).name).write_bytes(parquet_bytes(columns))
    return str(dst)


def patch_targets(frame: Any) -> np.ndarray:
    """
    Return the (GRID, GRID, TARGETS) targets of a rendered frame (see the module).

    With ``EXTENDED``, four more per patch: the log distance from the gripper's grasp point to
    the patch's surface (median over its pixels) and the patch's mean RGB (keeps colour in the
    tower's last layer, which is what a caption like 'the pink ball' is bound to).
    """
    h, w = frame.depth.shape
    rows = np.linspace(0, h, GRID + 1).astype(int)
    cols = np.linspace(0, w, GRID + 1).astype(int)
    k = frame.intrinsics
    grip = np.asarray(frame.gripper_cam, np.float64)
    u = k.fx * grip[0] / grip[2] + k.cx
    v = k.fy * grip[1] / grip[2] + k.cy
    if EXTENDED:
        vv, uu = np.mgrid[0:h, 0:w] + 0.5
        z = frame.depth.astype(np.float64)
        xyz = np.stack([(uu - k.cx) / k.fx * z, (vv - k.cy) / k.fy * z, z], axis=-1)
        to_grip = np.log(np.linalg.norm(xyz - grip, axis=-1) + 0.01)
    out = np.zeros((GRID, GRID, TARGETS + 4 * EXTENDED), np.float32)
    for i in range(GRID):
        for j in range(GRID):
            cell = np.s_[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            depth = frame.depth[cell]
            seg = frame.segmentation[cell]
            valid = np.isfinite(depth) & (depth > 0)
            finite = depth[valid]
            out[i, j, 0] = np.log(np.median(finite)) if finite.size else 0.0
            out[i, j, 1] = float(np.mean(seg >= 0))
            cu, cv = (cols[j] + cols[j + 1]) / 2, (rows[i] + rows[i + 1]) / 2
            out[i, j, 2] = np.exp(-((cu - u) ** 2 + (cv - v) ** 2) / (2 * (w / GRID) ** 2))
            if EXTENDED:
                # objects dominate the distance where the patch has any (a small object is
                # what a question names)
                pick = valid & (seg >= 0) if np.any(valid & (seg >= 0)) else valid
                out[i, j, 3] = np.median(to_grip[cell][pick]) if pick.any() else 0.0
                out[i, j, 4:7] = frame.rgb[cell].reshape(-1, 3).mean(axis=0) / 255.0
    return out


def render_targets(episodes: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Render ``episodes`` short episodes; return their RGB frames and patch targets."""
    from tqdm import tqdm

    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode, SCENARIOS

    images, targets = [], []
    for e in tqdm(range(episodes), desc='render'):
        episode = generate_episode(EpisodeConfig(seed=seed + e, num_frames=10,
                                                 scenario=SCENARIOS[e % len(SCENARIOS)]))
        for frame in episode.frames:
            images.append(frame.rgb)
            targets.append(patch_targets(frame))
    return images, np.stack(targets)


def pretrain_vision(model: Any, processor: Any, images: list[np.ndarray], targets: np.ndarray,
                    steps: int, batch: int, lr: float) -> list[float]:
    """Train the vision tower (and a linear patch head) on the targets; return the losses."""
    import torch

    tower = model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, targets.shape[-1])
    pixels = processor.image_processor(images=images, return_tensors='pt')['pixel_values']
    y = torch.from_numpy(targets.reshape(len(images), GRID * GRID, targets.shape[-1]))
    y = (y - y.mean(dim=(0, 1))) / y.std(dim=(0, 1)).clamp_min(1e-6)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(0)
    losses = []
    tower.train()
    for step in range(steps):
        index = torch.from_numpy(rng.choice(len(images), batch, replace=len(images) < batch))
        features = tower(pixel_values=pixels[index]).last_hidden_state  # (B, 36, C)
        loss = torch.nn.functional.mse_loss(head(features), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group['lr'] = lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
        losses.append(float(loss))
    return losses


def score(model_dir: Path, heldout: str, prefix: str = '') -> dict[str, Any]:
    """Score gripper questions: correlation, error, distinct answers, black-image changes."""
    from PIL import Image
    import pyarrow.parquet as pq
    from scipy.stats import spearmanr

    from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
    from spatialvlm_ros.model.loading import load_vlm

    rows = [r for f in sorted(glob.glob(f'{heldout}/*.parquet'))
            for r in pq.read_table(f).to_pylist()]
    images = [np.array(Image.open(io.BytesIO(r['image']['bytes'])).convert('RGB'))
              for r in rows]
    questions = [r['messages'][0]['content'][1]['text'] for r in rows]
    truth = np.array([json.loads(r['qa_metadata'])[0]['value_m'] for r in rows])
    vlm = SpatialVLM(load_vlm(model_dir, device='cpu'),
                     InferenceConfig(max_new_tokens=24, batch_size=16, answer_prefix=prefix))
    answers = vlm.ask(images, questions)
    blind = vlm.ask([np.zeros_like(i) for i in images], questions)
    pred = np.array([np.nan if a.value_m is None else a.value_m for a in answers])
    ok = np.isfinite(pred)
    changed = np.mean([a.text != b.text for a, b in zip(answers, blind, strict=True)])
    return {'questions': len(rows), 'numeric': float(ok.mean()),
            'spearman': float(spearmanr(truth[ok], pred[ok]).statistic),
            'median_rel_error': float(np.median(np.abs(pred[ok] - truth[ok]) / truth[ok])),
            'distinct_answers': int(len(np.unique(pred[ok]))),
            'changed_by_black_image': float(changed)}


def main() -> None:
    """Run both arms and print a table."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, save_compact
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', required=True, help='train-default data folder')
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--episodes', type=int, default=120, help='pre-training episodes')
    parser.add_argument('--pretrain-steps', type=int, default=600)
    parser.add_argument('--steps', type=int, default=400, help='QA training steps per arm')
    parser.add_argument('--arms', nargs='+', choices=('scratch', 'pretrained'),
                        default=['scratch', 'pretrained'])
    parser.add_argument('--labels', choices=('human', 'precise'), default='human',
                        help="'precise': answers restated as 'The distance is 0.46 m.'")
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--freeze-vision', action='store_true',
                        help='keep the (pre-trained) vision tower frozen in QA training')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--targets', choices=('basic', 'extended'), default='basic')
    args = parser.parse_args()
    global GRID, EXTENDED
    GRID = args.image_size // 16
    EXTENDED = args.targets == 'extended'
    torch.manual_seed(0)
    data = Path(args.data)
    train_data = (str(data / 'gripper_train'), str(data / 'gripper_focus'))
    prefix = ''
    if args.labels == 'precise':
        train_data = tuple(precise_copy(d, args.out / 'precise' / Path(d).name)
                           for d in train_data)
        prefix = 'The distance is'
    results = {}
    for arm in args.arms:
        start = time.perf_counter()
        model, processor = build_compact_model(CompactVLMConfig(image_size=args.image_size),
                                               build_default_tokenizer())
        note = ''
        if arm == 'pretrained':
            images, targets = render_targets(args.episodes, seed=70_000)
            losses = pretrain_vision(model, processor, images, targets, args.pretrain_steps,
                                     32, 1e-3)
            note = f'pre-training loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}'
        init = args.out / arm / 'init'
        save_compact(model, processor, init)
        config = TrainConfig(model=str(init), data=train_data, out_dir=str(args.out / arm),
                             max_steps=args.steps, batch_size=16, lr=args.lr, min_lr=2e-5,
                             warmup_steps=40, seed=0, save_every=0,
                             freeze_vision=args.freeze_vision and arm == 'pretrained',
                             eval_every=0)
        result = train(config)
        results[arm] = score(result.final_dir, str(data / 'gripper_heldout'), prefix)
        results[arm].update(seconds=round(time.perf_counter() - start), note=note,
                            final_loss=round(float(np.mean(result.losses[-20:])), 3))
    keys = ('spearman', 'median_rel_error', 'distinct_answers', 'changed_by_black_image',
            'numeric', 'final_loss', 'seconds')
    print('| arm | ' + ' | '.join(keys) + ' | note |')
    print('|---|' + '---|' * (len(keys) + 1))
    for arm, r in results.items():
        cells = [f'{r[k]:.3f}' if isinstance(r[k], float) else str(r[k]) for k in keys]
        print(f'| {arm} | ' + ' | '.join(cells) + f" | {r['note']} |")


if __name__ == '__main__':
    main()

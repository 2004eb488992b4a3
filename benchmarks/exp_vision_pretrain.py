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

GRID = 6  # patches per side: 96 px / 16 px
TARGETS = 3  # log depth, object share, gripper heat


def patch_targets(frame: Any) -> np.ndarray:
    """Return the (GRID, GRID, TARGETS) targets of a rendered frame (see the module)."""
    h, w = frame.depth.shape
    rows = np.linspace(0, h, GRID + 1).astype(int)
    cols = np.linspace(0, w, GRID + 1).astype(int)
    k = frame.intrinsics
    grip = frame.gripper_cam
    u = k.fx * grip[0] / grip[2] + k.cx
    v = k.fy * grip[1] / grip[2] + k.cy
    out = np.zeros((GRID, GRID, TARGETS), np.float32)
    for i in range(GRID):
        for j in range(GRID):
            depth = frame.depth[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            seg = frame.segmentation[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            finite = depth[np.isfinite(depth) & (depth > 0)]
            out[i, j, 0] = np.log(np.median(finite)) if finite.size else 0.0
            out[i, j, 1] = float(np.mean(seg >= 0))
            cu, cv = (cols[j] + cols[j + 1]) / 2, (rows[i] + rows[i + 1]) / 2
            out[i, j, 2] = np.exp(-((cu - u) ** 2 + (cv - v) ** 2) / (2 * (w / GRID) ** 2))
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
    head = torch.nn.Linear(tower.config.hidden_size, TARGETS)
    pixels = processor.image_processor(images=images, return_tensors='pt')['pixel_values']
    y = torch.from_numpy(targets.reshape(len(images), GRID * GRID, TARGETS))
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


def score(model_dir: Path, heldout: str) -> dict[str, Any]:
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
                     InferenceConfig(max_new_tokens=24, batch_size=16))
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
    args = parser.parse_args()
    torch.manual_seed(0)
    data = Path(args.data)
    train_data = (str(data / 'gripper_train'), str(data / 'gripper_focus'))
    results = {}
    for arm in args.arms:
        start = time.perf_counter()
        model, processor = build_compact_model(CompactVLMConfig(), build_default_tokenizer())
        note = ''
        if arm == 'pretrained':
            images, targets = render_targets(args.episodes, seed=70_000)
            losses = pretrain_vision(model, processor, images, targets, args.pretrain_steps,
                                     32, 1e-3)
            note = f'pre-training loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}'
        init = args.out / arm / 'init'
        save_compact(model, processor, init)
        config = TrainConfig(model=str(init), data=train_data, out_dir=str(args.out / arm),
                             max_steps=args.steps, batch_size=16, lr=1e-3, min_lr=2e-5,
                             warmup_steps=40, freeze_vision=False, seed=0, save_every=0,
                             eval_every=0)
        result = train(config)
        results[arm] = score(result.final_dir, str(data / 'gripper_heldout'))
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

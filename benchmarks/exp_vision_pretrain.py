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
per-patch targets (log distance from the grasp point to the patch's surface, mean RGB); the
targets and the pre-training are ``spatialvlm_ros.train.vision_pretrain``;
``--freeze-vision`` keeps the pre-trained tower frozen during QA training; ``--image-size``;
``--attn-init-scale`` (``CompactVLMConfig.attn_init_scale``).

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
    from spatialvlm_ros.train.vision_pretrain import (
        pretrain_vision,
        render_targets,
        VisionPretrainConfig,
    )

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
    parser.add_argument('--attn-init-scale', type=float, default=1.0,
                        help='CompactVLMConfig.attn_init_scale of the untrained model')
    args = parser.parse_args()
    grid = args.image_size // 16  # patches per side (16 px patches)
    pretrain_config = VisionPretrainConfig(episodes=args.episodes, frames_per_episode=10,
                                           seed=70_000, steps=args.pretrain_steps,
                                           batch_size=32, lr=1e-3, targets=args.targets)
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
        model, processor = build_compact_model(
            CompactVLMConfig(image_size=args.image_size, attn_init_scale=args.attn_init_scale),
            build_default_tokenizer())
        note = ''
        if arm == 'pretrained':
            images, targets = render_targets(pretrain_config, grid)
            losses = pretrain_vision(model, processor, images, targets, pretrain_config)
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

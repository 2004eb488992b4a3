"""
Experiment: whether a fresh compact VLM learns 'Is A to the left of B?' on the engine's images.

The toy tasks of ``exp_learnability.py`` use one bright 16 px square. This one uses the data
engine's rendered scenes and its per-object boxes and captions (``metadata.jsonl`` beside the
shards): each example picks two objects of a kept image whose box centres are at least
``--min-gap`` pixels apart horizontally and asks 'Is the blue dice to the left of soccer ball?'
-> 'Yes.' / 'No.', half of each (the truth is the box centres, in the rendered image). Images
whose id hashes to 0 mod 10 form the test set. Accuracy compares the logits of 'Yes' and 'No'
at the answer position, on 160 balanced test pairs, every 100 steps.

Arms: ``plain`` trains everything (as the shipped recipe does); ``centred`` subtracts the
projector's mean output over 64 training images and keeps the tower and projector frozen (what
makes the toy column task learnable, ``train.connector``).

Run: ``PYTHONPATH=. python benchmarks/exp_real_pairs.py --data /tmp/svlm_default/data/train
--arms centred --image-size 96`` (about 2 min per 400 steps at 96 px on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time
from typing import Any
import zlib

import numpy as np


def load_objects(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Return ``{image_id: objects}`` for the kept images with at least two objects."""
    path = folder / 'metadata.jsonl'
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: is {folder} an engine dataset?')
    found = {}
    with path.open(encoding='utf-8') as stream:
        for line in stream:
            record = json.loads(line)
            if record.get('kept') and len(record.get('objects', [])) >= 2:
                found[record['image_id']] = record['objects']
    return found


def is_test(image_id: str) -> bool:
    """Return whether ``image_id`` belongs to the test split (a stable hash, 1 in 10)."""
    return zlib.crc32(image_id.encode()) % 10 == 0


def sample_pairs(objects: dict[str, list[dict[str, Any]]], images: dict[str, bytes],
                 rng: np.random.Generator, n: int, test: bool,
                 min_gap: float) -> list[tuple[bytes, str, str]]:
    """Return ``n`` ``(image, question, answer)`` left-of examples, half 'Yes.', half 'No.'."""
    ids = [i for i in objects if i in images and is_test(i) == test]
    if not ids:
        raise ValueError(f"no {'test' if test else 'training'} images with two objects")
    wanted = {'Yes.': n // 2, 'No.': n - n // 2}
    out: list[tuple[bytes, str, str]] = []
    for _ in range(200 * n):
        if len(out) == n:
            return out
        image_id = ids[int(rng.integers(len(ids)))]
        found = objects[image_id]
        a, b = (found[int(k)] for k in rng.choice(len(found), 2, replace=False))
        left_a = (a['box'][0] + a['box'][2]) / 2
        left_b = (b['box'][0] + b['box'][2]) / 2
        if abs(left_a - left_b) < min_gap or a['caption'] == b['caption']:
            continue
        answer = 'Yes.' if left_a < left_b else 'No.'
        if wanted[answer] == 0:
            continue
        wanted[answer] -= 1
        out.append((images[image_id], f"Is {a['caption']} to the left of {b['caption']}?",
                    answer))
    raise ValueError(f'could not draw {n} pairs {min_gap} px apart; lower --min-gap')


def run(arm: str, data: Path, image_size: int, steps: int, min_gap: float,
        seed: int) -> list[tuple[int, float, float]]:
    """Train one fresh model; return ``(step, mean loss of the last 100, test accuracy)``."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.connector import centre_projector
    from spatialvlm_ros.train.data import ConversationEncoder, decode_image, Example, read_rows
    from spatialvlm_ros.train.trainer import apply_freeze_policy

    objects = load_objects(data)
    images = {row.image_id: row.image for row in read_rows([data]) if row.image_id in objects}
    tokenizer = build_default_tokenizer()
    torch.manual_seed(seed)
    model, processor = build_compact_model(CompactVLMConfig(image_size=image_size, seed=seed),
                                           tokenizer)
    encoder = ConversationEncoder(processor, 512)
    if arm == 'centred':
        calibration = [np.asarray(decode_image(images[i])) for i in list(images)[:64]]
        centre_projector(model, processor, calibration)
    # the trainer's own freeze policy (model / data are not read by it)
    apply_freeze_policy(model, TrainConfig(model='unused', data=('unused',),
                                           freeze_vision=arm == 'centred',
                                           freeze_projector=arm == 'centred'))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    test = sample_pairs(objects, images, np.random.default_rng(seed + 5), 160, True, min_gap)
    yes = tokenizer('Yes.', add_special_tokens=False)['input_ids'][0]
    no = tokenizer('No.', add_special_tokens=False)['input_ids'][0]

    def accuracy() -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for start in range(0, len(test), 16):
                chunk = test[start:start + 16]
                batch = encoder.batch([Example(im, [(q, a)], 'spatial', 'pairs')
                                       for im, q, a in chunk])
                logits = model(**batch).logits
                for j, (_, _, answer) in enumerate(chunk):
                    first = int((batch['labels'][j] != -100).nonzero()[0]) - 1
                    said_yes = bool(logits[j, first, yes] > logits[j, first, no])
                    right += said_yes == (answer == 'Yes.')
        model.train()
        return right / len(test)

    rng = np.random.default_rng(seed + 1)
    rows, losses = [], []
    model.train()
    for step in range(1, steps + 1):
        batch = encoder.batch([Example(im, [(q, a)], 'spatial', 'pairs')
                               for im, q, a in sample_pairs(objects, images, rng, 16, False,
                                                            min_gap)])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            rows.append((step, float(np.mean(losses[-100:])), accuracy()))
    return rows


def main() -> None:
    """Train each arm and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, required=True, help='an engine dataset folder')
    parser.add_argument('--arms', nargs='+', choices=('plain', 'centred'),
                        default=['plain', 'centred'])
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--min-gap', type=float, default=20.0,
                        help='least horizontal distance of the box centres, in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.image_size < 16 or args.image_size % 16:
        parser.error('--steps must be >= 1 and --image-size a multiple of 16')
    print('| arm | image size | step | training loss (last 100) | test accuracy | '
          'seconds (whole arm) |')
    print('|---|---|---|---|---|---|')
    for arm in args.arms:
        start = time.perf_counter()
        for step, loss, acc in run(arm, args.data, args.image_size, args.steps,
                                   args.min_gap, args.seed):
            print(f'| {arm} | {args.image_size} | {step} | {loss:.3f} | {acc:.3f} | '
                  f'{time.perf_counter() - start:.0f} |', flush=True)


if __name__ == '__main__':
    main()

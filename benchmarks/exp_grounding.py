"""
Experiment: the named-object toy with a position-trained connector and supervised grounding.

The ``named`` toy of ``exp_learnability.py`` (three squares of different colours; 'Which
column is the blue square in?') stayed at chance for every recipe of sessions 5-7. This script
trains it with the pieces of ``spatialvlm_ros.train.grounding``:

1. the vision tower and projector are first trained on dense per-patch targets (the patch's
   column and row, and the colour of the square on it, or background) on images of one to
   three random squares (``pretrain_connector``);
2. the projector is centred and scaled so its tokens have mean norm 1 (``train.connector``),
   then the tower and projector are frozen; the decoder trains with AdamW at ``--lr``;
3. arm ``grounded`` adds ``attention_mass_loss`` on two rows: layer 0 head 0 at the colour
   word should look at the named square's patch, and layer 1 head 0 at the position that
   predicts the column digit should look there too. Arm ``plain`` has no such loss.

It prints, per window of steps, the language-model loss, the grounding loss (measured in both
arms) and the share of column digits predicted right (chance 1/6).

Run: ``PYTHONPATH=. python benchmarks/exp_grounding.py`` (about 4 min per arm of 800 steps on
2 CPU cores; ``--arms``, ``--steps``, ``--pretrain-steps``, ``--lr``).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
import time

import numpy as np


def _toys():
    """Return the ``exp_learnability`` module (toy colours and sizes), from beside this file."""
    path = Path(__file__).resolve().parent / 'exp_learnability.py'
    spec = importlib.util.spec_from_file_location('exp_learnability', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOYS = _toys()
COLOURS, PATCH, SIZE = _TOYS.COLOURS, _TOYS.PATCH, _TOYS.SIZE
GRID = SIZE // PATCH
BACKGROUND = len(COLOURS)


def squares_image(rng: np.random.Generator,
                  count: int) -> tuple[np.ndarray, list[str], list[int], np.ndarray]:
    """
    Return a grey image with ``count`` squares of distinct colours in distinct columns.

    :return: ``(image, colour names, patch index of each square, class per patch)``; classes
        index :data:`COLOURS`, background is ``len(COLOURS)``.
    """
    image = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    names = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), count, replace=False)]
    columns = rng.choice(GRID, count, replace=False)
    labels = np.full(GRID * GRID, BACKGROUND, dtype=np.int64)
    patches = []
    for name, column in zip(names, columns, strict=True):
        row = int(rng.integers(GRID))
        image[row * PATCH:(row + 1) * PATCH, column * PATCH:(column + 1) * PATCH] = \
            COLOURS[name]
        patches.append(row * GRID + int(column))
        labels[patches[-1]] = list(COLOURS).index(name)
    return image, names, patches, labels


def named_example(rng: np.random.Generator) -> tuple[np.ndarray, str, str, int]:
    """Return ``(image, question, answer, patch of the named square)`` of the named toy."""
    image, names, patches, _ = squares_image(rng, 3)
    return (image, f'Which column is the {names[0]} square in?',
            f'Column {patches[0] % GRID}.', patches[0])


def grounding_targets(batch: dict, patches: list[int], tokenizer, colours: list[str]):
    """
    Return the supervised rows of layers 0 and 1 and each example's digit position.

    Layer 0: the colour word's token looks at the square's patch; layer 1: the position that
    predicts the column digit looks there too (both head 0).
    """
    from spatialvlm_ros.train.grounding import AttentionTarget, find_subsequence

    image_id = tokenizer.image_token_id
    first, second, digits = [], [], []
    for i, ids in enumerate(batch['input_ids'].tolist()):
        image = [p for p, t in enumerate(ids) if t == image_id]
        word = tokenizer(' ' + colours[i], add_special_tokens=False)['input_ids']
        at = find_subsequence(ids, word, image[-1] + 1)
        if at is None:
            raise ValueError(f'colour {colours[i]!r} not found in example {i}')
        labels = batch['labels'][i].tolist()
        digit = next(p for p, t in enumerate(labels)
                     if t != -100 and tokenizer.decode([t]).strip().isdigit())
        key = (image[patches[i]],)
        first.append(AttentionTarget(i, 0, at + len(word) - 1, key))
        second.append(AttentionTarget(i, 0, digit - 1, key))
        digits.append(digit)
    return first, second, digits


def run(arm: str, steps: int, window: int, pretrain_steps: int, lr: float, seed: int) -> dict:
    """Train one fresh model; return the windowed losses and digit accuracy."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.synth.dataset import encode_png
    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.connector import centre_projector, scale_projector
    from spatialvlm_ros.train.data import ConversationEncoder, Example
    from spatialvlm_ros.train.grounding import (
        attention_mass_loss,
        ConnectorPretrainConfig,
        pretrain_connector,
    )
    from spatialvlm_ros.train.trainer import apply_freeze_policy

    torch.manual_seed(seed)
    tokenizer = build_default_tokenizer()
    model, processor = build_compact_model(
        CompactVLMConfig(image_size=SIZE, patch_size=PATCH, seed=seed), tokenizer)
    model.set_attn_implementation('eager')
    sample = np.random.default_rng(seed + 5)
    scenes = [squares_image(sample, int(sample.integers(1, 4))) for _ in range(2048)]
    start = time.perf_counter()
    pretrain = pretrain_connector(model, processor, [s[0] for s in scenes],
                                  np.stack([s[3] for s in scenes]), len(COLOURS) + 1,
                                  ConnectorPretrainConfig(steps=pretrain_steps, seed=seed))
    calibration = [named_example(sample)[0] for _ in range(64)]
    centre_projector(model, processor, calibration)
    scale_projector(model, processor, calibration, 1.0)
    apply_freeze_policy(model, TrainConfig(model='unused', data=('unused',), freeze_vision=True,
                                           freeze_projector=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    encoder = ConversationEncoder(processor, 512)
    rng = np.random.default_rng(seed)
    model.train()
    lm, ground, right = [], [], []
    for _ in range(steps):
        examples, patches, colours = [], [], []
        for _ in range(16):
            image, question, answer, patch = named_example(rng)
            examples.append(Example(encode_png(image), [(question, answer)], 'spatial', 'toy'))
            patches.append(patch)
            colours.append(question.split()[4])
        batch = encoder.batch(examples)
        out = model(**batch, output_attentions=True)
        first, second, digits = grounding_targets(batch, patches, tokenizer, colours)
        aux = attention_mass_loss(out.attentions[0], first) \
            + attention_mass_loss(out.attentions[1], second)
        loss = out.loss + aux if arm == 'grounded' else out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lm.append(float(out.loss.detach()))
        ground.append(float(aux.detach()))
        with torch.no_grad():
            right += [float(out.logits[i, d - 1].argmax() == batch['labels'][i, d])
                      for i, d in enumerate(digits)]
    per = 16
    return {'arm': arm, 'pretrain_accuracy': float(np.mean([h['accuracy']
                                                            for h in pretrain[-20:]])),
            'lm': [float(np.mean(lm[i:i + window])) for i in range(0, steps, window)],
            'ground': [float(np.mean(ground[i:i + window])) for i in range(0, steps, window)],
            'digit': [float(np.mean(right[i * per:(i + window) * per]))
                      for i in range(0, steps, window)],
            'seconds': time.perf_counter() - start}


def main() -> None:
    """Train each arm and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--arms', nargs='+', choices=('plain', 'grounded'),
                        default=['plain', 'grounded'])
    parser.add_argument('--steps', type=int, default=800)
    parser.add_argument('--window', type=int, default=100)
    parser.add_argument('--pretrain-steps', type=int, default=300)
    parser.add_argument('--lr', type=float, default=3e-4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.steps < args.window or args.window < 1 or args.pretrain_steps < 1:
        parser.error('--steps must be at least --window, which must be positive, and '
                     '--pretrain-steps >= 1')
    print('| arm | steps | LM loss | grounding loss | digit accuracy (chance 0.167) |')
    print('|---|---|---|---|---|')
    for arm in args.arms:
        r = run(arm, args.steps, args.window, args.pretrain_steps, args.lr, args.seed)
        for k, (lm, ground, digit) in enumerate(zip(r['lm'], r['ground'], r['digit'],
                                                    strict=True)):
            span = f'{k * args.window}-{min((k + 1) * args.window, args.steps) - 1}'
            print(f'| {arm} | {span} | {lm:.3f} | {ground:.3f} | {digit:.3f} |', flush=True)
        print(f"| {arm} | pre-training patch accuracy {r['pretrain_accuracy']:.3f}, "
              f"{r['seconds']:.0f} s in all | | | |", flush=True)


if __name__ == '__main__':
    main()

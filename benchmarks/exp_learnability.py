"""
Experiment: which image facts can a freshly built compact VLM learn at all, and how fast.

The shipped compact model barely uses its image (see ``benchmarks/RESULTS.md``). This script
strips the question down to toy tasks on synthetic 96 px images, so that a failure cannot be
blamed on the data engine, the captions or the size of the objects:

- ``global``: the whole image is one of six colours; 'What colour is the image?' -> the colour;
- ``detect``: a grey image with, in half of the examples, one red 16 px square (one patch);
  'Is there a red square?' -> 'Yes.' / 'No.';
- ``column``: the red square is always there, in one of six columns;
  'Which column is the red square in?' -> 'Column 3.';
- ``half``: as ``column``, asked 'Is the red square in the left half?' -> 'Yes.' / 'No.' (the
  two-way form of the left/right questions);
- ``named``: three squares of different colours (of six) in three different columns;
  'Which column is the blue square in?' -> 'Column 4.' (the question names the object, as the
  engine's captions do, so the model must match a word to a patch before reading its column).

Each (task, ``CompactVLMConfig.attn_init_scale``) pair trains a new compact model from the
same seed with AdamW (lr 1e-3, batch 16, no schedule) and prints the mean training loss over
windows of steps next to the loss of a model that ignores the image (``log(classes)`` over the
answer's tokens), so 'at chance' and 'learnt' can be read off the table.

``--centre yes`` subtracts the projector's mean output token first and ``--freeze`` keeps parts
out of training: with both (``--centre yes --freeze tower+projector``) the column task is
learnt, with either alone it is not (``benchmarks/RESULTS.md``).

Run: ``PYTHONPATH=. python benchmarks/exp_learnability.py`` (about 1 min per row on 2 CPU
cores; ``--tasks``, ``--scales``, ``--steps``, ``--centre``, ``--freeze``).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

COLOURS = {'red': (230, 30, 30), 'green': (30, 230, 30), 'blue': (30, 30, 230),
           'yellow': (230, 230, 30), 'cyan': (30, 230, 230), 'purple': (230, 30, 230)}
SIZE = 96
PATCH = 16


def toy_example(task: str, rng: np.random.Generator) -> tuple[np.ndarray, str, str, int]:
    """Return ``(image, question, answer, classes)`` of one example of ``task``."""
    image = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    if task == 'global':
        name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        image[:] = COLOURS[name]
        return image, 'What colour is the image?', f'{name.capitalize()}.', len(COLOURS)
    if task == 'named':
        names = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), 3, replace=False)]
        columns = rng.choice(SIZE // PATCH, 3, replace=False)
        for name, col in zip(names, columns, strict=True):
            row = int(rng.integers(SIZE // PATCH))
            image[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = COLOURS[name]
        return (image, f'Which column is the {names[0]} square in?', f'Column {columns[0]}.',
                SIZE // PATCH)
    column = int(rng.integers(SIZE // PATCH))
    row = int(rng.integers(SIZE // PATCH))
    present = task in ('column', 'half') or bool(rng.integers(2))
    if present:
        image[row * PATCH:(row + 1) * PATCH, column * PATCH:(column + 1) * PATCH] = \
            COLOURS['red']
    if task == 'detect':
        return image, 'Is there a red square?', 'Yes.' if present else 'No.', 2
    if task == 'half':
        left = column < SIZE // PATCH // 2
        return image, 'Is the red square in the left half?', 'Yes.' if left else 'No.', 2
    return image, 'Which column is the red square in?', f'Column {column}.', SIZE // PATCH


def run(task: str, scale: float, steps: int, window: int, seed: int, centre: bool = False,
        freeze: str = 'none') -> dict:
    """
    Train one fresh model on ``task``; return the windowed losses and chance level.

    ``centre`` subtracts the mean projector output over 64 task images from the projector's
    bias first (``train.connector.centre_projector``); ``freeze`` is ``'none'``, ``'tower'`` or
    ``'tower+projector'`` (parts left out of the optimizer).
    """
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.synth.dataset import encode_png
    from spatialvlm_ros.train.data import ConversationEncoder, Example

    torch.manual_seed(seed)
    model, processor = build_compact_model(
        CompactVLMConfig(image_size=SIZE, patch_size=PATCH, attn_init_scale=scale, seed=seed),
        build_default_tokenizer())
    encoder = ConversationEncoder(processor, 512)
    rng = np.random.default_rng(seed)
    if centre:
        from spatialvlm_ros.train.connector import centre_projector

        sample = np.random.default_rng(seed + 1)
        centre_projector(model, processor, [toy_example(task, sample)[0] for _ in range(64)])
    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.trainer import apply_freeze_policy

    # the trainer's own freeze policy (model / data are not read by it)
    apply_freeze_policy(model, TrainConfig(
        model='unused', data=('unused',), freeze_vision=freeze != 'none',
        freeze_projector=freeze == 'tower+projector'))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses, answer_tokens = [], []
    start = time.perf_counter()
    for _ in range(steps):
        examples = []
        for _ in range(16):
            image, question, answer, classes = toy_example(task, rng)
            examples.append(Example(encode_png(image), [(question, answer)], 'spatial', 'toy'))
        batch = encoder.batch(examples)
        answer_tokens.append(float((batch['labels'] != -100).sum()) / len(examples))
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # a model that ignores the image pays log(classes) on the one deciding token, spread over
    # the trained tokens of the answer (the rest is template it learns in a few steps)
    chance = math.log(classes) / float(np.mean(answer_tokens))
    windows = [float(np.mean(losses[i:i + window])) for i in range(0, steps, window)]
    return {'task': task, 'scale': scale, 'centre': centre, 'freeze': freeze,
            'windows': windows, 'chance': chance, 'seconds': time.perf_counter() - start}


def main() -> None:
    """Train every (task, scale) pair and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--tasks', nargs='+', default=['global', 'detect', 'column'],
                        choices=('global', 'detect', 'column', 'half', 'named'))
    parser.add_argument('--scales', nargs='+', type=float, default=[1.0, 5.0])
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--window', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--centre', nargs='+', choices=('no', 'yes'), default=['no'],
                        help='centre the projector output before training (both: one row each)')
    parser.add_argument('--freeze', nargs='+', choices=('none', 'tower', 'tower+projector'),
                        default=['none'], help='parts kept frozen (several: one row each)')
    args = parser.parse_args()
    if args.steps < args.window or args.window < 1:
        parser.error('--steps must be at least --window, which must be positive')
    rows = [run(task, scale, args.steps, args.window, args.seed, centre == 'yes', freeze)
            for task in args.tasks for scale in args.scales for centre in args.centre
            for freeze in args.freeze]
    spans = [f'steps {i}-{min(i + args.window, args.steps) - 1}'
             for i in range(0, args.steps, args.window)]
    print('| task | attn_init_scale | centred | frozen | chance loss | ' + ' | '.join(spans)
          + ' | seconds |')
    print('|---|---|---|---|---|' + '---|' * len(spans) + '---|')
    for r in rows:
        cells = ' | '.join(f'{w:.3f}' for w in r['windows'])
        print(f"| {r['task']} | {r['scale']:g} | {'yes' if r['centre'] else 'no'} | "
              f"{r['freeze']} | {r['chance']:.3f} | {cells} | "
              f"{r['seconds']:.0f} |")


if __name__ == '__main__':
    main()

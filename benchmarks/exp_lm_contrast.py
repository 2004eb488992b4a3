"""
Experiment: how distinct must the 'red' image token be for the language model to find its column.

The vision tower and projector are left out: the Llama decoder of a fresh compact model gets
36 synthetic 'image token' vectors (a 6 x 6 grid in raster order) as input embeddings, followed
by the question 'Which column is the red square in?' and the answer 'Column k.'. Every image
token is ``shared + spread * u_i`` (``u_i`` a fixed random unit vector per grid position,
``shared`` one fixed vector of norm ``--shared``); the token of the cell holding the square gets
``contrast * d`` added (``d`` a fixed unit vector). So the only thing that says where the square
is, is which position carries ``d``. The defaults mirror a fresh compact model on the toy
images: its projector output tokens have a norm of 0.79, almost all of it shared (the spread
across positions is 0.03), and the red patch's token moves by 0.33, about 0.41 of the norm
(``benchmarks/RESULTS.md``).

Prints the mean training loss per window of steps (Llama only, AdamW lr 1e-3, batch 16) next
to chance (``log 6`` over the answer's tokens).

Run: ``PYTHONPATH=. python benchmarks/exp_lm_contrast.py --contrasts 0.41 1 3`` (about 1 min
per row on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

GRID = 6
QUESTION = 'Which column is the red square in?'


def run(contrast: float, shared: float, spread: float, steps: int, window: int,
        seed: int) -> dict:
    """Train the decoder of a fresh compact model; return windowed losses and chance."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    tokenizer = build_default_tokenizer()
    model, _ = build_compact_model(CompactVLMConfig(seed=seed), tokenizer)
    decoder, head = model.model.language_model, model.lm_head
    embed = decoder.embed_tokens
    width = embed.weight.shape[1]
    gen = torch.Generator().manual_seed(seed + 1)

    def unit(*shape: int) -> torch.Tensor:
        v = torch.randn(*shape, width, generator=gen)
        return v / v.norm(dim=-1, keepdim=True)

    tokens = shared * unit() + spread * unit(GRID * GRID)  # (36, width)
    red = contrast * unit()  # (width,)
    question = tokenizer(QUESTION, add_special_tokens=False)['input_ids']
    answers = [tokenizer(f'Column {k}.', add_special_tokens=False)['input_ids'] +
               [tokenizer.eos_token_id] for k in range(GRID)]
    if len({len(a) for a in answers}) != 1:
        raise RuntimeError('the answers must tokenise to the same length')
    prefix = torch.tensor([tokenizer.bos_token_id])
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        cells = rng.integers(GRID * GRID, size=16)
        images = tokens.unsqueeze(0).repeat(16, 1, 1)  # (B, 36, width)
        images[torch.arange(16), torch.as_tensor(cells)] += red
        target = torch.tensor([answers[int(c) % GRID] for c in cells])  # (B, T)
        text = embed(torch.tensor(question)).unsqueeze(0).expand(16, -1, -1)
        x = torch.cat([embed(prefix).unsqueeze(0).expand(16, -1, -1), images, text,
                       embed(target)], dim=1)  # (B, L, width)
        logits = head(decoder(inputs_embeds=x).last_hidden_state)
        first = x.shape[1] - target.shape[1] - 1  # the position that predicts target[:, 0]
        predicted = logits[:, first:first + target.shape[1]]
        loss = torch.nn.functional.cross_entropy(predicted.reshape(-1, predicted.shape[-1]),
                                                 target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    chance = math.log(GRID) / len(answers[0])
    windows = [float(np.mean(losses[i:i + window])) for i in range(0, steps, window)]
    return {'contrast': contrast, 'shared': shared, 'spread': spread, 'windows': windows,
            'chance': chance, 'seconds': time.perf_counter() - start}


def main() -> None:
    """Train one decoder per contrast and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--contrasts', nargs='+', type=float, default=[0.41, 1.0, 3.0])
    parser.add_argument('--shared', type=float, default=1.0,
                        help='norm of the vector every image token shares')
    parser.add_argument('--spread', type=float, default=0.04,
                        help='norm of the per-position part of each image token')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--window', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.steps < args.window or args.window < 1:
        parser.error('--steps must be at least --window, which must be positive')
    if min(args.contrasts) < 0 or args.shared < 0 or args.spread < 0:
        parser.error('--contrasts, --shared and --spread must be >= 0')
    rows = [run(c, args.shared, args.spread, args.steps, args.window, args.seed)
            for c in args.contrasts]
    spans = [f'steps {i}-{min(i + args.window, args.steps) - 1}'
             for i in range(0, args.steps, args.window)]
    print('| red contrast | shared | spread | chance loss | ' + ' | '.join(spans) + ' | seconds |')
    print('|---|---|---|---|' + '---|' * len(spans) + '---|')
    for r in rows:
        cells = ' | '.join(f'{w:.3f}' for w in r['windows'])
        print(f"| {r['contrast']:g} | {r['shared']:g} | {r['spread']:g} | {r['chance']:.3f} | "
              f"{cells} | {r['seconds']:.0f} |")


if __name__ == '__main__':
    main()

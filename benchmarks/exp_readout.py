"""
Experiment: where the compact VLM loses the square's position (the 'column' toy task).

``exp_learnability.py`` shows that a fresh compact model learns what is in an image but not
where. This script takes the model apart on the same toy images (a red 16 px square in one of
six columns) to find the step that fails:

- ``vision``: the compact SigLIP tower (trained) plus a small readout, trained together to name
  the column. Readouts: ``flat`` (one linear layer over all 36 patch features, i.e. a weight per
  position), ``mean`` (mean over the patches, then linear), ``attention`` (one learned query,
  content keys, as a decoder's attention starts out), ``biased`` (eight learned queries plus a
  learned per-position attention bias initialised at std ``--bias-std``, then linear).
- ``lm``: a fresh compact LLaVA, untrained, on the full prompt. At the position that predicts
  the column digit, for each decoder layer: the hidden state's norm, the spread of the
  image-dependent part (distance to the mean over images; the question is the same every time),
  and the test accuracy of a linear readout trained with minibatches of 16 (Adam, lr 1e-3, 300
  steps, 500 training and 140 test images) on the raw and on the standardised hidden state.

Run: ``PYTHONPATH=. python benchmarks/exp_readout.py`` (about 2 min on 2 CPU cores;
``--parts vision lm``, ``--steps``).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
import time

import numpy as np


def _toys():
    """Return the ``exp_learnability`` module (the toy tasks), loaded from beside this file."""
    path = Path(__file__).resolve().parent / 'exp_learnability.py'
    spec = importlib.util.spec_from_file_location('exp_learnability', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def column_batch(toys, rng: np.random.Generator,
                 size: int) -> tuple[list, list[int], list[tuple[str, str]]]:
    """
    Return ``size`` column-task examples.

    :return: ``(images, columns, turns)``: RGB uint8 96x96x3 images, their columns (0-5) and
        each one's ``(question, answer)``.
    """
    images, columns, turns = [], [], []
    for _ in range(size):
        image, question, answer, _ = toys.toy_example('column', rng)
        images.append(image)
        columns.append(int(answer.split()[1].rstrip('.')))
        turns.append((question, answer))
    return images, columns, turns


class Readout:
    """A readout from patch features ``(B, P, D)`` to class logits ``(B, classes)``."""

    def __init__(self, kind: str, patches: int, width: int, classes: int, bias_std: float):
        import torch

        self.kind = kind
        self.modules = torch.nn.ModuleDict()
        self.extra = torch.nn.ParameterDict()
        if kind == 'flat':
            self.modules['head'] = torch.nn.Linear(patches * width, classes)
        elif kind == 'mean':
            self.modules['head'] = torch.nn.Linear(width, classes)
        elif kind == 'attention':
            self.modules['attn'] = torch.nn.MultiheadAttention(width, 4, batch_first=True)
            self.extra['query'] = torch.nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.modules['head'] = torch.nn.Linear(width, classes)
        elif kind == 'biased':
            heads, key = 8, 64
            self.extra['queries'] = torch.nn.Parameter(torch.randn(heads, key) * 0.02)
            self.extra['bias'] = torch.nn.Parameter(torch.randn(1, heads, patches) * bias_std)
            self.modules['key'] = torch.nn.Linear(width, key)
            self.modules['value'] = torch.nn.Linear(width, 32)
            self.modules['head'] = torch.nn.Linear(heads * 32, classes)
        else:
            raise ValueError(f'unknown readout {kind!r}')

    def parameters(self) -> list:
        """Return the readout's trainable parameters."""
        return list(self.modules.parameters()) + list(self.extra.parameters())

    def __call__(self, features):
        """Return logits ``(B, classes)`` for patch features ``(B, P, D)``."""
        import torch

        head = self.modules['head']
        if self.kind == 'flat':
            return head(features.flatten(1))
        if self.kind == 'mean':
            return head(features.mean(1))
        if self.kind == 'attention':
            query = self.extra['query'].expand(len(features), 1, -1)
            return head(self.modules['attn'](query, features, features)[0][:, 0])
        keys = self.modules['key'](features)                            # (B, P, K)
        logits = torch.einsum('hk,bpk->bhp', self.extra['queries'], keys) / keys.shape[-1] ** 0.5
        weights = (logits + self.extra['bias']).softmax(-1)             # (B, H, P)
        pooled = torch.einsum('bhp,bpv->bhv', weights, self.modules['value'](features))
        return head(pooled.flatten(1))


def vision_probe(kind: str, steps: int, bias_std: float, seed: int) -> dict:
    """Train a fresh compact vision tower with readout ``kind``; return windowed accuracies."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig

    toys = _toys()
    torch.manual_seed(seed)
    model, processor = build_compact_model(CompactVLMConfig(seed=seed))
    tower = model.model.vision_tower
    grid = toys.SIZE // toys.PATCH
    readout = Readout(kind, grid * grid, tower.config.hidden_size, grid, bias_std)
    optimizer = torch.optim.AdamW(list(tower.parameters()) + readout.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    tower.train()
    hits = []
    start = time.perf_counter()
    for _ in range(steps):
        images, columns, _ = column_batch(toys, rng, 16)
        pixels = processor.image_processor(images, return_tensors='pt')['pixel_values']
        logits = readout(tower(pixel_values=pixels).last_hidden_state)  # (16, 6)
        target = torch.tensor(columns)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hits.append(float((logits.argmax(1) == target).float().mean()))
    return {'readout': kind, 'hits': hits, 'seconds': time.perf_counter() - start}


def fit_linear(train_x, train_y, test_x, test_y, seed: int, steps: int = 300) -> float:
    """Return the test accuracy of a linear classifier trained with minibatches of 16."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], int(max(train_y.max(), test_y.max())) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        pick = torch.randint(0, len(train_x), (16,), generator=generator)
        loss = torch.nn.functional.cross_entropy(head(train_x[pick]), train_y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(test_x).argmax(1) == test_y).float().mean())


def lm_probe(seed: int, images: int = 640, train: int = 500) -> list[dict]:
    """Return, per decoder layer, the digit position's norm, spread and readout accuracies."""
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.synth.dataset import encode_png
    from spatialvlm_ros.train.data import ConversationEncoder, Example

    toys = _toys()
    model, processor = build_compact_model(CompactVLMConfig(seed=seed))
    encoder = ConversationEncoder(processor, 512)
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(seed)
    states: dict[int, list] = {}
    columns: list[int] = []
    with torch.no_grad():
        for _ in range(images // 16):
            batch_images, batch_columns, turns = column_batch(toys, rng, 16)
            examples = [Example(encode_png(image), [turn], 'spatial', 'toy')
                        for image, turn in zip(batch_images, turns, strict=True)]
            batch = encoder.batch(examples)
            hidden = model(**batch, output_hidden_states=True).hidden_states
            for i, labels in enumerate(batch['labels']):
                answer = (labels != -100).nonzero()[:, 0]
                digit = next(int(p) for p in answer
                             if tokenizer.decode([int(labels[p])]).strip().isdigit())
                for layer, h in enumerate(hidden):
                    states.setdefault(layer, []).append(h[i, digit - 1])  # predicts the digit
            columns += batch_columns
    target = torch.tensor(columns)
    rows = []
    for layer, vectors in states.items():
        x = torch.stack(vectors)
        spread = float((x - x.mean(0)).norm(dim=1).mean())
        standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
        rows.append({'layer': layer, 'norm': float(x.norm(dim=1).mean()), 'spread': spread,
                     'raw': fit_linear(x[:train], target[:train], x[train:], target[train:],
                                       seed),
                     'standardised': fit_linear(standard[:train], target[:train],
                                                standard[train:], target[train:], seed)})
    return rows


def main() -> None:
    """Run the chosen parts and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--parts', nargs='+', default=['vision', 'lm'], choices=('vision', 'lm'))
    parser.add_argument('--readouts', nargs='+', default=['flat', 'mean', 'attention', 'biased'],
                        choices=('flat', 'mean', 'attention', 'biased'))
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--window', type=int, default=100)
    parser.add_argument('--bias-std', type=float, default=3.0)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.steps < args.window or args.window < 1:
        parser.error('--steps must be at least --window, which must be positive')
    if 'vision' in args.parts:
        rows = [vision_probe(kind, args.steps, args.bias_std, args.seed)
                for kind in args.readouts]
        spans = [f'steps {i}-{min(i + args.window, args.steps) - 1}'
                 for i in range(0, args.steps, args.window)]
        print('Vision tower + readout, column accuracy (chance 0.167)\n')
        print('| readout | ' + ' | '.join(spans) + ' | seconds |')
        print('|---|' + '---|' * len(spans) + '---|')
        for r in rows:
            cells = ' | '.join(f"{np.mean(r['hits'][i:i + args.window]):.3f}"
                               for i in range(0, args.steps, args.window))
            print(f"| {r['readout']} | {cells} | {r['seconds']:.0f} |")
        print()
    if 'lm' in args.parts:
        print('Untrained compact LLaVA, hidden state that predicts the column digit\n')
        print('| layer | norm | image-dependent spread | linear readout, raw | '
              'linear readout, standardised |')
        print('|---|---|---|---|---|')
        for r in lm_probe(args.seed):
            print(f"| {r['layer']} | {r['norm']:.3f} | {r['spread']:.4f} | {r['raw']:.3f} | "
                  f"{r['standardised']:.3f} |")


if __name__ == '__main__':
    main()

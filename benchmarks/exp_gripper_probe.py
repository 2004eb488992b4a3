"""
Experiment: how much of the gripper-to-target distance the images and image tokens hold.

The reward needs answers that follow the gripper-to-target distance frame by frame. Two probes
bound what a model can read from the compact model's 96 px input, without the language model:

- ``ridge``: ridge regression from a model's image tokens (the projector output, all 36 tokens
  flattened, standardised) to the distance, per ``--models`` folder (a shipped or untrained
  compact model);
- ``cnn``: a small convolutional network (four 3x3 conv + max-pool blocks, two linear layers)
  trained on the 96 x 96 pixels to regress the log distance, AdamW lr 1e-3, batch 64.

Each row of a ``synth.gripper`` dataset is one frame; its first question is about the
episode's target, whose exact distance (``value_m``) is the label. Neither probe is told which
object the target is: it has to find it from what the episode's frames share (the gripper
approaches it in most scenarios). Scored on the held-out rows: the mean over episodes of the
Spearman correlation of prediction and truth (does it follow the distance within an episode?)
and the median relative error.

Run: ``PYTHONPATH=. python benchmarks/exp_gripper_probe.py --train DIR/data/gripper_focus
--heldout DIR/data/gripper_heldout --models spatialvlm_ros/model/default_model DIR/init
--cnn-epochs 15`` (about 2 min for the ridge probes and 1 min per CNN epoch on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
import time
from typing import Any

import numpy as np

SIZE = 96


def target_frames(folder: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """
    Return the frames of a gripper dataset, their target distances and episode keys.

    :return: RGB ``uint8`` ``(H, W, 3)`` images, distances ``(N,)`` metres, episode keys.
    """
    from PIL import Image

    from spatialvlm_ros.evaluate.runner import series_of
    from spatialvlm_ros.train.data import read_rows

    images, distances, episodes = [], [], []
    for row in read_rows([folder]):
        meta = row.metadata[0] if row.metadata else {}
        episode = series_of(row.image_id, meta)  # the episode and its target
        if meta.get('value_m') is None or episode is None:
            continue
        with Image.open(io.BytesIO(row.image)) as image:
            images.append(np.asarray(image.convert('RGB')))
        distances.append(float(meta['value_m']))
        episodes.append(episode)
    if not images:
        raise SystemExit(f'no gripper-distance rows in {folder}')
    return images, np.asarray(distances), np.asarray(episodes)


def scores(prediction: np.ndarray, truth: np.ndarray, episodes: np.ndarray) -> dict[str, float]:
    """Return the mean per-episode Spearman (constant episodes left out) and the median error."""
    from scipy.stats import spearmanr

    rhos = []
    for key in np.unique(episodes):
        p, t = prediction[episodes == key], truth[episodes == key]
        if len(p) >= 3 and np.ptp(p) > 0 and np.ptp(t) > 0:
            rhos.append(spearmanr(p, t).statistic)
    return {'spearman': float(np.mean(rhos)) if rhos else float('nan'),
            'median_rel_error': float(np.median(np.abs(prediction - truth) / truth))}


def ridge_probe(model_dir: Path, train: tuple, heldout: tuple,
                lambdas: tuple[float, ...]) -> list[dict[str, Any]]:
    """Fit ridge regressions on a model's image tokens; one row per regularisation."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spatialvlm_ros.train.connector import image_tokens

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)

    def features(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(images), 64):
                chunk = images[s:s + 64]
                out.append(image_tokens(model, processor, chunk).reshape(len(chunk), -1).numpy())
        return np.concatenate(out).astype(np.float64)

    x_train, x_test = features(train[0]), features(heldout[0])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    offset = train[1].mean()
    rows = []
    for lam in lambdas:
        weights = np.linalg.solve(x_train.T @ x_train + lam * np.eye(x_train.shape[1]),
                                  x_train.T @ (train[1] - offset))
        rows.append({'probe': f'ridge on image tokens, lambda {lam:g}', 'model': str(model_dir),
                     **scores(x_test @ weights + offset, heldout[1], heldout[2])})
    return rows


def cnn_probe(train: tuple, heldout: tuple, epochs: int, every: int,
              seed: int) -> list[dict[str, Any]]:
    """Train the small CNN on the pixels; one row every ``every`` epochs."""
    from PIL import Image
    import torch

    torch.manual_seed(seed)

    def tensor(images: list[np.ndarray]) -> Any:
        small = [np.asarray(Image.fromarray(i).resize((SIZE, SIZE), Image.BICUBIC))
                 for i in images]
        return torch.tensor(np.stack(small)).permute(0, 3, 1, 2).float() / 255  # (N, 3, 96, 96)

    x_train, x_test = tensor(train[0]), tensor(heldout[0])
    y_train = torch.tensor(np.log(train[1]), dtype=torch.float32)
    layers: list[Any] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 64), (64, 64)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(),
                   torch.nn.MaxPool2d(2)]
    net = torch.nn.Sequential(*layers, torch.nn.Flatten(),  # (N, 64 * 6 * 6)
                              torch.nn.Linear(64 * (SIZE // 16) ** 2, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 1))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    rows, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for s in range(0, len(order), 64):
            index = order[s:s + 64]
            loss = torch.nn.functional.mse_loss(net(x_train[index]).squeeze(1), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % every == 0 or epoch == epochs:
            net.eval()
            with torch.no_grad():
                prediction = net(x_test).squeeze(1).exp().numpy()
            rows.append({'probe': f'CNN on pixels, epoch {epoch}', 'model': '-',
                         'seconds': round(time.perf_counter() - start),
                         **scores(prediction, heldout[1], heldout[2])})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Run the probes and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--train', type=Path, required=True, help='gripper dataset (training)')
    parser.add_argument('--heldout', type=Path, required=True, help='gripper dataset (held out)')
    parser.add_argument('--models', type=Path, nargs='*', default=[],
                        help='model folders for the ridge probe')
    parser.add_argument('--lambdas', type=float, nargs='+', default=[10.0, 100.0, 1000.0])
    parser.add_argument('--cnn-epochs', type=int, default=15, help='0: no CNN probe')
    parser.add_argument('--every', type=int, default=5, help='CNN evaluation interval (epochs)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.cnn_epochs < 0 or args.every < 1 or min(args.lambdas) <= 0:
        parser.error('--cnn-epochs must be >= 0, --every and --lambdas positive')
    train, heldout = target_frames(args.train), target_frames(args.heldout)
    print(f'{len(train[1])} training frames, {len(heldout[1])} held-out frames '
          f'({len(np.unique(heldout[2]))} episodes)', flush=True)
    rows = [r for m in args.models for r in ridge_probe(m, train, heldout, tuple(args.lambdas))]
    if args.cnn_epochs:
        rows += cnn_probe(train, heldout, args.cnn_epochs, args.every, args.seed)
    print('| probe | model | Spearman per episode | median rel. error |')
    print('|---|---|---|---|')
    for r in rows:
        print(f"| {r['probe']} | {r['model']} | {r['spearman']:.3f} | "
              f"{r['median_rel_error']:.3f} |")


if __name__ == '__main__':
    main()

"""
Supervised grounding: teach a compact VLM's decoder where in the image a question points.

Sessions 5-7 found that a freshly built compact LLaVA does not learn to answer 'which column is
the blue square in?' from the language-model loss alone: it must first match a word to a patch
and then read that patch's position, and neither step gets a usable gradient until the other
works. Two pieces, used together, make that toy learnable (``benchmarks/exp_grounding.py``,
``benchmarks/RESULTS.md`` section "Supervised grounding"):

1. :func:`pretrain_connector` trains the vision tower *and* the projector on dense per-patch
   targets (the patch's own normalised column and row, and its object class), so that the
   tokens the decoder receives carry position and identity as linear features. The projector
   is then centred and scaled to word-embedding size (``train.connector``) and kept frozen.
2. :func:`attention_mass_loss` is an auxiliary loss on the decoder's attention: chosen heads at
   chosen query positions (the words of an object's name; the position that predicts the
   answer) are pushed to put their attention on that object's patches
   (:func:`box_patch_mask`). The model stays a standard ``LlavaForConditionalGeneration``;
   only training changes. It needs the attention weights, so the model must run with
   ``attn_implementation='eager'`` and ``output_attentions=True``.

Formats: images RGB ``uint8`` ``(H, W, 3)``; boxes XYXY pixels of the original image; patch
masks boolean, row-major over the ``grid x grid`` patches of the processor's square resize.
``torch`` is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.train.config import ANSWER_POSITIONS


def box_patch_mask(box: Sequence[float], image_wh: tuple[int, int], grid: int) -> np.ndarray:
    """
    Return which patches a box touches after the image is resized to a square patch grid.

    The processors of the compact model resize without keeping the aspect ratio, so column
    ``c`` spans ``[c * W / grid, (c + 1) * W / grid)`` of the original width (rows likewise).

    :param box: ``(x0, y0, x1, y1)`` in pixels of the original image, ``x0 <= x1``,
        ``y0 <= y1``; clipped to the image.
    :param image_wh: the original ``(width, height)`` in pixels.
    :param grid: patches per side.
    :return: boolean ``(grid * grid,)``, row-major; at least one patch is set.
    """
    width, height = image_wh
    if grid < 1 or width < 1 or height < 1:
        raise ValueError(f'grid and image size must be positive, got {grid} and {image_wh}')
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        raise ValueError(f'box must be finite XYXY with x0 <= x1 and y0 <= y1, got {box}')
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        raise ValueError(f'box {box} lies outside the {width}x{height} image')

    def span(low: float, high: float, size: int) -> tuple[int, int]:
        first = int(np.clip(math.floor(low / size * grid), 0, grid - 1))
        last = int(np.clip(math.ceil(high / size * grid) - 1, first, grid - 1))
        return first, last

    c0, c1 = span(x0, x1, width)
    r0, r1 = span(y0, y1, height)
    mask = np.zeros((grid, grid), dtype=bool)
    mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask.reshape(-1)


def segment_patch_labels(segmentation: np.ndarray, segment_classes: Sequence[int], grid: int,
                         background: int, min_share: float = 0.03) -> np.ndarray:
    """
    Return each patch's class: that of the segment with the most pixels in it.

    Patches are cut as :func:`box_patch_mask` cuts them (the processor's square resize, so
    pixel column ``x`` falls in patch column ``x * grid // W``). A patch whose largest segment
    covers less than ``min_share`` of its pixels is ``background``.

    :param segmentation: ``int`` ``(H, W)`` segment index per pixel, ``-1`` for background.
    :param segment_classes: the class of segment ``k`` at index ``k``; every segment index in
        ``segmentation`` must have one.
    :param grid: patches per side.
    :param background: the class of background patches.
    :param min_share: the least share of a patch's pixels, in ``[0, 1]``.
    :return: ``int64`` ``(grid * grid,)``, row-major.
    """
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(f'segmentation must be int (H, W), got {segmentation.dtype} '
                         f'{segmentation.shape}')
    height, width = segmentation.shape
    if grid < 1 or height < grid or width < grid:
        raise ValueError(f'grid must be in [1, min(H, W)], got {grid} for {width}x{height}')
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f'min_share must be in [0, 1], got {min_share}')
    table = np.asarray(segment_classes, dtype=np.int64).reshape(-1)
    if segmentation.size and (segmentation.min() < -1 or segmentation.max() >= len(table)):
        raise ValueError(f'segment indices must lie in [-1, {len(table)}), got '
                         f'[{segmentation.min()}, {segmentation.max()}]')
    cell = (np.arange(height) * grid // height)[:, None] * grid \
        + (np.arange(width) * grid // width)[None, :]  # (H, W) patch index of each pixel
    segments = len(table) + 1  # slot 0 is the background
    counts = np.bincount((cell * segments + segmentation + 1).ravel(),
                         minlength=grid * grid * segments).reshape(grid * grid, segments)
    pixels = counts.sum(axis=1)  # (P,) pixels per patch
    counts[:, 0] = 0
    best = counts.argmax(axis=1)  # (P,) largest segment slot
    kept = counts[np.arange(grid * grid), best] >= np.maximum(min_share * pixels, 1)
    labels = np.full(grid * grid, background, dtype=np.int64)
    labels[kept] = table[best[kept] - 1]
    return labels


def find_subsequence(ids: Sequence[int], pattern: Sequence[int], start: int = 0) -> int | None:
    """Return the index of the first occurrence of ``pattern`` in ``ids`` at or after ``start``."""
    ids = [int(i) for i in ids]
    pattern = [int(i) for i in pattern]
    if not pattern:
        raise ValueError('the pattern is empty')
    for index in range(max(start, 0), len(ids) - len(pattern) + 1):
        if ids[index:index + len(pattern)] == pattern:
            return index
    return None


@dataclass(frozen=True)
class AttentionTarget:
    """
    One supervised attention row: in one example and head, ``query`` should look at ``keys``.

    :ivar example: index in the batch.
    :ivar head: attention head of the layer the loss is applied to.
    :ivar query: sequence position whose attention row is supervised.
    :ivar keys: sequence positions (before ``query``) that should hold its attention.
    """

    example: int
    head: int
    query: int
    keys: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError('an attention target needs at least one key position')
        if min(self.example, self.head, self.query, *self.keys) < 0:
            raise ValueError(f'positions and indices must be >= 0: {self}')
        if max(self.keys) > self.query:
            raise ValueError(f'key positions {self.keys} lie after query {self.query}: the '
                             'decoder is causal')


def attention_mass_loss(attention: Any, targets: Sequence[AttentionTarget],
                        eps: float = 1e-6) -> Any:
    """
    Return the mean of ``-log(attention mass on the keys)`` over ``targets``.

    :param attention: one decoder layer's attention weights ``(batch, heads, seq, seq)``, rows
        summing to 1 (``output_attentions=True`` with eager attention).
    :param targets: the rows to supervise; must not be empty.
    :return: a scalar tensor that keeps the graph (0 when the heads attend only to the keys).
    """
    import torch

    if attention is None:
        raise ValueError('no attention weights: run the model with '
                         "attn_implementation='eager' and output_attentions=True")
    if attention.dim() != 4 or attention.shape[2] != attention.shape[3]:
        raise ValueError(f'attention must be (batch, heads, seq, seq), got '
                         f'{tuple(attention.shape)}')
    if not targets:
        raise ValueError('attention_mass_loss needs at least one target')
    batch, heads, length, _ = attention.shape
    for target in targets:
        if target.example >= batch or target.head >= heads or target.query >= length:
            raise ValueError(f'{target} is outside attention of shape {tuple(attention.shape)}')
    # one gather over every (row, key) pair and a per-row sum: a Python loop of small indexing
    # ops per row would cost more than the decoder's forward pass at a few thousand rows
    sizes = [len(t.keys) for t in targets]
    rows = torch.repeat_interleave(torch.arange(len(targets)), torch.tensor(sizes))
    where = torch.tensor([(t.example, t.head, t.query) for t in targets])[rows]  # (K, 3)
    keys = torch.tensor([k for t in targets for k in t.keys])  # (K,)
    flat = ((where[:, 0] * heads + where[:, 1]) * length + where[:, 2]) * length + keys
    picked = attention.reshape(-1)[flat.to(attention.device)]  # (K,)
    mass = torch.zeros(len(targets), dtype=picked.dtype, device=attention.device)
    mass = mass.index_add(0, rows.to(attention.device), picked)
    return -torch.log(mass + eps).mean()


_ARTICLES = frozenset(('the', 'a', 'an'))


def find_name(ids: Sequence[int], caption: str, tokenizer: Any,
              start: int = 0) -> tuple[int, int] | None:
    """
    Return the ``(first, end)`` positions of an object's name in ``ids``, or None.

    The name is ``caption`` without a leading 'the' / 'a' / 'an' ('the orange torus' ->
    'orange torus'), tokenized after a space as it follows a word in a question; it is looked
    for at or after ``start``. The grounding rows are found this way, and so are the names the
    evaluation's ``GroundingLocator`` reads.
    """
    words = str(caption).split()
    if len(words) > 1 and words[0].lower() in _ARTICLES:
        words = words[1:]
    name = tokenizer(' ' + ' '.join(words), add_special_tokens=False)['input_ids']
    if not name:
        return None
    at = find_subsequence(ids, name, start)
    return None if at is None else (at, at + len(name))


def answer_spans(labels: Sequence[int], ignore_index: int = -100) -> list[tuple[int, int]]:
    """
    Return the ``[start, end)`` positions of each trained (answer) run of ``labels``, in order.

    :param labels: one example's labels, aligned with its ``input_ids`` (``ignore_index`` on
        every position that is not trained).
    """
    spans: list[tuple[int, int]] = []
    start = None
    for position, label in enumerate(list(labels) + [ignore_index]):
        if label != ignore_index and start is None:
            start = position
        elif label == ignore_index and start is not None:
            spans.append((start, position))
            start = None
    return spans


def conversation_targets(example: int, input_ids: Sequence[int], labels: Sequence[int],
                         image_token_id: int, turns: Sequence[dict[str, Any]],
                         objects: Sequence[dict[str, Any]], tokenizer: Any,
                         image_wh: tuple[int, int], grid: int,
                         ignore_index: int = -100,
                         answer_positions: str = 'first') -> tuple[list[AttentionTarget],
                                                                   list[AttentionTarget]]:
    """
    Return the supervised attention rows of one encoded conversation about one image.

    For the ``t``-th answer run of ``labels`` (the ``t``-th QA turn), with ``turns[t]``'s
    ``captions`` (the engine's ``qa_metadata``; at most the first two), each boxed by the
    turn's own ``boxes`` entry when it has one (the gripper data's metadata) or else by the
    object of ``objects`` with that caption:

    - *name rows*: every token of an object's name in that turn's question (found after the
      previous answer; a leading 'the' / 'a' / 'an' of the caption is left out, and so are
      tokens that decode to whitespace) should attend to the object's patches; head 0 of the
      name layer;
    - *answer rows*: the position that predicts the answer's first token should attend to the
      ``k``-th named object's patches with head ``k`` of the answer layer; with
      ``answer_positions='all'``, every position that predicts one of the answer's tokens
      (the word that decides a templated answer, or its number, often comes several tokens
      in: 'The red mug is about 40 cm from ...').

    A caption with no box, or whose tokens are not found in the question, gives no rows (the
    turn is left to the language-model loss). Sessions 8 and 13 found that these rows
    are what lets the compact decoder learn a question about a named object from image tokens
    that say each patch's type (``benchmarks/RESULTS.md``).

    :param example: the conversation's index in the batch.
    :param input_ids: its token ids, with one ``image_token_id`` per patch, ``grid * grid`` of
        them, in row-major order.
    :param labels: its labels (``ignore_index`` outside the answers), aligned with the ids.
    :param turns: one metadata dict per QA turn (``captions``, optionally ``boxes``: one XYXY
        pixel box or None per caption).
    :param objects: the image's objects (``caption`` and ``box``, XYXY pixels of the image).
    :param tokenizer: the model's tokenizer (``__call__``, ``decode``).
    :param image_wh: the image's ``(width, height)`` in pixels.
    :param grid: patches per side.
    :param answer_positions: ``'first'`` or ``'all'`` (see the answer rows).
    :return: ``(name rows, answer rows)``.
    :raises ValueError: when the ids do not hold ``grid * grid`` image tokens, or on an unknown
        ``answer_positions``.
    """
    if answer_positions not in ANSWER_POSITIONS:
        raise ValueError(f'answer_positions must be one of {ANSWER_POSITIONS}, got '
                         f'{answer_positions!r}')
    ids = [int(v) for v in input_ids]
    image = [p for p, token in enumerate(ids) if token == image_token_id]
    if len(image) != grid * grid:
        raise ValueError(f'example {example} holds {len(image)} image tokens, not the '
                         f'{grid * grid} of a {grid}x{grid} patch grid')
    by_caption = {str(o['caption']): o for o in objects}
    names, answers = [], []
    previous_end = image[-1] + 1
    # answers beyond the metadata (or turns cut off by max_length) get no rows
    for span, meta in zip(answer_spans(labels, ignore_index), turns, strict=False):
        start, end = span
        boxes = list(meta.get('boxes') or [])
        for head, caption in enumerate(list(meta.get('captions') or [])[:2]):
            box = boxes[head] if head < len(boxes) and boxes[head] is not None \
                else by_caption.get(str(caption), {}).get('box')
            if box is None:
                continue
            mask = box_patch_mask(box, image_wh, grid)
            keys = tuple(image[int(k)] for k in np.flatnonzero(mask))
            stop = start if answer_positions == 'first' else end - 1  # query p predicts p + 1
            answers.extend(AttentionTarget(example, head, query, keys)
                           for query in range(start - 1, stop))
            found = find_name(ids, caption, tokenizer, previous_end)
            if found is None or found[1] > start:
                continue
            for position in range(*found):
                if tokenizer.decode([ids[position]]).strip():  # not a bare space
                    names.append(AttentionTarget(example, 0, position, keys))
        previous_end = end
    return names, answers


@dataclass
class ConnectorPretrainConfig:
    """
    How :func:`pretrain_connector` trains the tower and projector.

    :ivar steps: optimizer steps.
    :ivar batch_size: images per step.
    :ivar lr: Adam learning rate.
    :ivar position_weight: weight of the per-patch (column, row) regression.
    :ivar seed: seed of the image sampling and of the throw-away head.
    :ivar colour_weight: weight of a per-patch regression of the patch's mean RGB
        (:func:`patch_mean_colour`), so that a tower trained on object classes keeps the
        colours the captions name (0: off).
    :ivar flip: mirror half of each batch left-right (images and labels; the position targets
        stay those of the patch's place).
    :ivar one_cycle: AdamW with ``torch``'s one-cycle schedule (5% warm-up, at least two
        steps; peak ``lr``; weight decay 0.01) instead of Adam at a constant ``lr``. Runs of
        fewer than 4 steps keep AdamW at the constant ``lr``.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    position_weight: float = 1.0
    seed: int = 0
    colour_weight: float = 0.0
    flip: bool = False
    one_cycle: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError('steps and batch_size must be >= 1')
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f'lr must be positive, got {self.lr}')
        for name in ('position_weight', 'colour_weight'):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f'{name} must be >= 0, got {value}')


def mirror_patch_labels(labels: np.ndarray, grid: int) -> np.ndarray:
    """Return row-major ``(..., grid * grid)`` patch labels of the left-right mirrored images."""
    labels = np.asarray(labels)
    if labels.shape[-1] != grid * grid:
        raise ValueError(f'labels must end in {grid * grid} patches, got {labels.shape}')
    return labels.reshape(*labels.shape[:-1], grid, grid)[..., ::-1].reshape(labels.shape)


def patch_mean_colour(images: np.ndarray, grid: int) -> np.ndarray:
    """
    Return each patch's mean colour, scaled to ``[-1, 1]``.

    Patches are cut as :func:`box_patch_mask` cuts them (pixel column ``x`` falls in patch
    column ``x * grid // W``).

    :param images: RGB ``uint8`` ``(B, H, W, 3)``.
    :param grid: patches per side (at most ``min(H, W)``).
    :return: ``float32`` ``(B, grid * grid, 3)``, row-major.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f'images must be RGB uint8 (B, H, W, 3), got {images.dtype} '
                         f'{images.shape}')
    _, height, width, _ = images.shape
    if not 1 <= grid <= min(height, width):
        raise ValueError(f'grid must be in [1, min(H, W)], got {grid} for {width}x{height}')
    rows = np.eye(grid, dtype=np.float32)[np.arange(height) * grid // height]  # (H, grid)
    cols = np.eye(grid, dtype=np.float32)[np.arange(width) * grid // width]  # (W, grid)
    sums = np.einsum('hg,bhwc,wk->bgkc', rows, images.astype(np.float32), cols, optimize=True)
    counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]  # (grid, grid) pixels per patch
    return (sums / counts[None, :, :, None] / 127.5 - 1.0).reshape(len(images), -1, 3)


def pretrain_connector(model: Any, processor: Any, images: Sequence[np.ndarray],
                       labels: np.ndarray, classes: int,
                       config: ConnectorPretrainConfig | None = None,
                       class_weights: Sequence[float] | None = None,
                       return_head: bool = False) -> Any:
    """
    Train the vision tower and projector so each output token names its patch's place and class.

    A throw-away linear head on every projector output token predicts the patch's column and
    row scaled to [-1, 1] (mean squared error) and its class (cross-entropy); the head is
    dropped afterwards. Only the tower and the projector change.

    :param model: a LLaVA model (``model.vision_tower``, ``model.multi_modal_projector``,
        ``model.get_image_features``) with a square patch grid.
    :param processor: its processor.
    :param images: RGB ``uint8`` ``(H, W, 3)`` training images.
    :param labels: ``int`` ``(len(images), grid * grid)`` class per patch, row-major, each in
        ``[0, classes)`` (use one class for background).
    :param classes: the number of classes.
    :param config: steps, batch size, learning rate.
    :param class_weights: optional cross-entropy weight per class (e.g. a low weight for the
        background, which covers most patches of a tabletop image).
    :return: per step ``{'position': mse, 'class': cross_entropy, 'accuracy': patch accuracy}``
        (and ``'colour'``: mse, with ``config.colour_weight``); with ``return_head``,
        ``(history, head)``: the trained ``torch.nn.Linear`` head, whose outputs on a
        projector token are ``(column, row, class logits..., [colours])``.
    """
    import torch

    from spatialvlm_ros.train.connector import check_images, image_tokens

    config = config or ConnectorPretrainConfig()
    inner = getattr(model, 'model', None)
    tower = getattr(inner, 'vision_tower', None)
    projector = getattr(inner, 'multi_modal_projector', None)
    if tower is None or projector is None:
        raise ValueError('pretrain_connector needs a LLaVA model (vision_tower and '
                         'multi_modal_projector)')
    images = check_images(images, 'pretrain_connector')
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != len(images) \
            or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'labels must be int (images, patches), got {labels.dtype} '
                         f'{labels.shape} for {len(images)} images')
    if classes < 1 or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f'labels must lie in [0, {classes}), got [{labels.min()}, '
                         f'{labels.max()}]')
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(np.asarray(class_weights, dtype=np.float32))
        if weight.shape != (classes,) or not torch.isfinite(weight).all() or (weight < 0).any() \
                or not weight.sum() > 0:
            raise ValueError(f'class_weights must be {classes} finite values >= 0, not all 0')
    grid = math.isqrt(labels.shape[1])
    if grid * grid != labels.shape[1]:
        raise ValueError(f'{labels.shape[1]} patches is not a square grid')
    hidden = projector.linear_2.out_features
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    position = torch.tensor(np.stack([columns, rows], 1) / max(grid - 1, 1) * 2 - 1,
                            dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    colours = 3 if config.colour_weight > 0 else 0
    head = torch.nn.Linear(hidden, 2 + classes + colours)
    with torch.no_grad():  # a seeded head, independent of the global torch seed
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * hidden ** -0.5)
        head.bias.zero_()
    parameter = next(projector.parameters())
    head.to(device=parameter.device, dtype=parameter.dtype)
    position = position.to(device=parameter.device, dtype=parameter.dtype)
    trained = list(tower.parameters()) + list(projector.parameters())
    saved = [p.requires_grad for p in trained]
    for p in trained:
        p.requires_grad_(True)
    schedule = None
    if config.one_cycle:
        optimizer = torch.optim.AdamW(trained + list(head.parameters()), lr=config.lr,
                                      weight_decay=0.01)
        if config.steps >= 4:  # shorter runs (smoke tests) keep the constant peak lr
            # torch's warm-up phase must span at least one step (it divides by its length)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, config.lr, total_steps=config.steps,
                pct_start=max(0.05, 2.0 / config.steps))
    else:
        optimizer = torch.optim.Adam(trained + list(head.parameters()), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    was_training = model.training
    model.train()
    history = []
    try:
        for _ in range(config.steps):
            pick = rng.integers(len(images), size=config.batch_size)
            batch, batch_labels = [images[i] for i in pick], labels[pick]
            if config.flip:
                flips = rng.random(config.batch_size) < 0.5
                batch = [np.ascontiguousarray(b[:, ::-1]) if f else b
                         for b, f in zip(batch, flips, strict=True)]
                batch_labels = np.where(flips[:, None], mirror_patch_labels(batch_labels, grid),
                                        batch_labels)
            features = image_tokens(model, processor, batch)
            if features.shape[1] != grid * grid:
                raise ValueError(f'the model gives {features.shape[1]} tokens per image, the '
                                 f'labels {grid * grid}')
            out = head(features)  # (batch, patches, 2 + classes [+ 3 colours])
            target = torch.as_tensor(batch_labels, dtype=torch.long, device=parameter.device)
            place = torch.nn.functional.mse_loss(out[..., :2], position.expand_as(out[..., :2]))
            logits = out[..., 2:2 + classes].reshape(-1, classes)
            kind = torch.nn.functional.cross_entropy(
                logits, target.reshape(-1), weight=None if weight is None else weight.to(logits))
            loss = config.position_weight * place + kind
            record = {}
            if colours:
                colour_target = torch.as_tensor(np.concatenate(
                    [patch_mean_colour(b[None], grid) for b in batch]))  # images may differ
                colour = torch.nn.functional.mse_loss(
                    out[..., 2 + classes:], colour_target.to(out))
                loss = loss + config.colour_weight * colour
                record['colour'] = colour.item()
            if not torch.isfinite(loss):
                raise FloatingPointError('connector pre-training diverged (loss is not finite)')
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            accuracy = float((logits.argmax(1) == target.reshape(-1)).float().mean())
            history.append({'position': place.item(), 'class': kind.item(),
                            'accuracy': accuracy, **record})
    finally:
        for p, flag in zip(trained, saved, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return (history, head) if return_head else history

"""
Experiment: whether a fresh compact VLM learns 'Is A to the left of B?' on the engine's images.

The toy tasks of ``exp_learnability.py`` use one bright 16 px square. This one uses the data
engine's rendered scenes and its per-object boxes and captions (``metadata.jsonl`` beside the
shards): each example picks two objects of a kept image whose box centres are at least
``--min-gap`` pixels apart horizontally and asks 'Is the blue dice to the left of soccer ball?'
-> 'Yes.' / 'No.', half of each (the truth is the box centres, in the rendered image). Images
whose id hashes to 0 mod 10 form the test set. Accuracy compares the logits of 'Yes' and 'No'
at the answer position, on 160 balanced test pairs, every 100 steps.

Arms (lr 1e-3 for the first two, 3e-4 for the rest, as each recipe was tuned):

- ``plain`` trains everything (as the shipped recipe does);
- ``centred`` subtracts the projector's mean output over 64 training images and keeps the tower
  and projector frozen (what makes the toy column task learnable, ``train.connector``);
- ``connector``: the recipe that learns the named toy (``train.grounding``, ``exp_grounding.py``)
  on these images: the tower and projector pre-trained on per-patch position and catalogue
  type (the ``id`` of the smallest box on the patch), centred, scaled, frozen, and the
  decoder's attention supervised (:func:`grounding_rows`). With ``--connector`` the tower and
  projector come from ``exp_patch_labels.py --save`` (pre-trained on fresh renders), with
  ``--fold`` optionally reduced to what that run's head reads;
- ``oracle``: the projector's output replaced by what a perfect connector would say
  (:func:`oracle_features`: type, the box's mean colour, position; fixed random mix to the
  decoder's width, unit norm), no attention loss; ``--oracle-identity colour`` codes the
  object's palette colour instead of its type (:func:`add_colours`), ``none`` neither,
  ``--no-oracle-rgb`` drops the mean colour, and ``--oracle-type-error P`` gives a share P of
  the object patches a wrong type code (a tower that gets that share wrong), and
  ``--type-tower`` fills the same layout from pixels: a saved type tower's per-patch
  probabilities and each patch's mean RGB;
- ``oracle-grounded``: the oracle tokens with the attention loss. With ``oracle`` it splits
  the problem: what the decoder can learn once the tokens are right, with and without
  grounding supervision.

Run: ``PYTHONPATH=. python benchmarks/exp_real_pairs.py --data /tmp/svlm_default/data/train
--arms centred --image-size 96`` (about 2 min per 400 steps at 96 px on 2 CPU cores; the
grounded arms take about 3.5 min per 600 steps, plus 2 min of connector pre-training).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
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


def sample_pair_records(objects: dict[str, list[dict[str, Any]]], images: dict[str, bytes],
                        rng: np.random.Generator, n: int, test: bool,
                        min_gap: float) -> list[dict[str, Any]]:
    """
    Return ``n`` left-of examples, half 'Yes.', half 'No.', with the objects they name.

    Each is ``{'image_id', 'image', 'question', 'answer', 'first', 'second'}``; ``first`` and
    ``second`` are the metadata objects (``caption``, ``box``) in the question's order.
    """
    ids = [i for i in objects if i in images and is_test(i) == test]
    if not ids:
        raise ValueError(f"no {'test' if test else 'training'} images with two objects")
    wanted = {'Yes.': n // 2, 'No.': n - n // 2}
    out: list[dict[str, Any]] = []
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
        out.append({'image_id': image_id, 'image': images[image_id],
                    'question': f"Is {a['caption']} to the left of {b['caption']}?",
                    'answer': answer, 'first': a, 'second': b})
    raise ValueError(f'could not draw {n} pairs {min_gap} px apart; lower --min-gap')


def sample_pairs(objects: dict[str, list[dict[str, Any]]], images: dict[str, bytes],
                 rng: np.random.Generator, n: int, test: bool,
                 min_gap: float) -> list[tuple[bytes, str, str]]:
    """Return ``n`` ``(image, question, answer)`` left-of examples, half 'Yes.', half 'No.'."""
    return [(r['image'], r['question'], r['answer'])
            for r in sample_pair_records(objects, images, rng, n, test, min_gap)]


def _largest_first(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the objects by decreasing box area (so smaller ones are drawn over larger ones)."""
    return sorted(found, key=lambda o: -(o['box'][2] - o['box'][0]) * (o['box'][3] - o['box'][1]))


def patch_classes(found: list[dict[str, Any]], types: list[str], grid: int,
                  image_wh: tuple[int, int]) -> np.ndarray:
    """
    Return each patch's class: the catalogue type (``object['id']``) of the smallest box on it.

    :return: ``int64`` ``(grid * grid,)``; ``len(types)`` is the background.
    """
    from spatialvlm_ros.train.grounding import box_patch_mask

    labels = np.full(grid * grid, len(types), dtype=np.int64)
    for obj in _largest_first(found):
        labels[box_patch_mask(obj['box'], image_wh, grid)] = types.index(obj['id'])
    return labels


def oracle_features(image: np.ndarray, found: list[dict[str, Any]], types: list[str],
                    grid: int, identity: str = 'type', rgb: bool = True,
                    type_error: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """
    Return what a perfect connector would say of each patch.

    Per patch: a one-hot code of the object on it, or background; the mean RGB of that
    object's box scaled to [-1, 1] (zeros on background, or everywhere when ``rgb`` is off);
    and the patch's column and row scaled to [-1, 1].

    :param image: the RGB ``uint8`` ``(H, W, 3)`` render the boxes refer to.
    :param identity: the code: ``'type'`` (the catalogue type, ``object['id']``, unique in a
        scene), ``'colour'`` (``object['colour']``, a palette name, see :func:`add_colours`)
        or ``'none'`` (one 'object' flag).
    :param type_error: with ``'type'``, the share of object patches whose code names another
        type, drawn uniformly (``rng``): the tokens of a tower that gets that share wrong.
    :return: ``float32`` ``(grid * grid, len(types) + 6)``.
    """
    from spatialvlm_ros.sim.catalog import PALETTE
    from spatialvlm_ros.train.grounding import box_patch_mask

    if identity not in IDENTITIES:
        raise ValueError(f'identity must be one of {IDENTITIES}, got {identity!r}')
    if identity == 'colour' and len(PALETTE) > len(types):
        raise ValueError(f'{len(PALETTE)} colours do not fit the {len(types)} code slots')
    height, width = image.shape[:2]
    features = np.zeros((grid * grid, len(types) + 6), dtype=np.float32)
    features[:, len(types)] = 1.0
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    features[:, -2] = columns / max(grid - 1, 1) * 2 - 1
    features[:, -1] = rows / max(grid - 1, 1) * 2 - 1
    for obj in _largest_first(found):
        mask = box_patch_mask(obj['box'], (width, height), grid)
        x0, y0, x1, y1 = (int(round(v)) for v in obj['box'])
        crop = image[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].reshape(-1, 3)
        features[mask, :len(types) + 1] = 0.0
        if identity == 'type':
            codes = np.full(int(mask.sum()), types.index(obj['id']))
            if type_error > 0:
                wrong = rng.random(len(codes)) < type_error
                # another type: shift by 1..len(types)-1, uniform over the other types
                codes[wrong] = (codes[wrong] + rng.integers(1, len(types), int(wrong.sum()))) \
                    % len(types)
            features[np.flatnonzero(mask), codes] = 1.0
        elif identity == 'colour':
            features[mask, list(PALETTE).index(obj['colour'])] = 1.0
        else:
            features[mask, 0] = 1.0
        if rgb:
            features[mask, len(types) + 1:len(types) + 4] = crop.mean(0) / 255.0 * 2 - 1
    return features


def tower_features(image: np.ndarray, probabilities: np.ndarray, types: list[str],
                   grid: int) -> np.ndarray:
    """
    Return the oracle's token layout filled from pixels only (no boxes, no truth).

    :param image: the RGB ``uint8`` ``(H, W, 3)`` render.
    :param probabilities: a type tower's per-patch softmax, ``(grid * grid, len(CATALOG) + 1)``
        in catalogue order, background last (``exp_type_tower.load_arm``).
    :return: ``float32`` ``(grid * grid, len(types) + 6)``: the probabilities of ``types`` and
        of the background, the patch's own mean RGB scaled to [-1, 1] (the image resized to
        the grid, as the processor squashes it), and the patch's column and row.
    """
    from spatialvlm_ros.sim.catalog import CATALOG

    catalogue = list(CATALOG)
    names = [t.replace('_', ' ') for t in types]  # the engine's ids: 'soccer_ball'
    missing = sorted(set(names) - set(catalogue))
    if missing:
        raise ValueError(f'types {missing} are not in the catalogue the tower was trained on')
    features = np.zeros((grid * grid, len(types) + 6), dtype=np.float32)
    features[:, :len(types)] = probabilities[:, [catalogue.index(t) for t in names]]
    features[:, len(types)] = probabilities[:, -1]
    height, width = image.shape[:2]
    rows = np.minimum(np.arange(height) * grid // height, grid - 1)
    columns = np.minimum(np.arange(width) * grid // width, grid - 1)
    cell = (rows[:, None] * grid + columns[None, :]).ravel()
    sums = np.zeros((grid * grid, 3))
    np.add.at(sums, cell, image.reshape(-1, 3).astype(np.float64))
    counts = np.bincount(cell, minlength=grid * grid)[:, None]
    features[:, len(types) + 1:len(types) + 4] = sums / np.maximum(counts, 1) / 255.0 * 2 - 1
    index = np.arange(grid * grid)
    features[:, -2] = index % grid / max(grid - 1, 1) * 2 - 1
    features[:, -1] = index // grid / max(grid - 1, 1) * 2 - 1
    return features


def add_colours(objects: dict[str, list[dict[str, Any]]]) -> None:
    """
    Add each object's palette colour (``'colour'``) to engine metadata, from its scene.

    The engine's simulator images are ``sim-<seed>-<index>``; the scene is sampled again from
    the same generator (``synth.pipeline.scene_generators``) with the default ``SceneConfig``
    at 320 x 240 (no rendering). A colour word in a caption must agree with it.
    """
    from spatialvlm_ros.sim.catalog import PALETTE
    from spatialvlm_ros.sim.scene import sample_scene, SceneConfig
    from spatialvlm_ros.synth.pipeline import scene_generators

    config = SceneConfig(width=320, height=240)
    for image_id, found in objects.items():
        parts = image_id.split('-')
        if len(parts) != 3 or parts[0] != 'sim':
            raise ValueError(f'{image_id!r} is not a simulator image id (sim-<seed>-<index>)')
        scene = sample_scene(config, scene_generators(int(parts[1]), int(parts[2]))[0])
        colour = {o.object_id: o.attributes['colour'] for o in scene.objects}
        for obj in found:
            obj['colour'] = colour[obj['id']]
            named = [w for w in obj['caption'].split() if w in PALETTE]
            if named and named[0] != obj['colour']:
                raise ValueError(f"{image_id}: caption {obj['caption']!r} but the scene's "
                                 f"object is {obj['colour']}: another scene config?")


def load_connector(model: Any, path: Path, fold: str, seed: int) -> None:
    """
    Load a tower and projector saved by ``exp_patch_labels.py --save``, optionally folded.

    With ``fold`` ``'all'`` or ``'position+colour'``, the projector's last layer is replaced by
    ``mix @ head`` (the saved head's rows, a fixed random ``mix`` to the decoder's width), so
    the tokens carry only what the head reads: its position, colour (and type) logits.
    """
    from safetensors import safe_open
    import torch

    with safe_open(str(path), framework='pt') as stream:
        layout = json.loads(stream.metadata()['layout'])
        tensors = {k: stream.get_tensor(k) for k in stream.keys()}
    inner = model.model
    tower = inner.vision_tower.config
    if (layout['image_size'], layout['patch_size']) != (tower.image_size, tower.patch_size):
        raise ValueError(f"{path} is for {layout['image_size']} px / {layout['patch_size']} px "
                         f'patches, the model takes {tower.image_size} / {tower.patch_size}')
    for prefix, module in (('tower.', inner.vision_tower),
                           ('projector.', inner.multi_modal_projector)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                if k.startswith(prefix)})
    if fold == 'none':
        return
    keep = ('position', 'colour', 'type') if fold == 'all' else ('position', 'colour')
    rows = torch.cat([torch.arange(*layout['head'][name]) for name in keep])
    weight, bias = tensors['head.weight'][rows], tensors['head.bias'][rows]
    last = inner.multi_modal_projector.linear_2
    mix = torch.randn(last.out_features, len(rows), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        folded_weight, folded_bias = mix @ weight @ last.weight, mix @ (weight @ last.bias + bias)
        last.weight.copy_(folded_weight)
        last.bias.copy_(folded_bias)


def grounding_rows(batch: dict[str, Any], records: list[dict[str, Any]], tokenizer: Any,
                   grid: int, image_wh: tuple[int, int]) -> tuple[list, list]:
    """
    Return the supervised attention rows of decoder layers 0 and 1.

    Layer 0, head 0: every token of each object's name except 'the' looks at that object's
    patches. Layer 1: at the position that predicts the answer, head 0 looks at the first
    object's patches and head 1 at the second's.
    """
    from spatialvlm_ros.train.grounding import AttentionTarget, box_patch_mask, find_subsequence

    layer0, layer1 = [], []
    for i, record in enumerate(records):
        ids = batch['input_ids'][i].tolist()
        image = [p for p, t in enumerate(ids) if t == tokenizer.image_token_id]
        answer = int((batch['labels'][i] != -100).nonzero()[0]) - 1
        for head, key in enumerate(('first', 'second')):
            obj = record[key]
            mask = box_patch_mask(obj['box'], image_wh, grid)
            keys = tuple(image[int(k)] for k in np.flatnonzero(mask))
            name = tokenizer(' ' + obj['caption'], add_special_tokens=False)['input_ids']
            at = find_subsequence(ids, name, image[-1] + 1)
            if at is None:
                raise ValueError(f"{obj['caption']!r} not found in example {i}'s tokens")
            for position in range(at, at + len(name)):
                if tokenizer.decode([ids[position]]).strip() not in ('', 'the'):
                    layer0.append(AttentionTarget(i, 0, position, keys))
            layer1.append(AttentionTarget(i, head, answer, keys))
    return layer0, layer1


IDENTITIES = ('type', 'colour', 'none')
FOLDS = ('none', 'all', 'position+colour')
GROUNDED = ('connector', 'oracle-grounded')
ORACLE = ('oracle', 'oracle-grounded')


def _type_tower_module() -> Any:
    """Return ``exp_type_tower`` (the saved type towers), from beside this file."""
    import importlib.util

    path = Path(__file__).resolve().parent / 'exp_type_tower.py'
    spec = importlib.util.spec_from_file_location('exp_type_tower', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(arm: str, data: Path, image_size: int, steps: int, min_gap: float,
        seed: int, pretrain_steps: int = 600, connector: Path | None = None,
        fold: str = 'none', identity: str = 'type', rgb: bool = True,
        type_error: float = 0.0,
        type_tower: Path | None = None,
        tower_types: bool = True, tower_arm: str = 'cnn',
        model_dir: Path | None = None) -> list[tuple[int, float, float]]:
    """
    Train one fresh model; return ``(step, mean loss of the last 100, test accuracy)``.

    ``connector`` (connector arm): load the tower and projector from that file
    (:func:`load_connector`, with ``fold``) instead of pre-training them here. ``identity``
    and ``rgb`` (oracle arms): what :func:`oracle_features` puts in each token;
    ``type_error``: the share of object patches whose type code is wrong, the same draw for
    an image each time it is seen (seeded by its id), as a tower's errors would be;
    ``type_tower``: a ``tower_arm`` arm saved by ``exp_type_tower.py --save`` whose per-patch type
    probabilities and each patch's mean RGB replace the oracle's codes (:func:`tower_features`);
    ``tower_types`` off zeroes the type probabilities (a control: colour and place only).
    ``model_dir`` (connector arm): a compact model folder whose tower and projector are used as
    they are (e.g. ``exp_type_tower.py --export-model``: centred and scaled already), with a
    fresh decoder of ``seed``; its vision tower may be any of the compact model's.
    """
    import torch

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.config import TrainConfig
    from spatialvlm_ros.train.connector import centre_projector, scale_projector
    from spatialvlm_ros.train.data import ConversationEncoder, decode_image, Example, read_rows
    from spatialvlm_ros.train.grounding import (
        attention_mass_loss,
        ConnectorPretrainConfig,
        pretrain_connector,
    )
    from spatialvlm_ros.train.trainer import apply_freeze_policy

    objects = load_objects(data)
    if arm in ORACLE and identity == 'colour':
        add_colours(objects)
    images = {row.image_id: row.image for row in read_rows([data]) if row.image_id in objects}
    decoded: dict[str, np.ndarray] = {}

    def pixels(image_id: str) -> np.ndarray:
        if image_id not in decoded:
            decoded[image_id] = np.asarray(decode_image(images[image_id]))
        return decoded[image_id]

    first_id = next(iter(images))
    image_wh = (pixels(first_id).shape[1], pixels(first_id).shape[0])
    grid = image_size // 16
    types = sorted({o['id'] for found in objects.values() for o in found})
    tokenizer = build_default_tokenizer()
    torch.manual_seed(seed)
    model, processor = build_compact_model(CompactVLMConfig(image_size=image_size, seed=seed),
                                           tokenizer)
    if arm in GROUNDED:
        model.set_attn_implementation('eager')
    encoder = ConversationEncoder(processor, 512)
    train_ids = [i for i in images if not is_test(i)]
    calibration = [pixels(i) for i in train_ids[:64]]
    if arm == 'connector' and model_dir is not None:
        from spatialvlm_ros.model.loading import load_vlm

        given = load_vlm(model_dir, device='cpu', dtype='float32').model
        if given.config.image_seq_length != grid * grid:
            raise ValueError(f'{model_dir} gives {given.config.image_seq_length} image tokens, '
                             f'the arm needs {grid * grid}')
        model.model.vision_tower = given.model.vision_tower
        model.model.multi_modal_projector.load_state_dict(
            given.model.multi_modal_projector.state_dict())
        model.config.vision_config = given.config.vision_config
    elif arm == 'connector' and connector is not None:
        load_connector(model, connector, fold, seed)
        centre_projector(model, processor, calibration)
        scale_projector(model, processor, calibration, 1.0)
    elif arm == 'connector':
        chosen = train_ids[:2000]
        weights = np.ones(len(types) + 1, dtype=np.float32)
        weights[-1] = 0.1  # the background covers most patches
        labels = np.stack([patch_classes(objects[i], types, grid, image_wh) for i in chosen])
        history = pretrain_connector(model, processor, [pixels(i) for i in chosen], labels,
                                     len(types) + 1,
                                     ConnectorPretrainConfig(steps=pretrain_steps, seed=seed),
                                     class_weights=weights)
        last = history[-min(100, len(history)):]
        print(f'connector pre-training, last {len(last)} steps: position MSE '
              f"{np.mean([h['position'] for h in last]):.4f}, weighted type cross-entropy "
              f"{np.mean([h['class'] for h in last]):.3f} (uniform guess "
              f'{np.log(len(types) + 1):.2f})', file=sys.stderr, flush=True)
        centre_projector(model, processor, calibration)
        scale_projector(model, processor, calibration, 1.0)
    elif arm == 'centred':
        centre_projector(model, processor, calibration)
    oracle: dict[str, Any] = {}
    if arm in ORACLE:  # the projector's output is replaced by normalised oracle tokens
        hidden = model.config.text_config.hidden_size
        mix = torch.randn(len(types) + 6, hidden, generator=torch.Generator().manual_seed(seed))

        seen: dict[str, np.ndarray] = {}
        if type_tower is not None:
            from spatialvlm_ros.sim.catalog import CATALOG

            forward, tower_grid = _type_tower_module().load_arm(tower_arm, type_tower,
                                                                len(CATALOG) + 1)
            if tower_grid != grid:
                raise ValueError(f'the type tower has a {tower_grid} grid, the model {grid}')

        def features_of(image_id: str) -> np.ndarray:
            if image_id not in seen:
                with torch.no_grad():
                    logits = forward(pixels(image_id)[None])[0]  # (grid * grid, 15)
                seen[image_id] = tower_features(pixels(image_id),
                                                torch.softmax(logits, -1).numpy(), types, grid)
                if not tower_types:
                    seen[image_id][:, :len(types)] = 0.0
            return seen[image_id]

        def truth_features(image_id: str) -> np.ndarray:
            return oracle_features(pixels(image_id), objects[image_id], types, grid, identity,
                                   rgb, type_error, np.random.default_rng(
                                       [seed, zlib.crc32(image_id.encode('utf-8'))]))

        def tokens(records: list[dict[str, Any]]) -> Any:
            source = truth_features if type_tower is None else features_of
            features = torch.stack([torch.from_numpy(source(r['image_id'])) for r in records])
            out = features @ mix
            return out / out.norm(dim=-1, keepdim=True)

        model.model.multi_modal_projector.register_forward_hook(
            lambda module, args, output: oracle['tokens'])
    frozen = arm != 'plain'
    # the trainer's own freeze policy (model / data are not read by it)
    apply_freeze_policy(model, TrainConfig(model='unused', data=('unused',),
                                           freeze_vision=frozen, freeze_projector=frozen))
    lr = 1e-3 if arm in ('plain', 'centred') else 3e-4
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    test = sample_pair_records(objects, images, np.random.default_rng(seed + 5), 160, True,
                               min_gap)
    yes = tokenizer('Yes.', add_special_tokens=False)['input_ids'][0]
    no = tokenizer('No.', add_special_tokens=False)['input_ids'][0]

    def encode(records: list[dict[str, Any]]) -> dict[str, Any]:
        if arm in ORACLE:
            oracle['tokens'] = tokens(records)
        return encoder.batch([Example(r['image'], [(r['question'], r['answer'])], 'spatial',
                                      'pairs') for r in records])

    def accuracy() -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for start in range(0, len(test), 16):
                chunk = test[start:start + 16]
                batch = encode(chunk)
                logits = model(**batch).logits
                for j, record in enumerate(chunk):
                    first = int((batch['labels'][j] != -100).nonzero()[0]) - 1
                    said_yes = bool(logits[j, first, yes] > logits[j, first, no])
                    right += said_yes == (record['answer'] == 'Yes.')
        train_mode()
        return right / len(test)

    def train_mode() -> None:
        model.train()
        if frozen:  # a frozen tower draws no stochastic depth (Swin, FocalNet), as in the trainer
            model.model.vision_tower.eval()

    rng = np.random.default_rng(seed + 1)
    rows, losses = [], []
    train_mode()
    for step in range(1, steps + 1):
        records = sample_pair_records(objects, images, rng, 16, False, min_gap)
        batch = encode(records)
        out = model(**batch, output_attentions=arm in GROUNDED)
        loss = out.loss
        if arm in GROUNDED:
            layer0, layer1 = grounding_rows(batch, records, tokenizer, grid, image_wh)
            loss = loss + attention_mass_loss(out.attentions[0], layer0) \
                + attention_mass_loss(out.attentions[1], layer1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
        if step % 100 == 0 or step == steps:
            rows.append((step, float(np.mean(losses[-100:])), accuracy()))
    return rows


def main() -> None:
    """Train each arm and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, required=True, help='an engine dataset folder')
    parser.add_argument('--arms', nargs='+',
                        choices=('plain', 'centred', 'connector', 'oracle', 'oracle-grounded'),
                        default=['plain', 'centred'])
    parser.add_argument('--pretrain-steps', type=int, default=600,
                        help='connector pre-training steps of the connector arm')
    parser.add_argument('--connector', type=Path,
                        help='connector arm: load tower and projector from this file '
                             '(exp_patch_labels.py --save) instead of pre-training them')
    parser.add_argument('--model', type=Path,
                        help='connector arm: take the tower and projector of this compact model '
                             'folder as they are (exp_type_tower.py --export-model)')
    parser.add_argument('--fold', choices=FOLDS, default='none',
                        help="with --connector: keep only the saved head's outputs")
    parser.add_argument('--oracle-identity', choices=IDENTITIES, default='type',
                        help='oracle arms: the one-hot object code of each token')
    parser.add_argument('--no-oracle-rgb', action='store_true',
                        help="oracle arms: leave the box's mean RGB out of the tokens")
    parser.add_argument('--oracle-type-error', type=float, default=0.0,
                        help='oracle arms: share of object patches given a wrong type code')
    parser.add_argument('--type-tower', type=Path,
                        help='oracle arms: codes from this saved type tower '
                             '(exp_type_tower.py --save) instead of the truth')
    parser.add_argument('--type-tower-arm', default='cnn',
                        help="the exp_type_tower arm --type-tower holds (default 'cnn')")
    parser.add_argument('--no-tower-types', action='store_true',
                        help='with --type-tower: zero the type probabilities (a control)')
    parser.add_argument('--image-size', type=int, default=96)
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--min-gap', type=float, default=20.0,
                        help='least horizontal distance of the box centres, in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.image_size < 16 or args.image_size % 16:
        parser.error('--steps must be >= 1 and --image-size a multiple of 16')
    if not 0 <= args.oracle_type_error <= 1:
        parser.error('--oracle-type-error must lie in [0, 1]')
    print('| arm | image size | step | training loss (last 100) | test accuracy | '
          'seconds (whole arm) |')
    print('|---|---|---|---|---|---|')
    for arm in args.arms:
        start = time.perf_counter()
        for step, loss, acc in run(arm, args.data, args.image_size, args.steps,
                                   args.min_gap, args.seed, args.pretrain_steps, args.connector,
                                   args.fold, args.oracle_identity, not args.no_oracle_rgb,
                                   args.oracle_type_error, args.type_tower,
                                   not args.no_tower_types, args.type_tower_arm,
                                   args.model):
            print(f'| {arm} | {args.image_size} | {step} | {loss:.3f} | {acc:.3f} | '
                  f'{time.perf_counter() - start:.0f} |', flush=True)


if __name__ == '__main__':
    main()

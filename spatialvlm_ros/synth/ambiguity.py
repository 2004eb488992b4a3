"""
Ambiguity resolution (paper section 3.2, "resolving ambiguity"): captions that can't be told apart.

All captions are embedded with a text embedder (a ``TextEmbedder`` backend). First, regions
whose caption is close to a background "stuff" phrase (table, floor, wall, sky, ...) are
removed. Then pairs of captions whose cosine similarity is at least the threshold are "too
similar"; the connected components of that relation are groups. A group of exactly two is
disambiguated with a location clause from the two regions' image positions (box centres): the
axis with the larger offset, relative to the image size, decides between "on the left" / "on
the right" and "closer to the top / bottom of the image". Larger groups are dropped, as in the
paper. Clause templates are data (:data:`CLAUSES`); ``{caption}`` is the original caption.

Thresholds depend on the embedder: an embedder may carry ``similarity_threshold`` and
``stuff_threshold`` attributes (the hashing embedder does), used when the config leaves them
None; otherwise 0.9 / 0.8 (CLIP-like text embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.synth.stages import Region

# Background "stuff" phrases (paper: "sun", "sky"); regions captioned like these are dropped.
STUFF_CAPTIONS: tuple[str, ...] = (
    'table', 'tabletop', 'table top', 'wooden table', 'desk', 'counter', 'floor', 'ground',
    'carpet', 'rug', 'wall', 'ceiling', 'sky', 'sun', 'cloud', 'background', 'grass', 'road',
    'street', 'water', 'window', 'shadow', 'light',
)

# Location clauses per direction; one is drawn per region with the generator.
CLAUSES: dict[str, tuple[str, ...]] = {
    'left': ('{caption} on the left', '{caption} to the left', '{caption} more to the left'),
    'right': ('{caption} on the right', '{caption} to the right',
              '{caption} more to the right'),
    'top': ('{caption} closer to the top of the image',
            "{caption} that's more to the top of the image", '{caption} higher in the image'),
    'bottom': ('{caption} closer to the bottom of the image',
               "{caption} that's more to the bottom of the image",
               '{caption} lower in the image'),
}

DEFAULT_SIMILARITY_THRESHOLD = 0.9
DEFAULT_STUFF_THRESHOLD = 0.8


MIN_LOCATION_OFFSET = 0.02
"""A similar pair is told apart by location only when its box centres are at least this share
of the image width (or height) apart; a closer pair (one region nested in or duplicating the
other) is dropped as ambiguous instead of getting made-up left / right clauses. A constant, not
an ``AmbiguityConfig`` field, so that the run records of existing datasets stay valid."""


@dataclass
class AmbiguityConfig:
    """
    Settings of ambiguity resolution.

    :ivar similarity_threshold: cosine similarity at or above which two captions are too
        similar; None takes the embedder's ``similarity_threshold`` attribute (else 0.9).
    :ivar stuff_threshold: similarity to any :data:`STUFF_CAPTIONS` phrase at or above which a
        region is background and removed; None takes the embedder's ``stuff_threshold`` (else
        0.8).
    :ivar stuff_captions: the background phrases.
    :ivar max_group: groups up to this size are kept (only 2 can be disambiguated; 1 = drop
        every similar pair instead of disambiguating it).
    """

    similarity_threshold: float | None = None
    stuff_threshold: float | None = None
    stuff_captions: tuple[str, ...] = STUFF_CAPTIONS
    max_group: int = 2

    def __post_init__(self) -> None:
        for name in ('similarity_threshold', 'stuff_threshold'):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f'{name} must be a cosine similarity in [-1, 1], got {value}')
        if self.max_group not in (1, 2):
            raise ValueError(f'max_group must be 1 or 2, got {self.max_group}')
        self.stuff_captions = tuple(self.stuff_captions)


@dataclass
class AmbiguityResult:
    """
    Regions left after ambiguity resolution, with their final captions.

    :ivar regions: kept regions (copies; ``caption`` may carry a location clause).
    :ivar kept_indices: index of each kept region in the input list.
    :ivar dropped: reason -> count: ``'stuff'`` (background caption) and ``'ambiguous'``
        (in a group of three or more similar captions).
    :ivar disambiguated: number of regions that received a location clause.
    :ivar groups: the groups of too-similar captions (input indices), sizes >= 2.
    """

    regions: list[Region]
    kept_indices: list[int]
    dropped: dict[str, int] = field(default_factory=lambda: {'stuff': 0, 'ambiguous': 0})
    disambiguated: int = 0
    groups: list[list[int]] = field(default_factory=list)


def similarity_groups(similarity: np.ndarray, threshold: float) -> list[list[int]]:
    """Return the connected components (sorted index lists) of ``similarity >= threshold``."""
    n = len(similarity)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows, cols = np.nonzero(np.triu(similarity >= threshold, k=1))
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def box_centre(box: np.ndarray) -> np.ndarray:
    """Return the centre ``(u, v)`` of an XYXY box."""
    box = np.asarray(box, dtype=np.float64)
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def location_clauses(box_a: np.ndarray, box_b: np.ndarray, width: int,
                     height: int) -> tuple[str, str]:
    """
    Return the clause directions ``(for A, for B)`` of two regions, e.g. ``('left', 'right')``.

    The offset between box centres is compared relative to the image width and height; the
    larger one decides (ties go to left/right).
    """
    du, dv = box_centre(box_a) - box_centre(box_b)
    if abs(du) / max(width, 1) >= abs(dv) / max(height, 1):
        return ('left', 'right') if du <= 0 else ('right', 'left')
    return ('top', 'bottom') if dv <= 0 else ('bottom', 'top')


def _threshold(value: float | None, embedder: Any, name: str, default: float) -> float:
    if value is not None:
        return float(value)
    return float(getattr(embedder, name, default))


def resolve_ambiguity(regions: Sequence[Region], embedder: Any, image_size: tuple[int, int],
                      rng: np.random.Generator,
                      config: AmbiguityConfig | None = None) -> AmbiguityResult:
    """
    Drop background and ambiguous regions; disambiguate pairs with location clauses.

    :param regions: the image's regions with their captions.
    :param embedder: a ``TextEmbedder`` (``run(texts) -> (N, D)`` unit rows).
    :param image_size: ``(width, height)`` in pixels.
    :param rng: seeded generator choosing among the clause phrasings.
    :param config: thresholds (see :class:`AmbiguityConfig`).
    """
    cfg = config or AmbiguityConfig()
    width, height = image_size
    result = AmbiguityResult([], [])
    if not regions:
        return result
    captions = [r.caption for r in regions]
    texts = captions + list(cfg.stuff_captions)
    embeddings = np.asarray(embedder.run(texts), dtype=np.float64)  # (N + S, D)
    objects, stuff = embeddings[:len(captions)], embeddings[len(captions):]
    stuff_t = _threshold(cfg.stuff_threshold, embedder, 'stuff_threshold',
                         DEFAULT_STUFF_THRESHOLD)
    sim_t = _threshold(cfg.similarity_threshold, embedder, 'similarity_threshold',
                       DEFAULT_SIMILARITY_THRESHOLD)
    is_stuff = ((objects @ stuff.T).max(axis=1) >= stuff_t if len(stuff)
                else np.zeros(len(captions), dtype=bool))
    result.dropped['stuff'] = int(is_stuff.sum())
    candidates = [i for i in range(len(regions)) if not is_stuff[i]]
    similarity = objects[candidates] @ objects[candidates].T  # (C, C)
    final: dict[int, str] = {}
    for group in similarity_groups(similarity, sim_t):
        members = [candidates[k] for k in group]
        if len(members) == 1:
            final[members[0]] = captions[members[0]]
            continue
        result.groups.append(members)
        if len(members) > cfg.max_group:
            result.dropped['ambiguous'] += len(members)
            continue
        a, b = members
        du, dv = box_centre(regions[a].box) - box_centre(regions[b].box)
        if max(abs(du) / max(width, 1), abs(dv) / max(height, 1)) < MIN_LOCATION_OFFSET:
            result.dropped['ambiguous'] += 2  # no side to tell them apart by
            continue
        for index, direction in zip(members, location_clauses(
                regions[a].box, regions[b].box, width, height), strict=True):
            options = CLAUSES[direction]
            template = options[int(rng.integers(len(options)))]
            final[index] = template.format(caption=captions[index])
        result.disambiguated += 2
    for index in sorted(final):
        result.regions.append(replace(regions[index], caption=final[index]))
        result.kept_indices.append(index)
    return result

"""
The data engine's stage interfaces and their backend registries.

Every stage is a small object with a numpy-in / numpy-out ``run()``; backends register a
factory under a name so the pipeline picks them by configuration (``'sim'``, ``'hf'``,
``'rgbd'``, ...) instead of if-chains. Factories import heavy libraries (torch, transformers,
pybullet) only when called.

Formats: images RGB ``uint8`` ``(H, W, 3)``; depth ``float32`` metres ``(H, W)`` (``nan`` =
none); masks bool ``(H, W)``; boxes XYXY pixels ``float`` ``(4,)``; embeddings ``float32``
``(N, D)`` with unit rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics, Frame


@dataclass
class SceneInput:
    """
    One image entering the engine, with whatever the source already knows.

    :ivar image_id: a stable, unique id (used for shard bookkeeping and dataset rows).
    :ivar image: RGB ``uint8`` ``(H, W, 3)``.
    :ivar depth: sensor or simulator depth, float32 metres, if the source has one.
    :ivar intrinsics: from CameraInfo or the simulator, if known.
    :ivar truth: the simulator's ground truth for this image (sim backends only; also used to
        score the generated answers).
    :ivar extras: anything else a backend needs (e.g. the simulator's table mask).
    """

    image_id: str
    image: np.ndarray
    depth: np.ndarray | None = None
    intrinsics: CameraIntrinsics | None = None
    truth: Frame | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilterResult:
    """Scene filter output: keep or not, the winning label, and every label's probability."""

    keep: bool
    label: str
    scores: dict[str, float]


@dataclass
class Region:
    """
    One object-centric region: box, mask, caption.

    :ivar box: XYXY pixels, float ``(4,)``.
    :ivar mask: bool ``(H, W)``.
    :ivar caption: 1-6 words.
    :ivar score: detector confidence in [0, 1].
    :ivar object_id: the simulator's object id when known (for scoring), else None.
    """

    box: np.ndarray
    mask: np.ndarray
    caption: str
    score: float = 1.0
    object_id: str | None = None


@dataclass
class DepthResult:
    """Metric depth (float32 metres ``(H, W)``, ``nan`` = none) and the intrinsics used."""

    depth: np.ndarray
    intrinsics: CameraIntrinsics


class SceneFilter(Protocol):
    """Stage 1: decide whether an image is a scene worth annotating."""

    def run(self, scene: SceneInput) -> FilterResult:
        """Classify ``scene.image``."""


class ContextExtractor(Protocol):
    """Stage 2: regions, a mask per region, and an open-vocabulary caption per region."""

    def run(self, scene: SceneInput, rng: np.random.Generator) -> list[Region]:
        """Propose, segment and caption the objects of ``scene.image``."""


class DepthEstimator(Protocol):
    """Stage 3: metric depth and intrinsics."""

    def run(self, scene: SceneInput, rng: np.random.Generator) -> DepthResult:
        """Return metric depth for ``scene.image``."""


class SurfaceSegmenter(Protocol):
    """Stage 5 input: pixels of horizontal surfaces (floor, tabletop)."""

    def run(self, scene: SceneInput) -> np.ndarray:
        """Return a bool ``(H, W)`` mask of floor/table pixels."""


class TextEmbedder(Protocol):
    """Stage 6 input: caption embeddings for ambiguity resolution."""

    def run(self, texts: list[str]) -> np.ndarray:
        """Return unit-norm embeddings ``(N, D)``."""


Factory = Callable[..., Any]
FILTERS: dict[str, Factory] = {}
CONTEXTS: dict[str, Factory] = {}
DEPTHS: dict[str, Factory] = {}
SURFACES: dict[str, Factory] = {}
EMBEDDERS: dict[str, Factory] = {}
REGISTRIES: dict[str, dict[str, Factory]] = {
    'filter': FILTERS, 'context': CONTEXTS, 'depth': DEPTHS, 'surface': SURFACES,
    'embedder': EMBEDDERS,
}


def register(stage: str, name: str) -> Callable[[Factory], Factory]:
    """Register a backend factory for ``stage`` under ``name`` (a decorator)."""
    if stage not in REGISTRIES:
        raise ValueError(f'unknown stage {stage!r}; stages: {sorted(REGISTRIES)}')

    def decorator(factory: Factory) -> Factory:
        registry = REGISTRIES[stage]
        if name in registry and registry[name] is not factory:
            raise ValueError(f'{stage} backend {name!r} is already registered')
        registry[name] = factory
        return factory

    return decorator


def build(stage: str, name: str, **kwargs: Any) -> Any:
    """Build the ``stage`` backend registered as ``name`` with ``kwargs``."""
    _load_builtin_backends()
    registry = REGISTRIES.get(stage)
    if registry is None:
        raise ValueError(f'unknown stage {stage!r}; stages: {sorted(REGISTRIES)}')
    if name not in registry:
        raise ValueError(f'unknown {stage} backend {name!r}; available: {sorted(registry)}')
    return registry[name](**kwargs)


# Modules whose import registers backends; importing them is cheap (heavy imports are lazy).
BUILTIN_BACKEND_MODULES: list[str] = [
    'spatialvlm_ros.synth.hf',
    'spatialvlm_ros.synth.rgbd',
    'spatialvlm_ros.synth.sim_backends',
    'spatialvlm_ros.synth.text_embedding',
]


def _load_builtin_backends() -> None:
    import importlib

    for module in BUILTIN_BACKEND_MODULES:
        importlib.import_module(module)

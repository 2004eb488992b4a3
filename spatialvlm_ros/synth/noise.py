"""
Noise models that make perfect simulator inputs look like the outputs of real models.

The simulator backends apply them (``synth.sim_backends``) so that the engine can be studied
with the errors of a monocular depth estimator, a mask model and a captioner:

- depth: a global scale bias (metric depth models such as ZoeDepth are mostly off by a scale),
  optionally drawn per image; per-pixel Gaussian noise whose standard deviation grows with
  depth (``rel * z + quad * z**2``); a share of missing pixels (``nan``); a focal-length error
  (the field-of-view estimate);
- masks: erosion and/or dilation by a number of pixels (boundary errors of a mask model);
- captions: with some probability the colour word or the category noun is replaced by a wrong
  one (captioner confusions).

The default :class:`NoiseConfig` is perfect inputs: every function returns its input unchanged
and draws nothing from the generator. Formats: depth float32 metres ``(H, W)`` (``nan`` = none);
masks bool ``(H, W)``. scipy is imported lazily (masks only).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics


@dataclass(frozen=True)
class NoiseConfig:
    """
    Input noise for the simulator backends; the defaults are perfect inputs.

    :ivar depth_scale: global multiplicative depth bias (1 = none; 1.1 = 10% too far).
    :ivar depth_scale_jitter: standard deviation of a per-image log-normal factor applied on top
        of ``depth_scale`` (0 = the same bias for every image).
    :ivar depth_noise_rel: per-pixel Gaussian noise, standard deviation ``rel * z`` metres.
    :ivar depth_noise_quad: adds ``quad * z**2`` metres to that standard deviation (stereo- and
        monocular-like growth with distance).
    :ivar depth_missing: share of pixels whose depth is dropped (set to ``nan``), in [0, 1).
    :ivar focal_scale: multiplies ``fx`` and ``fy`` of the reported intrinsics (a wrong
        field-of-view estimate; 1 = exact).
    :ivar mask_erosion_px: erode every region mask by this many pixels (applied first).
    :ivar mask_dilation_px: then dilate it by this many pixels.
    :ivar caption_colour_swap: probability that a caption's colour word is replaced by another
        colour.
    :ivar caption_category_swap: probability that a caption's category noun is replaced by the
        noun of another category.
    """

    depth_scale: float = 1.0
    depth_scale_jitter: float = 0.0
    depth_noise_rel: float = 0.0
    depth_noise_quad: float = 0.0
    depth_missing: float = 0.0
    focal_scale: float = 1.0
    mask_erosion_px: int = 0
    mask_dilation_px: int = 0
    caption_colour_swap: float = 0.0
    caption_category_swap: float = 0.0

    def __post_init__(self) -> None:
        for name in ('depth_scale', 'focal_scale'):
            if not 0.0 < getattr(self, name) < 10.0:
                raise ValueError(f'{name} must be in (0, 10), got {getattr(self, name)}')
        for name in ('depth_scale_jitter', 'depth_noise_rel', 'depth_noise_quad'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')
        if not 0.0 <= self.depth_missing < 1.0:
            raise ValueError(f'depth_missing must be in [0, 1), got {self.depth_missing}')
        for name in ('mask_erosion_px', 'mask_dilation_px'):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and 0 <= value <= 50):
                raise ValueError(f'{name} must be an integer in [0, 50], got {value!r}')
        for name in ('caption_colour_swap', 'caption_category_swap'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be a probability, got {getattr(self, name)}')

    @property
    def perfect(self) -> bool:
        """Return whether this configuration changes nothing."""
        return self == NoiseConfig()

    @property
    def depth_is_perfect(self) -> bool:
        """Return whether depth and intrinsics are left unchanged."""
        return (self.depth_scale == 1.0 and self.depth_scale_jitter == 0.0
                and self.depth_noise_rel == 0.0 and self.depth_noise_quad == 0.0
                and self.depth_missing == 0.0 and self.focal_scale == 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_value(cls, value: NoiseConfig | dict[str, Any] | str | None) -> NoiseConfig:
        """Accept a config, a dict of fields, a preset name (:data:`PRESETS`) or None."""
        if value is None:
            return cls()
        if isinstance(value, NoiseConfig):
            return value
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f'unknown noise preset {value!r}; presets: {sorted(PRESETS)}')
            return PRESETS[value]
        return cls(**value)


# Named settings for the command line (``--noise``). 'monocular' is roughly a good metric
# monocular model indoors: a few percent scale error, ~2-3% relative noise at 1 m.
PRESETS: dict[str, NoiseConfig] = {
    'none': NoiseConfig(),
    'mild': NoiseConfig(depth_scale_jitter=0.03, depth_noise_rel=0.005, depth_noise_quad=0.005,
                        mask_dilation_px=1, caption_colour_swap=0.02,
                        caption_category_swap=0.02),
    'monocular': NoiseConfig(depth_scale=1.08, depth_scale_jitter=0.1, depth_noise_rel=0.01,
                             depth_noise_quad=0.01, depth_missing=0.02, focal_scale=0.95,
                             mask_erosion_px=1, mask_dilation_px=2, caption_colour_swap=0.05,
                             caption_category_swap=0.05),
    'harsh': NoiseConfig(depth_scale=1.25, depth_scale_jitter=0.2, depth_noise_rel=0.03,
                         depth_noise_quad=0.03, depth_missing=0.1, focal_scale=0.85,
                         mask_erosion_px=2, mask_dilation_px=4, caption_colour_swap=0.15,
                         caption_category_swap=0.15),
}


def apply_depth_noise(depth: np.ndarray, config: NoiseConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """
    Return ``(noisy depth, scale factor applied)``; the input is not modified.

    The depth is multiplied by ``depth_scale`` (times a per-image log-normal factor), then
    per-pixel Gaussian noise with standard deviation ``rel * z + quad * z**2`` (of the true
    ``z``) is added and a share ``depth_missing`` of pixels is set to ``nan``. Pixels that end up
    ``<= 0`` become ``nan``. Perfect settings return the input itself and draw nothing.
    """
    if (config.depth_scale == 1.0 and config.depth_scale_jitter == 0.0
            and config.depth_noise_rel == 0.0 and config.depth_noise_quad == 0.0
            and config.depth_missing == 0.0):
        return depth, 1.0
    depth = np.asarray(depth, dtype=np.float32)
    scale = config.depth_scale
    if config.depth_scale_jitter > 0:
        scale *= float(np.exp(rng.normal(0.0, config.depth_scale_jitter)))
    out = depth.astype(np.float64) * scale
    if config.depth_noise_rel > 0 or config.depth_noise_quad > 0:
        sigma = config.depth_noise_rel * depth + config.depth_noise_quad * depth ** 2  # (H, W)
        out += rng.standard_normal(depth.shape) * np.nan_to_num(sigma)
    if config.depth_missing > 0:
        out[rng.random(depth.shape) < config.depth_missing] = np.nan
    with np.errstate(invalid='ignore'):
        out[~(out > 0)] = np.nan
    return out.astype(np.float32), scale


def apply_intrinsics_noise(intrinsics: CameraIntrinsics,
                           config: NoiseConfig) -> CameraIntrinsics:
    """Scale the focal lengths by ``focal_scale`` (the principal point is kept)."""
    if config.focal_scale == 1.0:
        return intrinsics
    k = intrinsics
    return CameraIntrinsics(k.fx * config.focal_scale, k.fy * config.focal_scale, k.cx, k.cy,
                            k.width, k.height)


def apply_mask_noise(mask: np.ndarray, config: NoiseConfig) -> np.ndarray:
    """Erode by ``mask_erosion_px`` then dilate by ``mask_dilation_px`` (3x3 structuring)."""
    mask = np.asarray(mask, dtype=bool)
    if config.mask_erosion_px == 0 and config.mask_dilation_px == 0:
        return mask
    from scipy import ndimage

    if config.mask_erosion_px:
        mask = ndimage.binary_erosion(mask, iterations=config.mask_erosion_px)
    if config.mask_dilation_px:
        mask = ndimage.binary_dilation(mask, iterations=config.mask_dilation_px)
    return mask


def _default_vocabulary() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    from spatialvlm_ros.sim import catalog  # plain data; no pybullet

    nouns = {name: (*spec.nouns, spec.long_noun) for name, spec in catalog.CATALOG.items()}
    return tuple(catalog.PALETTE), nouns


def confuse_caption(caption: str, config: NoiseConfig, rng: np.random.Generator,
                    colours: Sequence[str] | None = None,
                    nouns: dict[str, Sequence[str]] | None = None) -> tuple[str, list[str]]:
    """
    Return ``(caption, changes)`` with the colour and/or category possibly swapped.

    :param caption: a caption such as ``'the small red ceramic mug'``.
    :param config: the swap probabilities.
    :param rng: seeded generator; nothing is drawn when both probabilities are 0.
    :param colours: colour words (default: the simulator palette).
    :param nouns: category -> its nouns, multi-word allowed (default: the simulator catalog);
        the caption's category is the one with the longest noun ending the caption.

    ``changes`` lists what was swapped (``'colour'``, ``'category'``). A caption without a
    known colour word (or noun) cannot have it swapped.
    """
    if config.caption_colour_swap == 0 and config.caption_category_swap == 0:
        return caption, []
    if colours is None or nouns is None:
        default_colours, default_nouns = _default_vocabulary()
        colours = default_colours if colours is None else colours
        nouns = default_nouns if nouns is None else nouns
    words = caption.split()
    changes: list[str] = []
    if config.caption_colour_swap > 0 and rng.random() < config.caption_colour_swap:
        where = [i for i, w in enumerate(words) if w in colours]
        if where:
            i = where[0]
            others = [c for c in colours if c != words[i]]
            words[i] = others[int(rng.integers(len(others)))]
            changes.append('colour')
    if config.caption_category_swap > 0 and rng.random() < config.caption_category_swap:
        best: tuple[int, str] | None = None
        for category, names in nouns.items():
            for noun in names:
                n = len(noun.split())
                if words[-n:] == noun.split() and (best is None or n > best[0]):
                    best = (n, category)
        if best is not None:
            n, category = best
            others = [c for c in sorted(nouns) if c != category]
            new = nouns[others[int(rng.integers(len(others)))]]
            replacement = new[int(rng.integers(len(new)))].split()
            words = words[:len(words) - n] + replacement
            while len(words) > 6 and words[0] == 'the':
                words = words[1:]
            words = words[-6:]
            changes.append('category')
    return ' '.join(words), changes

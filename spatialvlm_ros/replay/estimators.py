"""
Estimators for replays and RL: the oracle, a noisy oracle, and the VLM through the model package.

- ``oracle``: :class:`~spatialvlm_ros.model.estimator.OracleDistanceEstimator` over a
  :class:`TruthProbe` (the replay or the env sets the current frame's true distance);
- ``noisy_oracle``: :class:`NoisyOracleDistanceEstimator`, the true distance times seeded
  log-normal noise, written as a text answer ('about 0.43 m', sometimes in cm or feet) and read
  back with :func:`~spatialvlm_ros.core.answers.parse_distance`, with occasional unreadable
  answers ('I cannot tell.') and rare gross outliers; it stands in for the VLM until that is
  trained and tests the parsing, smoothing and metrics paths;
- ``vlm``: the spatial VLM from a model folder (default: the shipped model), built by
  ``spatialvlm_ros.model.estimator.build_estimator('vlm', ...)`` (loaded when built; needs the
  model extras).

:func:`build_estimator` is the registry; ``ESTIMATOR_KINDS`` lists its names.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import time
from typing import Any, Callable

import numpy as np

from spatialvlm_ros.core.answers import parse_distance
from spatialvlm_ros.model.estimator import (
    check_image,
    DistanceEstimate,
    OracleDistanceEstimator,
)

UNREADABLE_ANSWERS = (
    'I cannot tell from this image.',
    'It is hard to say.',
    'The gripper is close to it.',
    'Sorry, I am not sure.',
)


class TruthProbe:
    """The current frame's true distance, set by the replay or env, read by the oracles."""

    def __init__(self) -> None:
        self.value_m: float | None = None

    def set_value(self, value_m: float | None) -> None:
        """Set the true distance of the frame about to be estimated (None: unknown)."""
        self.value_m = None if value_m is None or not math.isfinite(value_m) else float(value_m)

    def __call__(self, image: np.ndarray) -> float | None:
        """Return the current true distance (the image is not looked at)."""
        return self.value_m


@dataclass
class NoisyOracleConfig:
    """
    Settings of :class:`NoisyOracleDistanceEstimator`.

    :ivar relative_std: standard deviation of the log of the multiplicative noise (0.15: about
        +-15 %).
    :ivar invalid_prob: chance that an answer holds no distance.
    :ivar outlier_prob: chance of a gross outlier (the truth times a factor in [2, 4] or
        divided by it).
    :ivar unit_prob: chance that a readable answer is given in cm or feet instead of metres.
    :ivar decimals: decimals of the metre answers (the VLM answers coarsely too).
    """

    relative_std: float = 0.15
    invalid_prob: float = 0.1
    outlier_prob: float = 0.02
    unit_prob: float = 0.2
    decimals: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.relative_std) and self.relative_std >= 0):
            raise ValueError(f'relative_std must be finite and >= 0, got {self.relative_std}')
        for name in ('invalid_prob', 'outlier_prob', 'unit_prob'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if not 0 <= self.decimals <= 4:
            raise ValueError(f'decimals must be in [0, 4], got {self.decimals}')


class NoisyOracleDistanceEstimator:
    """
    The true distance with seeded noise, as a text answer parsed like a model's.

    :param lookup: ``lookup(image) -> metres or None`` (e.g. a :class:`TruthProbe`).
    :param config: the noise settings.
    :param rng: the random source (a ``np.random.Generator``), or ``seed`` for a new one.
    """

    needs_image = False  # the answer comes from ``lookup``; any valid image will do

    def __init__(self, lookup: Callable[[np.ndarray], float | None],
                 config: NoisyOracleConfig | None = None,
                 rng: np.random.Generator | None = None, seed: int = 0) -> None:
        self._lookup = lookup
        self.config = config or NoisyOracleConfig()
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Start the noise again from ``seed`` (an RL wrapper's ``reset(seed=...)`` does)."""
        self.rng = np.random.default_rng(seed)

    def answer_text(self, truth_m: float) -> str:
        """Return a noisy answer for a true distance (draws from the generator)."""
        cfg, rng = self.config, self.rng
        # Draw every variate each time so the stream does not depend on which branch is taken.
        u_invalid, u_outlier, u_unit, u_pick = rng.random(4)
        noise = float(rng.normal(0.0, cfg.relative_std))
        factor = float(rng.uniform(2.0, 4.0))
        if u_invalid < cfg.invalid_prob:
            return UNREADABLE_ANSWERS[int(u_pick * len(UNREADABLE_ANSWERS))]
        value = truth_m * math.exp(noise)
        if u_outlier < cfg.outlier_prob:
            value = value * factor if u_pick < 0.5 else value / factor
        if u_unit < cfg.unit_prob / 2:
            return f'about {value * 100:.0f} cm'
        if u_unit < cfg.unit_prob:
            return f'roughly {value / 0.3048:.1f} feet'
        return f'The gripper is about {value:.{cfg.decimals}f} meters away.'

    def estimate(self, image: np.ndarray, subject: str, target: str) -> DistanceEstimate:
        """Return a noisy, parsed answer for ``image``'s true distance."""
        start = time.perf_counter()
        truth = self._lookup(check_image(image))
        if truth is None:
            return DistanceEstimate(None, 'no ground truth', ['no ground truth'],
                                    time.perf_counter() - start, 'no ground truth for this frame')
        text = self.answer_text(float(truth))
        parsed = parse_distance(text)
        return DistanceEstimate(parsed.value_m, text, [text], time.perf_counter() - start,
                                '' if parsed.ok else f'unparsed answer ({parsed.reason})')

    def close(self) -> None:
        """Release nothing."""


def _oracle(lookup: Callable[[np.ndarray], float | None] | None = None,
            **_: Any) -> OracleDistanceEstimator:
    if lookup is None:
        raise ValueError('the oracle estimator needs a truth lookup')
    return OracleDistanceEstimator(lookup)


def _noisy_oracle(lookup: Callable[[np.ndarray], float | None] | None = None, seed: int = 0,
                  rng: np.random.Generator | None = None,
                  noise: NoisyOracleConfig | None = None,
                  **_: Any) -> NoisyOracleDistanceEstimator:
    if lookup is None:
        raise ValueError('the noisy_oracle estimator needs a truth lookup')
    return NoisyOracleDistanceEstimator(lookup, noise, rng=rng, seed=seed)


VLM_OPTIONS = ('device', 'samples', 'temperature', 'threads', 'question_template',
               'max_new_tokens', 'trust_remote_code', 'answer_prefix', 'number_decoding',
               'mirror_average')


def _vlm(model_folder: str | None = None, vlm_seed: int = 0, **kwargs: Any) -> Any:
    from spatialvlm_ros.model import estimator as module

    options = {k: v for k, v in kwargs.items() if k in VLM_OPTIONS}
    return module.build_estimator('vlm', model_folder=str(model_folder or ''), seed=vlm_seed,
                                  **options)


# name -> factory(**kwargs); kwargs: lookup (oracles), seed / rng / noise (noisy oracle),
# model_folder ('' / None: the shipped default model), vlm_seed and VLM_OPTIONS (vlm).
# Unused kwargs are ignored.
ESTIMATORS: dict[str, Callable[..., Any]] = {
    'oracle': _oracle,
    'noisy_oracle': _noisy_oracle,
    'vlm': _vlm,
}
ESTIMATOR_KINDS = tuple(ESTIMATORS)


def build_estimator(kind: str, **kwargs: Any) -> Any:
    """Return a new estimator of ``kind`` (see ``ESTIMATORS`` for the keyword arguments)."""
    try:
        factory = ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f'unknown estimator {kind!r}; choose from {list(ESTIMATORS)}') \
            from None
    return factory(**kwargs)


def needs_image(estimator: Any) -> bool:
    """
    Return whether ``estimator`` looks at the image (False for the oracles).

    Callers that must render a frame just for the estimator (the RL wrapper) can skip that.
    """
    default = not isinstance(estimator, OracleDistanceEstimator)
    return bool(getattr(estimator, 'needs_image', default))


def needs_truth(kind: str) -> bool:
    """Return whether estimators of ``kind`` read the ground truth (the oracles)."""
    return kind in ('oracle', 'noisy_oracle')

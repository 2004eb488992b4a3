"""
Distance estimators: image + two phrases -> a distance in metres, or an honest 'no answer'.

This is the seam between the reward machinery (ROS node, rosbag replay, gymnasium wrapper) and
whatever produces distances: the spatial VLM (:class:`VLMDistanceEstimator`), or the ground
truth of a simulated episode (:class:`OracleDistanceEstimator`, the reference the VLM reward is
compared with). Importing this module is cheap; the VLM is loaded only when built.

Formats: images RGB ``uint8`` ``(H, W, 3)``; distances in metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from typing import Any, Callable, Protocol

import numpy as np


@dataclass
class DistanceEstimate:
    """
    One answer to 'how far is the subject from the target?'.

    :ivar value_m: the distance in metres; None when no sample of the answer held a distance
        (it is never made up).
    :ivar text: the raw answer text (first sample).
    :ivar samples: every sampled answer text.
    :ivar latency_s: wall time of the estimate.
    :ivar reason: why ``value_m`` is None (empty otherwise).
    """

    value_m: float | None
    text: str = ''
    samples: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    reason: str = ''

    @property
    def valid(self) -> bool:
        """Return whether the estimate holds a finite, non-negative distance."""
        return self.value_m is not None and bool(np.isfinite(self.value_m)) and self.value_m >= 0


class DistanceEstimator(Protocol):
    """Anything that answers distance questions about an image."""

    def estimate(self, image: np.ndarray, subject: str, target: str) -> DistanceEstimate:
        """Return the distance between ``subject`` and ``target`` in ``image``."""

    def close(self) -> None:
        """Release the model (and GPU memory)."""


def check_image(image: Any) -> np.ndarray:
    """Return ``image`` as an RGB ``uint8`` ``(H, W, 3)`` array, or raise a clear ValueError."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f'expected an RGB uint8 (H, W, 3) image, got {array.dtype} '
                         f'{array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'empty image {array.shape}')
    return array


class OracleDistanceEstimator:
    """
    Ground-truth distances of a simulated episode, looked up by the frame being asked about.

    ``lookup(image) -> metres or None`` maps the frame to its true distance (e.g. by the frame
    index the replay is at); used as the true-distance reward and to test the reward path.
    """

    def __init__(self, lookup: Callable[[np.ndarray], float | None]) -> None:
        self._lookup = lookup

    def estimate(self, image: np.ndarray, subject: str, target: str) -> DistanceEstimate:
        """Return the true distance for ``image``."""
        start = time.perf_counter()
        value = self._lookup(check_image(image))
        text = 'no ground truth' if value is None else f'{value:.4f} m'
        return DistanceEstimate(value, text, [text], time.perf_counter() - start,
                                '' if value is not None else 'no ground truth for this frame')

    def close(self) -> None:
        """Release nothing."""

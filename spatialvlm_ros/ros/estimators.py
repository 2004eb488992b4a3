"""
How the reward node gets its distance estimator, and what it passes to it.

The node never constructs a model itself: it calls an :data:`EstimatorFactory` with an
:class:`EstimatorSpec` when it is activated (and closes the result when deactivated), so tests
and benchmarks inject fakes and the real VLM is built only on activation.
:func:`default_estimator_factory` knows two kinds:

- ``'vlm'``: ``spatialvlm_ros.model.estimator.build_estimator('vlm', model_folder=...,
  device=..., samples=..., temperature=..., question_template=..., answer_prefix=...,
  threads=...)`` (keywords it does not accept are left out); ``model_folder=''`` means the
  shipped default model. With ``EstimatorSpec.process`` (the node's ``estimator_process``, on
  by default) it is built and run in a child process
  (:class:`spatialvlm_ros.model.process_estimator.ProcessEstimator`), so the model's Python
  does not compete with the node's callbacks for the GIL;
- ``'oracle'``: :class:`GroundTruthEstimator`, ground truth of a simulated episode received on
  the node's ``ground_truth_distance`` topic (the reference the VLM reward is compared with).

Per-frame context (``estimate`` keywords): besides ``(image, subject, target)`` the node passes
those of the following keywords that the estimator's ``estimate`` accepts by name (all of them
if it takes ``**kwargs``; an estimator may instead list them in an ``estimate_keywords``
attribute, as the process wrapper does), so estimators that ignore them keep the plain
protocol:

| keyword | value |
|---|---|
| ``stamp_ns`` | the source image's header stamp, integer nanoseconds |
| ``frame_id`` | the source image's header frame_id |
| ``depth`` | the latest depth image, float32 ``(H, W)`` metres, nan = no reading (or None) |
| ``intrinsics`` | the latest CameraInfo as ``core.datatypes.CameraIntrinsics`` (or None) |
| ``question_template`` | the node's ``question_template`` parameter (run-time changeable) |
| ``samples`` | the node's ``samples_per_frame`` parameter (run-time changeable) |
| ``ground_truth`` | oracle only: the ground-truth distance in metres for this stamp (or None) |
"""

from __future__ import annotations

from dataclasses import dataclass
import sys
from typing import Any, Callable

import numpy as np

from spatialvlm_ros.model.estimator import (
    DEFAULT_ANSWER_PREFIX,
    DEFAULT_NUMBER_DECODING,
    DEFAULT_QUESTION_TEMPLATE,
    DEFAULT_TEMPERATURE,
    DistanceEstimate,
    DistanceEstimator,
    keyword_names,
    OracleDistanceEstimator,
)

ESTIMATOR_KINDS = ('vlm', 'oracle')


@dataclass(frozen=True)
class EstimatorSpec:
    """
    What the node asks a factory for (its read-only parameters at activation).

    :ivar kind: one of :data:`ESTIMATOR_KINDS` (a custom factory may accept others).
    :ivar model_folder: local model folder; '' = the shipped default.
    :ivar device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
    :ivar samples_per_frame: answers sampled per frame (at build time).
    :ivar temperature: sampling temperature when more than one answer is sampled.
    :ivar number_decoding: how one answer per frame is decoded (``'median'`` or ``'greedy'``).
    :ivar mirror_average: also ask about the frame's mirror image and average the two distances.
    :ivar question_template: question with ``{subject}`` and ``{target}`` (at build time).
    :ivar answer_prefix: text the VLM's answers are made to start with ('' for none).
    :ivar cpu_threads: torch CPU threads (0: torch's default).
    :ivar process: run the VLM in a child process (kind 'vlm').
    """

    kind: str = 'vlm'
    model_folder: str = ''
    device: str = 'auto'
    samples_per_frame: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    number_decoding: str = DEFAULT_NUMBER_DECODING
    mirror_average: bool = False
    question_template: str = DEFAULT_QUESTION_TEMPLATE
    answer_prefix: str = DEFAULT_ANSWER_PREFIX
    cpu_threads: int = 1
    process: bool = True


EstimatorFactory = Callable[[EstimatorSpec], DistanceEstimator]


class GroundTruthEstimator:
    """
    Distances from the ground truth of the frame's stamp (``ground_truth`` keyword).

    Wraps :class:`~spatialvlm_ros.model.estimator.OracleDistanceEstimator`: an answer with no
    ground truth for the stamp is an honest 'no answer' (``value_m=None``).
    """

    name = 'oracle'
    device = 'cpu'

    def __init__(self) -> None:
        self._value: float | None = None
        self._oracle = OracleDistanceEstimator(lambda _image: self._value)

    def estimate(self, image: np.ndarray, subject: str, target: str, *,
                 ground_truth: float | None = None) -> DistanceEstimate:
        """Return the ground-truth distance passed for this frame."""
        self._value = ground_truth
        return self._oracle.estimate(image, subject, target)

    def close(self) -> None:
        """Release nothing."""


def default_estimator_factory(spec: EstimatorSpec) -> DistanceEstimator:
    """Build the estimator ``spec`` names (see the module docstring); loads the model."""
    if spec.kind == 'oracle':
        return GroundTruthEstimator()
    if spec.kind != 'vlm':
        raise ValueError(f'unknown estimator kind {spec.kind!r}; known: {ESTIMATOR_KINDS}')
    from spatialvlm_ros.model import estimator as module

    build = getattr(module, 'build_estimator', None)
    if build is None:
        raise RuntimeError('spatialvlm_ros.model.estimator.build_estimator is not available in '
                           'this version; use estimator:=oracle or inject a factory')
    available = {'model_folder': spec.model_folder or None, 'device': spec.device,
                 'samples': spec.samples_per_frame, 'temperature': spec.temperature,
                 'number_decoding': spec.number_decoding,
                 'mirror_average': spec.mirror_average,
                 'question_template': spec.question_template,
                 'answer_prefix': spec.answer_prefix, 'threads': spec.cpu_threads or None}
    kwargs = accepted_kwargs(build, available)
    if spec.process:
        from spatialvlm_ros.model.process_estimator import ProcessEstimator

        return ProcessEstimator(build, {'kind': 'vlm', **kwargs})
    estimator: DistanceEstimator = build('vlm', **kwargs)
    return estimator


def accepted_kwargs(function: Callable[..., Any], available: dict[str, Any]) -> dict[str, Any]:
    """Return the entries of ``available`` that ``function`` accepts as keywords."""
    names = keyword_names(function)
    if names is None:
        return dict(available)
    return {key: value for key, value in available.items() if key in names}


def accepted_names(function: Callable[..., Any], candidates: tuple[str, ...]) -> frozenset[str]:
    """
    Return which of ``candidates`` ``function`` accepts as keywords.

    A bound method whose object lists its keywords in ``estimate_keywords`` (None: any) is
    taken at its word rather than at its signature.
    """
    owner = getattr(function, '__self__', None)
    if owner is not None and hasattr(owner, 'estimate_keywords'):
        listed = owner.estimate_keywords
        return frozenset(candidates if listed is None else set(candidates) & set(listed))
    return frozenset(accepted_kwargs(function, dict.fromkeys(candidates)))


def describe(estimator: Any, spec: EstimatorSpec) -> tuple[str, str]:
    """Return ``(model, device)`` strings of an estimator for diagnostics."""
    model = str(getattr(estimator, 'name', '') or type(estimator).__name__)
    if spec.model_folder:
        model = f'{model} ({spec.model_folder})'
    device = str(getattr(estimator, 'device', '') or spec.device)
    return model, device


def release(estimator: Any) -> None:
    """Close ``estimator`` and, if torch is loaded with CUDA, empty its memory cache."""
    try:
        estimator.close()
    finally:
        torch = sys.modules.get('torch')
        if torch is not None:
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # freeing memory must never fail a transition
                pass

"""
Distance estimators: image + two phrases -> a distance in metres, or an honest 'no answer'.

This is the seam between the reward machinery (ROS node, rosbag replay, gymnasium wrapper) and
whatever produces distances: the spatial VLM (:class:`VLMDistanceEstimator`), or the ground
truth of a simulated episode (:class:`OracleDistanceEstimator`, the reference the VLM reward is
compared with). Importing this module is cheap; the VLM is loaded only when built.

Formats: images RGB ``uint8`` ``(H, W, 3)``; distances in metres.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import inspect
from pathlib import Path
import time
from typing import Any, Callable, Protocol

import numpy as np

# NUMBER_DECODINGS: re-exported for the node, the replay and the RL example
from spatialvlm_ros.core.decoding import check_number_decoding, NUMBER_DECODINGS  # noqa: F401


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


def keyword_names(function: Callable[..., Any]) -> frozenset[str] | None:
    """
    Return the names ``function`` accepts as keywords; None when it takes ``**kwargs``.

    An empty set when its signature cannot be read.
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in parameters if p.kind in kinds)


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


def normalize_template(template: str) -> str:
    """
    Return a question template with ``[A]`` / ``[B]`` slots.

    Accepts the data engine's ``[A]`` / ``[B]`` and the ROS node's ``{subject}`` / ``{target}``
    spellings; a template without both slots is a ValueError.
    """
    text = template.replace('{subject}', '[A]').replace('{target}', '[B]')
    if '[A]' not in text or '[B]' not in text:
        raise ValueError('question_template needs [A] and [B] (or {subject} and {target}) '
                         f'slots: {template!r}')
    return text


def question_for(template: str, subject: str, target: str) -> str:
    """Return the question ``template`` (either slot spelling) asks of ``subject``, ``target``."""
    return normalize_template(template).replace('[A]', subject).replace('[B]', target)


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / 'default_model'
"""The shipped compact spatial VLM (safetensors + processor), installed with the package."""


def default_model_folder() -> Path:
    """Return the shipped default model's folder, or raise naming how to produce it."""
    if not (DEFAULT_MODEL_DIR / 'config.json').is_file():
        raise FileNotFoundError(
            f'the shipped default model is missing from {DEFAULT_MODEL_DIR}; train it with '
            '`spatialvlm train-default --out DIR --install` or pass a model folder')
    return DEFAULT_MODEL_DIR


DEFAULT_ANSWER_PREFIX = 'The distance is'
DEFAULT_QUESTION_TEMPLATE = 'What is the distance between {subject} and {target}?'
"""
The distance question of the node, the replay and the RL wrapper alike.

One of the engine's distance templates. The node asked 'How far is {subject} from {target}?'
until session 17, while the replay asked this one; on the 20 held-out replay episodes the
shipped model's greedy reward tracked the distance better with this one (Spearman 0.46 against
0.34, constant answers counted as 0).
"""
DEFAULT_TEMPERATURE = 0.7
"""Sampling temperature of the VLM estimator when it averages several answers per frame."""
TEMPERATURE_RANGE = (0.05, 5.0)
"""Sampling temperatures the node and the replay accept (inclusive)."""
MAX_SAMPLES = 16
"""Most answers per frame the node and the replay accept (one batch per frame)."""
DEFAULT_NUMBER_DECODING = 'median'
"""How the node, the replay and the RL wrapper decode one answer per frame."""


def check_sampling(samples: int, temperature: float) -> None:
    """Raise a clear ValueError unless ``samples`` and ``temperature`` are in the node's ranges."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f'samples must be in [1, {MAX_SAMPLES}], got {samples}')
    low, high = TEMPERATURE_RANGE  # NaN fails the comparison
    if not low <= temperature <= high:
        raise ValueError(f'temperature must be in [{low}, {high}], got {temperature}')


class VLMDistanceEstimator:
    """
    Distances from a spatial VLM: the shipped default or any local Hugging Face VLM folder.

    :param model_folder: a local model folder; empty or None for the shipped default.
    :param device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ``'cuda:1'``...
    :param samples: answers sampled per frame and averaged (the paper averages several samples
        for precise distances); 1 decodes one answer as ``number_decoding`` says.
    :param temperature: sampling temperature when ``samples > 1``.
    :param question_template: the question, with ``[A]`` (subject) and ``[B]`` (target) slots.
    :param max_new_tokens: most generated tokens per answer; generation stops once the stated
        distance is read (``InferenceConfig.stop_at_distance``), so the answer text may end
        mid-sentence ('The gripper is 20 cm from').
    :param answer_prefix: text every answer is made to start with ('' for none); the default,
        one of the training answer templates, puts the number first so that decoding stops
        after about 5 tokens.
    :param threads: torch CPU threads (None leaves torch's default).
    :param seed: sampling seed.
    :param trust_remote_code: allow model code from the folder (off unless asked for).
    :param number_decoding: with one answer per frame, ``'median'`` (each number at the median
        of the model's distribution; needs a tokenizer that spells digits one by one) or
        ``'greedy'``; see :data:`NUMBER_DECODINGS`.
    :param mirror_average: also ask about the frame's left-right mirror image and average the
        two distances. The frame and its mirror go as one batch: on the LLaVA fast path one
        greedy pass over both, about 1.4x one answer's time on a CPU (2x asked one after the
        other). The distance between two things does not change in the mirror; on held-out
        replays the average follows it better (``benchmarks/RESULTS.md``, sessions 21-22).
        Only for questions that do not depend on left and right.
    :raises ValueError: on bad values, or ``'median'`` with a tokenizer that has multi-digit
        tokens (use ``'greedy'`` for such a model).
    """

    def __init__(self, model_folder: str | Path | None = '', device: str = 'auto',
                 samples: int = 1,
                 temperature: float = DEFAULT_TEMPERATURE,
                 question_template: str = DEFAULT_QUESTION_TEMPLATE,
                 max_new_tokens: int = 24, threads: int | None = None, seed: int = 0,
                 trust_remote_code: bool = False,
                 answer_prefix: str = DEFAULT_ANSWER_PREFIX,
                 number_decoding: str = DEFAULT_NUMBER_DECODING,
                 mirror_average: bool = False) -> None:
        if samples < 1:
            raise ValueError(f'samples must be >= 1, got {samples}')
        check_number_decoding(number_decoding)
        if not isinstance(mirror_average, bool):
            raise ValueError(f'mirror_average must be a bool, got {mirror_average!r}')
        self.number_decoding = number_decoding
        self.mirror_average = mirror_average
        question_template = normalize_template(question_template)
        from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
        from spatialvlm_ros.model.loading import load_vlm, unload

        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        folder = Path(model_folder) if model_folder else default_model_folder()
        self.folder = folder
        self.question_template = question_template
        self._loaded = load_vlm(folder, device=device, trust_remote_code=trust_remote_code)
        config = InferenceConfig(max_new_tokens=max_new_tokens,
                                 decoding='sample' if samples > 1 else number_decoding,
                                 temperature=temperature, num_samples=samples, seed=seed,
                                 batch_size=self._batch_size(samples), stop_at_distance=True,
                                 answer_prefix=answer_prefix)
        self._vlm: Any = SpatialVLM(self._loaded, config)
        if number_decoding == 'median':
            try:
                self._vlm.median_digits()  # a tokenizer it cannot walk fails here, not per frame
            except ValueError as error:
                unload(self._loaded)
                raise ValueError(f"{folder}: {error}; use number_decoding 'greedy'") from error

    @property
    def device(self) -> str:
        """Return the device the model runs on."""
        return str(self._loaded.device)

    def _batch_size(self, samples: int) -> int:
        """Return the pairs asked at once: the samples, and the frame with its mirror."""
        return max(2 if self.mirror_average else 1, samples)

    def question(self, subject: str, target: str, template: str | None = None) -> str:
        """Return the question asked for ``subject`` and ``target``."""
        return question_for(self.question_template if template is None else template, subject,
                            target)

    def estimate(self, image: np.ndarray, subject: str, target: str,
                 question_template: str | None = None,
                 samples: int | None = None) -> DistanceEstimate:
        """
        Ask the VLM for the distance; unparseable answers give ``value_m`` None.

        :param question_template: overrides the constructor's template for this call
            (``[A]``/``[B]`` or ``{subject}``/``{target}`` slots).
        :param samples: overrides the number of sampled answers averaged (1: one answer,
            decoded as ``number_decoding``).
        """
        if self._vlm is None:
            raise RuntimeError('the estimator was closed')
        if samples is not None and samples != self._vlm.config.num_samples:
            if samples < 1:
                raise ValueError(f'samples must be >= 1, got {samples}')
            self._vlm.config = dataclasses.replace(
                self._vlm.config, num_samples=int(samples),
                decoding='sample' if samples > 1 else self.number_decoding,
                batch_size=self._batch_size(samples))
        start = time.perf_counter()
        question = self.question(subject, target, question_template)
        frame = check_image(image)
        if not self.mirror_average:
            answer = self._vlm.ask(frame, [question])[0]
            return DistanceEstimate(answer.value_m, answer.text, list(answer.samples),
                                    time.perf_counter() - start, answer.parse_error or '')
        # one batch of the frame and its mirror (one greedy pass over both on the fast path)
        answer, mirrored = self._vlm.ask([frame, np.ascontiguousarray(frame[:, ::-1])],
                                         [question])
        # an answer without a distance never becomes a number: average the ones that hold one
        values = [a.value_m for a in (answer, mirrored) if a.value_m is not None]
        reason = '' if values else (answer.parse_error or mirrored.parse_error or
                                    'no distance in either answer')
        return DistanceEstimate(float(np.mean(values)) if values else None, answer.text,
                                list(answer.samples) + list(mirrored.samples),
                                time.perf_counter() - start, reason)

    def close(self) -> None:
        """Unload the model and free GPU memory."""
        if self._vlm is not None:
            from spatialvlm_ros.model.loading import unload

            self._vlm = None
            unload(self._loaded)


ESTIMATORS: dict[str, Callable[..., Any]] = {
    'vlm': VLMDistanceEstimator,
    'oracle': OracleDistanceEstimator,
}


def build_estimator(kind: str, **kwargs: Any) -> Any:
    """Build the estimator registered as ``kind`` (``'vlm'`` or ``'oracle'``) with ``kwargs``."""
    if kind not in ESTIMATORS:
        raise ValueError(f'unknown estimator {kind!r}; available: {sorted(ESTIMATORS)}')
    return ESTIMATORS[kind](**kwargs)

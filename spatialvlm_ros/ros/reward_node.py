"""
``spatialvlm_reward``: a lifecycle node turning camera frames into a dense reward.

Per frame it asks a distance estimator 'how far is ``subject`` from ``target``?', smooths the
answers (:mod:`spatialvlm_ros.core.smoothing`) and shapes them into a reward
(:mod:`spatialvlm_ros.core.reward`), with the offline replay's step
(:meth:`spatialvlm_ros.replay.pipeline.RewardPipeline.feed`), staleness judged by the wall clock.

Lifecycle: *configure* reads and validates the parameters and creates the publishers and
timers; *activate* builds the estimator (loads the model, see
:mod:`spatialvlm_ros.ros.estimators`) and subscribes; *deactivate* unsubscribes, waits for a
running inference and closes the estimator (freeing GPU memory); *cleanup* / *shutdown* destroy
the rest. ``main()`` configures and activates by itself (parameter ``autostart``).

Only the latest frame is processed: the image callback only checks the declared fields and
stores the message, counting the message it replaces as dropped if that one was never processed;
inference runs in the node's own worker thread (started on activate, joined on deactivate),
which takes the newest stored frame whenever the model is free. No executor thread is ever
blocked by the model, so parameters, lifecycle services and diagnostics stay responsive, frames
are never queued, and the node runs on any executor (``main()``: parameter ``executor``,
single-threaded by default). With ``estimator_process`` (the default) the VLM itself runs in a
child process (:mod:`spatialvlm_ros.model.process_estimator`): its Python then does not share
the GIL with the executor and the callbacks, which measurably slowed it down in the node
(``benchmarks/bench_node.py``, RESULTS.md).

Inputs (relative names, remappable):

| topic | type | notes |
|---|---|---|
| ``image`` | sensor_msgs/Image (``image_transport: raw``) or sensor_msgs/CompressedImage (``compressed``: remap ``image`` to ``.../compressed``) | rgb8/bgr8/rgba8/bgra8/mono8, or jpeg/png; QoS sensor data, depth ``input_queue_depth``, ``input_reliability`` |
| ``depth`` | sensor_msgs/Image | if ``use_depth``: 32FC1 metres or 16UC1 mm; latest kept, passed as ``depth=`` |
| ``camera_info`` | sensor_msgs/CameraInfo | if ``use_camera_info``: latest kept, passed as ``intrinsics=`` |
| ``ground_truth_distance`` | sensor_msgs/JointState | ``estimator: oracle`` only: name = object ids, position = metres (bag layout) |

Outputs, under the relative namespace ``spatialvlm/`` (so ``/spatialvlm/...`` by default):
the publishers are created from :data:`spatialvlm_ros.replay.topics.OUTPUT_TOPICS` and the
result key/values are :data:`~spatialvlm_ros.replay.topics.RESULT_KEYS`, the one table shared
with the offline replay, so live recordings and relabelled bags carry the same topics, types and
fields. Every stamped one carries the SOURCE image's header (stamp and frame_id); the unstamped
ones are published right after the stamped ones of the same frame, and ``spatialvlm/result``
carries all values of the frame stamped. ROS 2 has no stamped scalar, so distances and the
reward travel in geometry_msgs/PointStamped (plottable, keeps the stamp):

| topic | type | content |
|---|---|---|
| ``spatialvlm/distance/raw`` | geometry_msgs/PointStamped | ``x`` = this frame's answer (m), nan when it held no distance; ``y`` = 1 if it held one, else 0 |
| ``spatialvlm/distance`` | geometry_msgs/PointStamped | ``x`` = smoothed distance (m), held through invalid answers, nan before the first; ``y`` = 1 while the smoother is valid (not stale) |
| ``spatialvlm/reward`` | geometry_msgs/PointStamped | ``x`` = reward (held when invalid; nan before the first valid one), ``y`` = success (1/0), ``z`` = 1 when this frame's reward is fresh (the answer was accepted), 0 when held |
| ``spatialvlm/result`` | diagnostic_msgs/DiagnosticArray | stamped record of the frame: one status ``<node name>/result``, key/values ``stamp_ns``, ``frame_id``, ``answer``, ``reason``, ``distance_raw``, ``distance``, ``reward``, ``success``, ``valid``, ``stale``, ``rejected``, ``latency_ms``, ``subject``, ``target`` |
| ``spatialvlm/valid`` | std_msgs/Bool | this frame's answer was a distance accepted by the smoother (not an outlier, not stale) |
| ``spatialvlm/stale`` | std_msgs/Bool | no accepted estimate for ``stale_after_s``; also published by the stale timer when it changes |
| ``spatialvlm/answer`` | std_msgs/String | the raw answer text (first sample); its stamp is in ``spatialvlm/result`` |
| ``spatialvlm/debug_image`` | sensor_msgs/Image | if ``publish_debug_image``: rgb8 frame with distance / reward drawn |
| ``/diagnostics`` | diagnostic_msgs/DiagnosticArray | every ``diagnostics_period_s``: see :data:`DIAGNOSTIC_KEYS` |

Latency (diagnostics ``latency_p50_ms`` / ``latency_p99_ms``, ``result``'s ``latency_ms``) is
the time from the image callback receiving a frame to the publication of that frame's outputs
(monotonic clock; it includes the wait for a running inference). ``stamp_age_*`` is the node
clock at publication minus the image header stamp (meaningful only with synchronised clocks).

Reward: the answer's distance goes through the smoother (``smoothing.kind``: ``median_ema``,
``kalman`` or ``none``) then the shaper; an answer without a distance, or one the smoother
rejects, never becomes a number: the reward holds and ``valid`` is False. Changing
``subject``, ``target`` or any ``smoothing.*`` / ``reward.*`` parameter at run time starts a
new filter and shaper (a new episode). Malformed messages (wrong step, short data, unknown
encoding, zero or huge size, corrupt JPEG/PNG, depth without a finite reading, bad
CameraInfo) are counted and warned about with ``throttle_duration_sec = warn_throttle_s``.
"""  # noqa: E501 - the tables read better unwrapped

from __future__ import annotations

from collections import deque, OrderedDict
from dataclasses import dataclass
import math
import os
import threading
import time
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleState, Node, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState

from spatialvlm_ros.bags.imageconv import array_to_image, ImageConversionError
from spatialvlm_ros.core.reward import BONUS_MODES, REWARD_MODES, RewardConfig
from spatialvlm_ros.core.smoothing import KalmanConfig, MedianEMAConfig, SmootherConfig
from spatialvlm_ros.model.estimator import (
    DEFAULT_ANSWER_PREFIX,
    DEFAULT_NUMBER_DECODING,
    DEFAULT_QUESTION_TEMPLATE,
    DEFAULT_TEMPERATURE,
    DistanceEstimate,
    DistanceEstimator,
    MAX_SAMPLES,
    NUMBER_DECODINGS,
    question_for,
    TEMPERATURE_RANGE,
)
from spatialvlm_ros.replay.pipeline import RewardPipeline
from spatialvlm_ros.replay.topics import (
    NODE_NAME,
    OUTPUT_TOPICS,
    point_fields,
    relative_name,
    RESULT_KEYS,
    result_level,
)
from spatialvlm_ros.ros.conversions import (
    decode_colour,
    decode_depth,
    finite_or_nan,
    input_qos,
    intrinsics_from_info,
    message_class,
    precheck_compressed,
    precheck_image,
    RELIABILITIES,
    ros_session,
    stamp_to_ns,
)
from spatialvlm_ros.ros.estimators import (
    accepted_names,
    default_estimator_factory,
    describe,
    ESTIMATOR_KINDS,
    EstimatorFactory,
    EstimatorSpec,
    release,
)
from spatialvlm_ros.ros.harness import EXECUTOR_KINDS, make_executor

SMOOTHER_KINDS = ('median_ema', 'kalman', 'none')
KALMAN_MODELS = ('random_walk', 'constant_velocity')
TRANSPORTS = ('raw', 'compressed')
FRAME_KWARGS = ('stamp_ns', 'frame_id', 'depth', 'intrinsics', 'question_template', 'samples',
                'ground_truth')
DIAGNOSTIC_KEYS = (
    'state', 'input_rate_hz', 'processed_rate_hz', 'latency_p50_ms', 'latency_p99_ms',
    'stamp_age_p50_ms', 'stamp_age_p99_ms', 'last_inference_ms', 'inference_p50_ms',
    'inference_p99_ms', 'frames_received', 'frames_processed', 'frames_dropped',
    'late_results_dropped', 'superseded_results_dropped', 'invalid_answers',
    'rejected_outliers', 'estimator_errors', 'malformed_messages', 'warnings_logged', 'stale',
    'model', 'device', 'estimator', 'inference_workers', 'estimator_alive', 'subject', 'target',
)
"""Key/values of the node's ``/diagnostics`` status (rates over the last period)."""

OUTPUTS: dict[str, tuple[str, str]] = {
    key: (relative_name(key), spec.msgtype) for key, spec in OUTPUT_TOPICS.items()}
"""Output key -> (relative topic name, message type), from :data:`OUTPUT_TOPICS`."""
Bool = message_class('std_msgs/msg/Bool')
String = message_class('std_msgs/msg/String')


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: default (fixes the type), description, limits."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def descriptor(self) -> ParameterDescriptor:
        """Return the ParameterDescriptor (type from the default, ranges, read-only)."""
        text = self.description
        if self.choices:
            text += f' One of: {", ".join(self.choices)}.'
        descriptor = ParameterDescriptor(
            name=self.name, type=Parameter.Type.from_parameter_value(self.default).value,
            description=text, read_only=self.read_only)
        if self.low is not None and self.high is not None:
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                descriptor.integer_range = [IntegerRange(
                    from_value=int(self.low), to_value=int(self.high), step=1)]
            elif isinstance(self.default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(self.low), to_value=float(self.high), step=0.0)]
        if self.choices:
            descriptor.additional_constraints = f'one of {list(self.choices)}'
        return descriptor


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('estimator', 'vlm', 'Distance estimator to build on activation.', True,
              ESTIMATOR_KINDS),
    ParamSpec('model_folder', '', "Local VLM folder; '' = the shipped default model.", True),
    ParamSpec('device', 'auto', "Inference device: 'auto', 'cpu', 'cuda' or 'cuda:N'.", True),
    ParamSpec('cpu_threads', 1,
              'torch CPU threads for inference (0: torch default, all cores); 1 leaves the '
              'other cores to the camera driver and DDS.', True, low=0, high=256),
    ParamSpec('inference_workers', 0,
              'Frames answered at once, each by its own estimator (and child process); 0 = '
              'auto: 2 for the shipped model on a CPU (its answer takes about one 30 Hz frame), '
              'else 1. A result that would come out after a newer one is dropped.', True,
              low=0, high=8),
    ParamSpec('estimator_process', True,
              "estimator 'vlm': run the model in a child process with its own interpreter, so "
              "its Python does not compete with the node's callbacks for the GIL.", True),
    ParamSpec('autostart', True, 'main() configures and activates the node by itself.', True),
    ParamSpec('executor', 'single_threaded',
              'Executor main() spins the node on (the model runs in its own thread either '
              'way).', True, EXECUTOR_KINDS),
    ParamSpec('image_transport', 'raw',
              "Input 'image' type: raw = sensor_msgs/Image, compressed = CompressedImage.",
              True, TRANSPORTS),
    ParamSpec('input_reliability', 'best_effort', 'Reliability of the input subscriptions.',
              True, RELIABILITIES),
    ParamSpec('input_queue_depth', 1, 'History depth of the input subscriptions.', True,
              low=1, high=10),
    ParamSpec('use_depth', False, "Subscribe to 'depth' and pass it to the estimator.", True),
    ParamSpec('use_camera_info', True,
              "Subscribe to 'camera_info' and pass the intrinsics to the estimator.", True),
    ParamSpec('max_image_bytes', 64 * 1024 * 1024,
              'Largest accepted image (declared bytes); larger ones are malformed.',
              low=1024, high=1 << 30),
    ParamSpec('subject', 'the gripper', 'Subject phrase of the distance question.'),
    ParamSpec('target', 'the coke can', 'Target phrase of the distance question.'),
    ParamSpec('question_template', DEFAULT_QUESTION_TEMPLATE,
              'Question asked per frame; must contain {subject} and {target}.'),
    ParamSpec('samples_per_frame', 1, 'Answers sampled per frame and averaged (1: one answer, '
              'decoded as number_decoding says); '
              'one pass over the image and prompt for all of them on the LLaVA fast path.',
              low=1, high=MAX_SAMPLES),
    ParamSpec('sampling_temperature', DEFAULT_TEMPERATURE,
              'Sampling temperature of the VLM when samples_per_frame > 1.', True,
              low=TEMPERATURE_RANGE[0], high=TEMPERATURE_RANGE[1]),
    ParamSpec('number_decoding', DEFAULT_NUMBER_DECODING,
              "One answer per frame: 'median' reads each number at the median of the VLM's "
              "distribution (one greedy pass; digits must be single tokens), 'greedy' takes "
              'the likeliest tokens.', True, NUMBER_DECODINGS),
    ParamSpec('mirror_average', False,
              "Also ask about the frame's left-right mirror image and average the two distances "
              '(one batch of both images a frame, about 1.4x the time of one answer on a CPU; '
              'for questions that do not depend on left and right).',
              True),
    ParamSpec('answer_prefix', DEFAULT_ANSWER_PREFIX,
              "VLM answers are made to start with this text ('' for none): the number comes "
              'first and decoding stops once it is read.', True),
    ParamSpec('smoothing.kind', 'median_ema', 'Temporal filter of the distances.', False,
              SMOOTHER_KINDS),
    ParamSpec('smoothing.window', 7, 'median_ema: samples in the running median.',
              low=1, high=100),
    ParamSpec('smoothing.alpha', 0.3, 'median_ema: EMA weight of a new sample.',
              low=0.01, high=1.0),
    ParamSpec('smoothing.tau_s', 0.0,
              'median_ema: EMA time constant in seconds; 0 = use alpha per sample.',
              low=0.0, high=60.0),
    ParamSpec('smoothing.outlier_threshold', 3.0,
              'median_ema: robust standard deviations from the median that make an outlier.',
              low=0.1, high=100.0),
    ParamSpec('smoothing.min_deviation_m', 0.05, 'median_ema: outlier floor in metres.',
              low=0.0, high=10.0),
    ParamSpec('smoothing.min_relative', 0.2,
              'median_ema: outlier floor as a fraction of the median.', low=0.0, high=10.0),
    ParamSpec('smoothing.kalman_model', 'random_walk', 'kalman: motion model.', False,
              KALMAN_MODELS),
    ParamSpec('smoothing.process_var', 0.01, 'kalman: process noise intensity.',
              low=1e-9, high=100.0),
    ParamSpec('smoothing.measurement_var', 0.01, 'kalman: measurement variance, m^2.',
              low=1e-9, high=100.0),
    ParamSpec('smoothing.gate_sigma', 3.0, 'kalman: innovation gate in standard deviations.',
              low=0.1, high=1000.0),
    ParamSpec('smoothing.max_rejections', 5,
              'kalman: consecutive rejections before re-initialising (0 = never).',
              low=0, high=1000),
    ParamSpec('stale_after_s', 1.0,
              'Seconds without an accepted estimate after which the output is stale.',
              low=0.01, high=3600.0),
    ParamSpec('reward.mode', 'negative_distance', 'Reward shaping.', False, REWARD_MODES),
    ParamSpec('reward.scale', 1.0, 'Metres per reward unit (decay length of exp).',
              low=1e-6, high=1e6),
    ParamSpec('reward.success_threshold_m', 0.05,
              'Success when the distance is at most this; negative disables success.',
              low=-1.0, high=100.0),
    ParamSpec('reward.success_bonus', 0.0, 'Added to the reward on success.',
              low=-1e6, high=1e6),
    ParamSpec('reward.bonus_mode', 'once', 'When the success bonus is paid.', False,
              BONUS_MODES),
    ParamSpec('reward.clip', False, 'Clip the reward to [clip_low, clip_high].'),
    ParamSpec('reward.clip_low', -10.0, 'Lower reward bound when clipping.',
              low=-1e6, high=1e6),
    ParamSpec('reward.clip_high', 10.0, 'Upper reward bound when clipping.',
              low=-1e6, high=1e6),
    ParamSpec('publish_debug_image', False,
              'Publish spatialvlm/debug_image with the values drawn.'),
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics.', True,
              low=0.05, high=60.0),
    ParamSpec('stale_check_period_s', 0.1, 'Period of the stale check.', True,
              low=0.01, high=10.0),
    ParamSpec('warn_throttle_s', 5.0, 'Minimum seconds between warnings about bad input.',
              True, low=0.0, high=3600.0),
    ParamSpec('latency_window', 300, 'Frames in the latency percentiles.', True,
              low=10, high=100000),
    ParamSpec('oracle_object_id', '',
              "oracle: object id in ground_truth_distance; '' = the first name.", True),
    ParamSpec('oracle_wait_s', 0.1,
              'oracle: seconds to wait for the ground truth of a frame.', True,
              low=0.0, high=5.0),
)
PARAMETER_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class Settings:
    """The validated parameter values (see :data:`PARAMETERS`)."""

    values: dict[str, Any]
    smoother: SmootherConfig
    reward: RewardConfig

    def __getitem__(self, name: str) -> Any:
        """Return one parameter value."""
        return self.values[name]

    def question(self) -> str:
        """Return the question for the current subject and target, as the estimator asks it."""
        return question_for(str(self['question_template']), str(self['subject']),
                            str(self['target']))


def settings_from(values: dict[str, Any]) -> Settings:
    """
    Validate parameter values and build the filter and reward configs.

    :raise ValueError: naming the parameter and the reason.
    """
    for name, spec in PARAMETER_SPECS.items():
        value = values[name]
        if spec.choices and value not in spec.choices:
            raise ValueError(f'{name} must be one of {list(spec.choices)}, got {value!r}')
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f'{name} must be finite, got {value}')
        if spec.low is not None and not isinstance(value, bool) and \
                not spec.low <= value <= spec.high:
            raise ValueError(f'{name} must be within [{spec.low}, {spec.high}], got {value}')
    for name in ('subject', 'target'):
        if not str(values[name]).strip():
            raise ValueError(f'{name} must be a non-empty phrase')
    template = str(values['question_template'])
    for field in ('{subject}', '{target}'):
        if field not in template:
            raise ValueError(f'question_template must contain {field}, got {template!r}')
    try:
        template.format(subject='s', target='t')
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f'question_template {template!r} cannot be formatted: {exc!r}') \
            from None
    try:
        smoother = smoother_config(values)
        reward = reward_config(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return Settings(dict(values), smoother, reward)


def smoother_config(values: dict[str, Any]) -> SmootherConfig:
    """Return the smoother config the ``smoothing.*`` and ``stale_after_s`` values describe."""
    stale = float(values['stale_after_s'])
    kind = values['smoothing.kind']
    if kind == 'kalman':
        return KalmanConfig(model=values['smoothing.kalman_model'],
                            process_var=values['smoothing.process_var'],
                            measurement_var=values['smoothing.measurement_var'],
                            gate_sigma=values['smoothing.gate_sigma'],
                            max_rejections=values['smoothing.max_rejections'],
                            stale_after_s=stale)
    if kind == 'none':  # pass-through: every finite sample accepted as is
        return MedianEMAConfig(window=1, alpha=1.0, outlier_threshold=1e9, min_samples=1,
                               min_relative=1e9, stale_after_s=stale)
    window = int(values['smoothing.window'])
    tau = float(values['smoothing.tau_s'])
    return MedianEMAConfig(window=window, alpha=values['smoothing.alpha'],
                           tau_s=tau if tau > 0 else None,
                           outlier_threshold=values['smoothing.outlier_threshold'],
                           min_deviation_m=values['smoothing.min_deviation_m'],
                           min_relative=values['smoothing.min_relative'],
                           min_samples=min(3, window), stale_after_s=stale)


def reward_config(values: dict[str, Any]) -> RewardConfig:
    """Return the reward config the ``reward.*`` values describe."""
    threshold = float(values['reward.success_threshold_m'])
    clip = ((float(values['reward.clip_low']), float(values['reward.clip_high']))
            if values['reward.clip'] else None)
    return RewardConfig(mode=values['reward.mode'], scale=values['reward.scale'],
                        success_threshold_m=threshold if threshold >= 0 else None,
                        success_bonus=values['reward.success_bonus'],
                        bonus_mode=values['reward.bonus_mode'], clip=clip)


@dataclass
class _Pending:
    """The newest unprocessed frame."""

    msg: Any
    received: float  # time.monotonic() at the callback
    seq: int = 0  # arrival order


class _Stats:
    """Counters and latency windows, shared by the callbacks (thread-safe)."""

    COUNTERS = ('frames_received', 'frames_processed', 'frames_dropped', 'late_results_dropped',
                'superseded_results_dropped', 'invalid_answers', 'rejected_outliers',
                'estimator_errors', 'malformed_messages', 'warnings_logged')

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.malformed_by_kind: dict[str, int] = {}
        self.latency: deque[float] = deque(maxlen=window)
        self.stamp_age: deque[float] = deque(maxlen=window)
        self.inference: deque[float] = deque(maxlen=window)
        self.last_inference_s = math.nan
        self._last_counts = dict(self.counts)
        self._last_time = time.monotonic()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def malformed(self, kind: str) -> None:
        with self._lock:
            self.counts['malformed_messages'] += 1
            self.malformed_by_kind[kind] = self.malformed_by_kind.get(kind, 0) + 1

    def processed(self, latency_s: float, stamp_age_s: float, inference_s: float) -> None:
        with self._lock:
            self.counts['frames_processed'] += 1
            self.latency.append(latency_s)
            if math.isfinite(stamp_age_s):
                self.stamp_age.append(stamp_age_s)
            self.last_inference_s = inference_s
            self.inference.append(inference_s)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters, rates since the last snapshot and latency percentiles."""
        with self._lock:
            now = time.monotonic()
            dt = max(now - self._last_time, 1e-9)
            out: dict[str, Any] = dict(self.counts)
            out['input_rate_hz'] = (self.counts['frames_received']
                                    - self._last_counts['frames_received']) / dt
            out['processed_rate_hz'] = (self.counts['frames_processed']
                                        - self._last_counts['frames_processed']) / dt
            self._last_counts, self._last_time = dict(self.counts), now
            latency = np.array(self.latency) * 1e3
            age = np.array(self.stamp_age) * 1e3
            inference = np.array(self.inference) * 1e3
            out['malformed_by_kind'] = dict(self.malformed_by_kind)
            out['last_inference_ms'] = self.last_inference_s * 1e3
        out['latency_p50_ms'], out['latency_p99_ms'] = _percentiles(latency)
        out['stamp_age_p50_ms'], out['stamp_age_p99_ms'] = _percentiles(age)
        out['inference_p50_ms'], out['inference_p99_ms'] = _percentiles(inference)
        return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


class RewardNode(Node):
    """
    The lifecycle node ``spatialvlm_reward`` (see the module docstring).

    :param estimator_factory: builds the estimator on activation from an
        :class:`~spatialvlm_ros.ros.estimators.EstimatorSpec`; default
        :func:`~spatialvlm_ros.ros.estimators.default_estimator_factory`. Tests pass fakes.
    :param node_name: the node name.
    :param kwargs: passed to ``rclpy.lifecycle.Node`` (``context``, ``cli_args``,
        ``parameter_overrides``, ``namespace`` ...).
    """

    def __init__(self, estimator_factory: EstimatorFactory | None = None, *,
                 node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._factory = estimator_factory or default_estimator_factory
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self.add_on_set_parameters_callback(self._validate_update)
        self.add_post_set_parameters_callback(self._apply_update)
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._lock = threading.RLock()  # settings, filter, shaper, staleness
        self._pending_lock = threading.Lock()
        self._work = threading.Condition(self._pending_lock)  # a frame is pending, or stop
        self._truth_cond = threading.Condition()
        self._settings: Settings | None = None
        self._estimators: list[DistanceEstimator] = []
        self._estimator_kwargs: frozenset[str] = frozenset()
        self._spec = EstimatorSpec()
        self.model_name, self.device_name = '', ''
        self._pending: _Pending | None = None
        self._workers: list[threading.Thread] = []
        self._arrivals = 0  # frames stored so far (sequence numbers)
        self._published_seq = -1  # newest frame whose outputs were published
        self._generation = 0  # bumped by every filter reset
        self._last_estimator_error = ''
        self._errors_at_last_diagnostics = 0
        self._stop_worker_flag = False
        self._active = False
        self._inputs: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._node_timers: list[Any] = []
        self._depth: np.ndarray | None = None
        self._intrinsics: Any = None
        self._truth: OrderedDict[int, float] = OrderedDict()
        self.stats = _Stats(int(self.get_parameter('latency_window').value))
        self._reset_filters()

    # -- parameters ----------------------------------------------------------------------
    def _current_values(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in PARAMETER_SPECS}

    def _validate_update(self, parameters: list[Parameter]) -> SetParametersResult:
        values = self._current_values()
        for parameter in parameters:
            if parameter.name in PARAMETER_SPECS:
                values[parameter.name] = parameter.value
        try:
            settings_from(values)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_update(self, parameters: list[Parameter]) -> None:
        if self._settings is None:
            return  # not configured: on_configure reads everything
        names = {p.name for p in parameters}
        with self._lock:
            self._settings = settings_from(self._current_values())
            if names & {'subject', 'target', 'question_template'} or any(
                    n.startswith(('smoothing.', 'reward.')) or n == 'stale_after_s'
                    for n in names):
                self._reset_filters()
        self.get_logger().info(f'parameters updated: {sorted(names)}; question: '
                               f'{self._settings.question()!r}')

    @property
    def settings(self) -> Settings | None:
        """Return the validated parameter values, or None before configure."""
        return self._settings

    def _reset_filters(self) -> None:
        """Start a new filter and shaper: the offline pipeline's, stale by the wall clock."""
        with self._lock:
            settings = self._settings
            if settings is None:
                self._pipeline = RewardPipeline(
                    None, PARAMETER_SPECS['subject'].default, PARAMETER_SPECS['target'].default,
                    MedianEMAConfig(), clock=time.monotonic)
            else:
                self._pipeline = RewardPipeline(None, settings['subject'], settings['target'],
                                                settings.smoother, settings.reward,
                                                clock=time.monotonic)
            self._stale = False
            self._generation += 1  # answers asked before this belong to the old filter

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read and validate the parameters; create publishers and timers."""
        try:
            settings = settings_from(self._current_values())
        except ValueError as exc:
            self.get_logger().error(f'cannot configure: {exc}')
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._settings = settings
            self._reset_filters()
        self.stats = _Stats(int(settings['latency_window']))
        reliable = QoSProfile(depth=10)
        pub = self.create_lifecycle_publisher
        self._outputs = {key: pub(message_class(msgtype), name,
                                  QoSProfile(depth=1) if key == 'debug_image' else reliable)
                         for key, (name, msgtype) in OUTPUTS.items()}
        # /diagnostics is a plain publisher so an inactive node still reports its state.
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._node_timers = [
            self.create_timer(settings['diagnostics_period_s'], self._publish_diagnostics,
                              callback_group=self._timer_group),
            self.create_timer(settings['stale_check_period_s'], self._check_stale,
                              callback_group=self._timer_group),
        ]
        self.get_logger().info(f'configured: question {settings.question()!r}, estimator '
                               f'{settings["estimator"]!r}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the estimator (load the model) and subscribe to the inputs."""
        settings = self._settings
        assert settings is not None
        self._spec = EstimatorSpec(kind=settings['estimator'],
                                   model_folder=settings['model_folder'],
                                   device=settings['device'],
                                   samples_per_frame=settings['samples_per_frame'],
                                   temperature=settings['sampling_temperature'],
                                   number_decoding=settings['number_decoding'],
                                   mirror_average=settings['mirror_average'],
                                   question_template=settings['question_template'],
                                   answer_prefix=settings['answer_prefix'],
                                   cpu_threads=settings['cpu_threads'],
                                   process=settings['estimator_process'])
        start = time.monotonic()
        estimators: list[DistanceEstimator] = []
        try:
            estimators.append(self._factory(self._spec))
            wanted = int(settings['inference_workers']) or self._auto_workers(estimators[0])
            while len(estimators) < wanted:
                estimators.append(self._factory(self._spec))
        except Exception as exc:  # any load failure fails the transition
            self.get_logger().error(f'cannot build the {self._spec.kind!r} estimator: {exc}')
            for built in estimators:
                self._release(built)
            return TransitionCallbackReturn.FAILURE
        self._estimators = estimators  # worker i alone uses estimator i
        estimator = estimators[0]
        self._estimator_kwargs = accepted_names(estimator.estimate, FRAME_KWARGS)
        self.model_name, self.device_name = describe(estimator, self._spec)
        self.get_logger().info(f'{len(estimators)} x estimator {self.model_name} on '
                               f'{self.device_name} ready in {time.monotonic() - start:.2f} s')
        self._reset_filters()
        self._active = True
        self._start_workers()
        self._subscribe(settings)
        return super().on_activate(state)

    def _auto_workers(self, estimator: DistanceEstimator) -> int:
        """
        Return the workers of ``inference_workers: 0``: 2 for the shipped VLM on a CPU.

        Measured on the 2-core reference CPU (``benchmarks/bench_node.py``): one answer of the
        shipped model takes about one camera frame at 30 Hz, so with one worker every late
        answer delays the next frame (p99 67-74 ms), with two none waits (p99 50-55 ms). A
        larger model or a GPU gets one: a second copy would double its memory; so does an
        injected estimator factory.
        """
        spec = self._spec
        device = str(getattr(estimator, 'device', '') or '')
        shipped_on_cpu = (self._factory is default_estimator_factory and spec.kind == 'vlm'
                          and not spec.model_folder and device.startswith('cpu'))
        return 2 if shipped_on_cpu and (os.cpu_count() or 1) >= 2 else 1

    def _start_workers(self) -> None:
        with self._work:
            self._stop_worker_flag = False
        base = f'spatialvlm_inference{self.get_namespace().rstrip("/")}'
        self._workers = [threading.Thread(target=self._work_loop, args=(i,), daemon=True,
                                          name=base if i == 0 else f'{base}#{i}')
                         for i in range(len(self._estimators))]
        for worker in self._workers:
            worker.start()

    def _stop_workers(self) -> None:
        """Stop the inference threads, waiting for the frames they are processing."""
        with self._work:
            self._stop_worker_flag = True
            self._work.notify_all()
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join()

    def _subscribe(self, settings: Settings) -> None:
        qos = input_qos(settings['input_reliability'], settings['input_queue_depth'])
        group = self._input_group
        image_type = CompressedImage if settings['image_transport'] == 'compressed' else Image
        subs = [self.create_subscription(image_type, 'image', self._on_image, qos,
                                         callback_group=group)]
        if settings['use_depth']:
            subs.append(self.create_subscription(Image, 'depth', self._on_depth, qos,
                                                 callback_group=group))
        if settings['use_camera_info']:
            subs.append(self.create_subscription(CameraInfo, 'camera_info',
                                                 self._on_camera_info, qos,
                                                 callback_group=group))
        if settings['estimator'] == 'oracle':
            subs.append(self.create_subscription(JointState, 'ground_truth_distance',
                                                 self._on_ground_truth, QoSProfile(depth=50),
                                                 callback_group=group))
        self._inputs = subs

    def input_publisher_count(self) -> int:
        """Return how many publishers the image subscription is matched with (0 inactive)."""
        return self._inputs[0].get_publisher_count() if self._inputs else 0

    def input_subscriptions(self) -> tuple[Any, ...]:
        """Return the input subscriptions, the image's first (empty while inactive)."""
        return tuple(self._inputs)

    def output_publisher(self, key: str) -> Any:
        """Return the publisher of an :data:`OUTPUTS` key (None before configure)."""
        return self._outputs.get(key)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, wait for a running inference and close the estimator."""
        self._active = False
        self._unsubscribe()
        self._stop_workers()
        self._close_estimator()
        return super().on_deactivate(state)

    def _unsubscribe(self) -> None:
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        with self._pending_lock:
            self._pending = None
        self._depth, self._intrinsics = None, None
        with self._truth_cond:
            self._truth.clear()
            self._truth_cond.notify_all()  # an oracle waiting for truth stops waiting

    def _close_estimator(self) -> None:
        # callers stop the workers first (_stop_workers joins them), so none is in use
        estimators, self._estimators = self._estimators, []
        for estimator in estimators:
            self._release(estimator)
        if estimators:
            self.get_logger().info(f'{len(estimators)} x estimator closed')

    def _release(self, estimator: DistanceEstimator) -> None:
        try:
            release(estimator)
        except Exception as exc:  # a close failure must not wedge the node
            self.get_logger().error(f'closing the estimator failed: {exc}')

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy publishers and timers."""
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_entities(self) -> None:
        for timer in self._node_timers:
            self.destroy_timer(timer)
        self._node_timers = []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if getattr(self, '_diagnostics', None) is not None:
            self.destroy_publisher(self._diagnostics)
            self._diagnostics = None
        self._settings = None

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from whichever state the node is in."""
        self._active = False
        self._unsubscribe()
        self._stop_workers()
        self._close_estimator()
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the estimator and inputs; succeed so the node returns to unconfigured."""
        self.get_logger().error('error during a transition; releasing resources')
        return self.on_shutdown(state)

    def destroy_node(self) -> None:
        """Stop the model's thread and close the estimator (its process), then destroy."""
        self._active = False
        with self._truth_cond:
            self._truth_cond.notify_all()
        self._stop_workers()
        self._close_estimator()
        super().destroy_node()

    @property
    def lifecycle_state(self) -> str:
        """Return the current lifecycle state's label ('unconfigured', 'active' ...)."""
        return str(self._state_machine.current_state[1])

    # -- inputs --------------------------------------------------------------------------
    def _warn(self, text: str) -> None:
        settings = self._settings
        throttle = float(settings['warn_throttle_s']) if settings is not None else 5.0
        if self.get_logger().warning(text, throttle_duration_sec=throttle):
            self.stats.add('warnings_logged')

    def _malformed(self, kind: str, reason: Any) -> None:
        self.stats.malformed(kind)
        count = self.stats.counts['malformed_messages']
        self._warn(f'malformed {kind} message ({count} so far): {reason}')

    def _on_image(self, msg: Any) -> None:
        received = time.monotonic()
        self.stats.add('frames_received')
        settings = self._settings
        if settings is None or not self._active:
            return
        limit = int(settings['max_image_bytes'])
        reason = (precheck_compressed(msg, limit) if isinstance(msg, CompressedImage)
                  else precheck_image(msg, limit))
        if reason:
            self._malformed('image', reason)
            return
        with self._work:
            if self._pending is not None:
                self.stats.add('frames_dropped')
            self._pending = _Pending(msg, received, self._arrivals)
            self._arrivals += 1
            self._work.notify()

    def _on_depth(self, msg: Image) -> None:
        settings = self._settings
        if settings is None:
            return
        limit = int(settings['max_image_bytes'])
        reason = precheck_image(msg, limit)
        if reason:
            self._malformed('depth', reason)
            return
        try:
            self._depth = decode_depth(msg, limit)
        except (ImageConversionError, ValueError) as exc:
            self._malformed('depth', exc)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._intrinsics = intrinsics_from_info(msg)
        except (ValueError, TypeError) as exc:
            self._malformed('camera_info', exc)

    def _on_ground_truth(self, msg: JointState) -> None:
        settings = self._settings
        if settings is None:
            return
        names, positions = list(msg.name), list(msg.position)
        if not names or len(names) != len(positions):
            self._malformed('ground_truth', f'{len(names)} names, {len(positions)} positions')
            return
        wanted = settings['oracle_object_id'] or names[0]
        if wanted not in names:
            self._malformed('ground_truth', f'no object {wanted!r} in {names[:8]}')
            return
        with self._truth_cond:
            self._truth[stamp_to_ns(msg.header.stamp)] = float(positions[names.index(wanted)])
            while len(self._truth) > 256:
                self._truth.popitem(last=False)
            self._truth_cond.notify_all()

    def _ground_truth(self, stamp_ns: int, wait_s: float) -> float | None:
        with self._truth_cond:
            self._truth_cond.wait_for(lambda: stamp_ns in self._truth or not self._active,
                                      timeout=wait_s)
            return self._truth.get(stamp_ns)

    # -- processing ----------------------------------------------------------------------
    def _work_loop(self, index: int) -> None:
        """Run inference thread ``index``: process the newest pending frame until stopped."""
        while True:
            with self._work:
                self._work.wait_for(lambda: self._stop_worker_flag or self._pending is not None)
                if self._stop_worker_flag:
                    return
                item, self._pending = self._pending, None
            try:
                self._process(item, index)
            except Exception as exc:  # one bad frame must never kill the node
                self.stats.add('estimator_errors')
                self._warn(f'processing a frame failed: {exc!r}')

    def _frame_kwargs(self, header: Any, stamp_ns: int, settings: Settings) -> dict[str, Any]:
        names = self._estimator_kwargs
        kwargs: dict[str, Any] = {}
        if 'stamp_ns' in names:
            kwargs['stamp_ns'] = stamp_ns
        if 'frame_id' in names:
            kwargs['frame_id'] = str(header.frame_id)
        if 'depth' in names:
            kwargs['depth'] = self._depth
        if 'intrinsics' in names:
            kwargs['intrinsics'] = self._intrinsics
        if 'question_template' in names:
            kwargs['question_template'] = settings['question_template']
        if 'samples' in names:
            kwargs['samples'] = settings['samples_per_frame']
        if 'ground_truth' in names:
            kwargs['ground_truth'] = self._ground_truth(stamp_ns, settings['oracle_wait_s'])
        return kwargs

    def _estimate(self, image: np.ndarray, settings: Settings, kwargs: dict[str, Any],
                  index: int = 0) -> DistanceEstimate | None:
        estimators = self._estimators
        if index >= len(estimators):
            return None
        start = time.perf_counter()
        try:
            return estimators[index].estimate(image, settings['subject'], settings['target'],
                                              **kwargs)
        except Exception as exc:  # a failing model gives 'no answer'
            self.stats.add('estimator_errors')
            self._last_estimator_error = str(exc) or type(exc).__name__
            self._warn(f'estimator failed: {exc!r}')
            return DistanceEstimate(None, '', [], time.perf_counter() - start,
                                    f'estimator error: {exc}')

    def _process(self, item: _Pending, index: int = 0) -> None:
        with self._lock:  # the query asked and the filter it feeds, as one
            settings, generation = self._settings, self._generation
        if settings is None:
            return
        msg = item.msg
        header = msg.header
        try:
            image = decode_colour(msg, isinstance(msg, CompressedImage),
                                  int(settings['max_image_bytes']))
        except (ImageConversionError, ValueError) as exc:
            self._malformed('image', exc)
            return
        stamp_ns = stamp_to_ns(header.stamp)
        kwargs = self._frame_kwargs(header, stamp_ns, settings)
        start = time.perf_counter()
        result = self._estimate(image, settings, kwargs, index)
        inference_s = time.perf_counter() - start
        if result is None:
            return
        with self._lock:  # outputs leave in arrival order: a result older than one out is late
            if generation != self._generation:  # asked of the old target / template / filter
                self.stats.add('superseded_results_dropped')
                return
            if item.seq < self._published_seq:
                self.stats.add('late_results_dropped')
                return
            self._published_seq = item.seq
            record = self._update_filters(result, stamp_ns)
            latency = time.monotonic() - item.received  # publication follows immediately
            record['latency_ms'] = latency * 1e3
            self._publish(header, image, result, record, settings)
        now_ns = self.get_clock().now().nanoseconds
        stamp_age = (now_ns - stamp_ns) / 1e9 if stamp_ns > 0 else math.nan
        self.stats.processed(latency, stamp_age, inference_s)

    def _update_filters(self, result: DistanceEstimate, stamp_ns: int) -> dict[str, Any]:
        """Feed the answer to the pipeline (by stamp, monotonic clock if unstamped)."""
        t = stamp_ns / 1e9 if stamp_ns > 0 else time.monotonic()
        last = self._pipeline.last_stamp_s
        if last is not None and t < last:
            self.get_logger().info('image stamps went back in time; starting a new episode')
            self._reset_filters()
        frame = self._pipeline.feed(t, result)
        if not frame.valid:
            self.stats.add('invalid_answers')
        if frame.rejected:
            self.stats.add('rejected_outliers')
        self._stale = frame.stale
        return {'distance_raw': finite_or_nan(frame.distance_raw_m),
                'distance': finite_or_nan(frame.distance_m), 'reward': frame.reward,
                'success': frame.success, 'valid': frame.reward_fresh, 'stale': frame.stale,
                'smoother_valid': frame.smoothed_valid and not frame.stale,
                'rejected': frame.rejected}

    def _check_stale(self) -> None:
        if not self._active:
            return
        with self._lock:  # published under the lock: a fresh result cannot slip in between
            stale = self._pipeline.stale_at(time.monotonic())
            changed = stale != self._stale
            self._stale = stale
            if changed:
                self._publish_flag('stale', stale)
                if stale:
                    self._publish_flag('valid', False)
        if changed and stale:
            self.get_logger().info('no accepted estimate for stale_after_s: stale')

    def _publish_flag(self, name: str, value: bool) -> None:
        publisher = self._outputs.get(name)
        if publisher is not None:
            publisher.publish(Bool(data=bool(value)))

    # -- outputs -------------------------------------------------------------------------
    def _publish(self, header: Any, image: np.ndarray, result: DistanceEstimate,
                 record: dict[str, Any], settings: Settings) -> None:
        pubs = self._outputs
        if not pubs:
            return
        values = self._result_values(header, result, record, settings)
        for name, (x, y, z) in point_fields(values, result.valid,
                                            record['smoother_valid']).items():
            point = PointStamped(header=header)
            point.point.x, point.point.y, point.point.z = x, y, z
            pubs[name].publish(point)
        pubs['result'].publish(self._result_message(header, result, values))
        self._publish_flag('valid', record['valid'])
        self._publish_flag('stale', record['stale'])
        pubs['answer'].publish(String(data=result.text))
        if settings['publish_debug_image']:
            pubs['debug_image'].publish(self._debug_image(header, image, result, record))

    @staticmethod
    def _result_values(header: Any, result: DistanceEstimate, record: dict[str, Any],
                       settings: Settings) -> dict[str, Any]:
        """Return the frame's ``spatialvlm/result`` key/values (:data:`RESULT_KEYS`)."""
        values = {
            'stamp_ns': stamp_to_ns(header.stamp), 'frame_id': header.frame_id,
            'answer': result.text, 'reason': result.reason,
            'subject': settings['subject'], 'target': settings['target'], **record,
        }
        return {key: values[key] for key in RESULT_KEYS}

    def _result_message(self, header: Any, result: DistanceEstimate,
                        values: dict[str, Any]) -> DiagnosticArray:
        level = bytes((result_level(values['valid'], values['stale']),))  # byte field
        status = DiagnosticStatus(level=level, name=f'{self.get_name()}/result',
                                  message=result.text[:200] or result.reason[:200],
                                  hardware_id=str(header.frame_id),
                                  values=[KeyValue(key=k, value=str(v))
                                          for k, v in values.items()])
        return DiagnosticArray(header=header, status=[status])

    def _debug_image(self, header: Any, image: np.ndarray, result: DistanceEstimate,
                     record: dict[str, Any]) -> Image:
        import cv2

        canvas = np.ascontiguousarray(image.copy())
        scale = max(canvas.shape[1] / 640.0, 0.35)
        colour = (0, 200, 0) if record['valid'] else (230, 60, 60)
        lines = [f"d={record['distance']:.3f} m raw={record['distance_raw']:.3f} m",
                 f"r={record['reward']:.3f}{' success' if record['success'] else ''}"
                 f"{'' if record['valid'] else ' INVALID'}{' STALE' if record['stale'] else ''}",
                 result.text[:60]]
        for i, line in enumerate(lines):
            y = int((22 + 24 * i) * scale) + 4
            cv2.putText(canvas, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0),
                        3, cv2.LINE_AA)
            cv2.putText(canvas, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour,
                        1, cv2.LINE_AA)
        return array_to_image(canvas, 'rgb8', Image, header=header, data_type='array')

    def diagnostics(self) -> dict[str, Any]:
        """Return the current diagnostics values (the keys of :data:`DIAGNOSTIC_KEYS`)."""
        snap = self.stats.snapshot()
        settings = self._settings
        snap.update({
            'state': self.lifecycle_state, 'stale': self._stale, 'model': self.model_name,
            'device': self.device_name,
            'estimator': settings['estimator'] if settings is not None else '',
            'inference_workers': len(self._estimators),
            'estimator_alive': all(getattr(e, 'alive', True) for e in self._estimators),
            'subject': settings['subject'] if settings is not None else '',
            'target': settings['target'] if settings is not None else '',
        })
        return snap

    def _publish_diagnostics(self) -> None:
        snap = self.diagnostics()
        publisher = getattr(self, '_diagnostics', None)
        if publisher is None:
            return
        errors = snap['estimator_errors'] - self._errors_at_last_diagnostics
        self._errors_at_last_diagnostics = snap['estimator_errors']
        if snap['state'] != 'active':
            level, message = DiagnosticStatus.STALE, snap['state']
        elif not snap['estimator_alive']:  # every later frame would fail too
            level, message = DiagnosticStatus.ERROR, (
                f'the estimator process stopped ({self._last_estimator_error}); deactivate and '
                'activate the node to start it again')
        elif errors:
            level, message = DiagnosticStatus.ERROR, (
                f'the estimator failed {errors} times since the last report: '
                f'{self._last_estimator_error}')
        elif snap['stale']:
            level, message = DiagnosticStatus.WARN, 'no accepted estimate (stale)'
        elif snap['malformed_messages']:
            level, message = DiagnosticStatus.OK, 'running; some input was malformed'
        else:
            level, message = DiagnosticStatus.OK, 'running'
        values = [KeyValue(key=key, value=_format(snap[key])) for key in DIAGNOSTIC_KEYS]
        values += [KeyValue(key=f'malformed_{kind}', value=str(n))
                   for kind, n in sorted(snap['malformed_by_kind'].items())]
        status = DiagnosticStatus(level=level, name=f'{self.get_name()}: reward pipeline',
                                  message=message, hardware_id=self.device_name or 'none',
                                  values=values)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        publisher.publish(array)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.3f}'
    return str(value)


def configure_and_activate(node: RewardNode) -> bool:
    """Run configure then activate; return whether the node ended up active."""
    if node.lifecycle_state == 'unconfigured':
        node.trigger_configure()
    if node.lifecycle_state == 'inactive':
        node.trigger_activate()
    return node.lifecycle_state == 'active'


def run(node_factory: Callable[[], RewardNode], args: list[str] | None = None) -> int:
    """Spin a reward node until shutdown on the executor its ``executor`` parameter names."""
    with ros_session(args):
        node = node_factory()
        executor = make_executor(str(node.get_parameter('executor').value))
        executor.add_node(node)
        try:
            if node.get_parameter('autostart').value and not configure_and_activate(node):
                node.get_logger().error(f'autostart failed: node is {node.lifecycle_state}; '
                                        'waiting for lifecycle transitions')
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            try:
                if node.lifecycle_state in ('inactive', 'active'):
                    node.trigger_shutdown()
            except Exception:  # the context may be gone; free the model anyway
                node.on_shutdown(None)  # type: ignore[arg-type]
            executor.shutdown()
            node.destroy_node()
        return 0


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run spatialvlm_ros reward_node``."""
    run(RewardNode, args)


if __name__ == '__main__':
    main()

"""
The output topics of the ``spatialvlm_reward`` node: one table for the node and the replay.

The live ROS 2 node creates its publishers from :data:`OUTPUT_TOPICS` (relative names under
:data:`NAMESPACE`, so ``/spatialvlm/...`` in the default namespace, ``/<ns>/spatialvlm/...`` in
a namespaced one) and fills ``spatialvlm/result`` with :data:`RESULT_KEYS`; a bag relabelled
offline (``spatialvlm replay --write-bag``, :func:`build_messages`) carries the same topics,
types and field meanings as a recording of the live node (in the default namespace):

| key | topic (node: relative; bag: absolute) | type | content |
|---|---|---|---|
| ``distance_raw`` | ``spatialvlm/distance/raw`` | geometry_msgs/msg/PointStamped | ``x`` = this frame's answer (m), NaN when it held no distance; ``y`` = 1 if it held one, else 0; ``z`` = 0 |
| ``distance`` | ``spatialvlm/distance`` | geometry_msgs/msg/PointStamped | ``x`` = smoothed distance (m), held through invalid answers, NaN before the first; ``y`` = 1 while the smoother is valid (not stale); ``z`` = 0 |
| ``reward`` | ``spatialvlm/reward`` | geometry_msgs/msg/PointStamped | ``x`` = reward (held when invalid; NaN before the first valid one), ``y`` = success (1/0), ``z`` = 1 when this frame's reward is fresh (the answer was accepted), 0 when held |
| ``result`` | ``spatialvlm/result`` | diagnostic_msgs/msg/DiagnosticArray | the frame's record: one status named ``spatialvlm_reward/result`` (level OK / WARN when not valid / STALE), key/values ``stamp_ns``, ``frame_id``, ``answer``, ``reason``, ``distance_raw``, ``distance``, ``reward``, ``success``, ``valid``, ``stale``, ``rejected``, ``latency_ms``, ``subject``, ``target`` |
| ``valid`` | ``spatialvlm/valid`` | std_msgs/msg/Bool | this frame's answer was a distance accepted by the smoother (not an outlier, not stale) |
| ``stale`` | ``spatialvlm/stale`` | std_msgs/msg/Bool | no accepted estimate for ``stale_after_s`` (live: also published by the stale timer when it changes; offline: judged on image stamps) |
| ``answer`` | ``spatialvlm/answer`` | std_msgs/msg/String | the raw answer text (first sample); its stamp is in ``spatialvlm/result`` |
| ``debug_image`` | ``spatialvlm/debug_image`` | sensor_msgs/msg/Image | live only, if ``publish_debug_image``: rgb8 frame with distance / reward drawn (not in :data:`REWARD_TOPICS`, never written offline) |

:data:`REWARD_TOPICS` holds the first seven rows, the outputs of every processed frame (the
replay writes all of them per scored image, in this order, which is the node's publication
order: stamped outputs first). ROS 2 has no stamped scalar, so distances and the reward travel
in geometry_msgs/PointStamped (plottable, keeps the stamp). Every stamped message carries the
source image's header (stamp and ``frame_id``); in a bag every output's timestamp is the image's
stamp (``Bool`` and ``String`` have no header). Offline ``latency_ms`` is the estimator's time
alone (live it is from the image callback to publication, queueing included).
"""  # noqa: E501 - the table reads better unwrapped

from __future__ import annotations

import math
from typing import Any

from spatialvlm_ros.bags.topics import TopicSpec

NODE_NAME = 'spatialvlm_reward'
"""The node's default name (its result status is named ``<node name>/result``)."""
NAMESPACE = 'spatialvlm'
"""The relative namespace of the node's outputs (``/spatialvlm/`` in a bag)."""


def _spec(relative: str, msgtype: str, description: str, encoding: str = '') -> TopicSpec:
    return TopicSpec(f'/{NAMESPACE}/{relative}', msgtype, description, encoding)


POINT_STAMPED = 'geometry_msgs/msg/PointStamped'

REWARD_TOPICS: dict[str, TopicSpec] = {
    'distance_raw': _spec('distance/raw', POINT_STAMPED,
                          "x = this frame's answer (m), nan = no distance; y = 1 if it held one"),
    'distance': _spec('distance', POINT_STAMPED,
                      'x = smoothed distance (m), nan before the first; y = 1 while the '
                      'smoother is valid'),
    'reward': _spec('reward', POINT_STAMPED,
                    'x = reward (held when invalid), y = success (1/0), z = fresh (1/0)'),
    'result': _spec('result', 'diagnostic_msgs/msg/DiagnosticArray',
                    "the frame's record as key/values (RESULT_KEYS)"),
    'valid': _spec('valid', 'std_msgs/msg/Bool',
                   'the answer was a distance accepted by the smoother'),
    'stale': _spec('stale', 'std_msgs/msg/Bool', 'no accepted estimate for stale_after_s'),
    'answer': _spec('answer', 'std_msgs/msg/String', 'raw answer text (first sample)'),
}
"""Output key -> topic of the outputs published for every processed frame (bag names)."""

OUTPUT_TOPICS: dict[str, TopicSpec] = {
    **REWARD_TOPICS,
    'debug_image': _spec('debug_image', 'sensor_msgs/msg/Image',
                         'if publish_debug_image: the frame with distance / reward drawn',
                         'rgb8'),
}
"""Output key -> topic of every publisher the node creates on configure (besides /diagnostics)."""

RESULT_KEYS = ('stamp_ns', 'frame_id', 'answer', 'reason', 'distance_raw', 'distance', 'reward',
               'success', 'valid', 'stale', 'rejected', 'latency_ms', 'subject', 'target')
"""The key/values of ``spatialvlm/result``'s status, in order."""
STATUS_OK, STATUS_WARN, STATUS_STALE = 0, 1, 3  # diagnostic_msgs/DiagnosticStatus levels


def relative_name(key: str) -> str:
    """Return the node's relative topic name of an output key (``'spatialvlm/...'``)."""
    return OUTPUT_TOPICS[key].name.lstrip('/')


def result_level(valid: bool, stale: bool) -> int:
    """Return the ``spatialvlm/result`` status level: STALE, else OK when valid, else WARN."""
    if stale:
        return STATUS_STALE
    return STATUS_OK if valid else STATUS_WARN


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def record_values(record: Any, stamp_ns: int, frame_id: str, subject: str,
                  target: str) -> dict[str, Any]:
    """Return the ``spatialvlm/result`` key/values of one ``FrameRecord`` (:data:`RESULT_KEYS`)."""
    return {
        'stamp_ns': int(stamp_ns), 'frame_id': frame_id, 'answer': record.text,
        'reason': record.reason, 'distance_raw': _nan_if_none(record.distance_raw_m),
        'distance': float(record.distance_m), 'reward': float(record.reward),
        'success': bool(record.success), 'valid': bool(record.reward_fresh),
        'stale': bool(record.stale), 'rejected': bool(record.rejected),
        'latency_ms': float(record.latency_s) * 1e3, 'subject': subject, 'target': target,
    }


def point_fields(values: dict[str, Any], raw_valid: bool,
                 smoother_valid: bool) -> dict[str, tuple[float, float, float]]:
    """
    Return ``key -> (x, y, z)`` of the PointStamped outputs (the table's field meanings).

    :param values: the frame's result key/values (:data:`RESULT_KEYS`).
    :param raw_valid: the answer held a distance.
    :param smoother_valid: the smoother has an estimate that is not stale.
    """
    def flag(value: Any) -> float:
        return 1.0 if value else 0.0

    return {
        'distance_raw': (float(values['distance_raw']), flag(raw_valid), 0.0),
        'distance': (float(values['distance']), flag(smoother_valid), 0.0),
        'reward': (float(values['reward']), flag(values['success']), flag(values['valid'])),
    }


def build_messages(record: Any, header: Any, types: Any, subject: str,
                   target: str) -> dict[str, Any]:
    """
    Return the output messages of one ``FrameRecord``, keyed and ordered as :data:`REWARD_TOPICS`.

    :param header: the source image's ``std_msgs/msg/Header`` (copied into stamped outputs).
    :param types: a mapping msgtype -> message class (a rosbags typestore's ``types``).
    """
    stamp_ns = int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)
    values = record_values(record, stamp_ns, str(header.frame_id), subject, target)
    point, stamped = types['geometry_msgs/msg/Point'], types[POINT_STAMPED]
    boolean, string = types['std_msgs/msg/Bool'], types['std_msgs/msg/String']
    smoother_valid = bool(record.smoothed_valid) and not bool(record.stale)
    out: dict[str, Any] = {}
    for key, (x, y, z) in point_fields(values, bool(record.valid), smoother_valid).items():
        out[key] = stamped(header=header, point=point(x=x, y=y, z=z))
    status = types['diagnostic_msgs/msg/DiagnosticStatus'](
        level=result_level(values['valid'], values['stale']), name=f'{NODE_NAME}/result',
        message=(record.text[:200] or record.reason[:200]), hardware_id=str(header.frame_id),
        values=[types['diagnostic_msgs/msg/KeyValue'](key=k, value=str(v))
                for k, v in values.items()])
    out['result'] = types['diagnostic_msgs/msg/DiagnosticArray'](header=header, status=[status])
    out['valid'] = boolean(data=values['valid'])
    out['stale'] = boolean(data=values['stale'])
    out['answer'] = string(data=str(record.text))
    return {key: out[key] for key in REWARD_TOPICS}

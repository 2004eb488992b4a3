"""
The reward output topics of the ``spatialvlm_reward`` node, as one table for the node and replay.

A bag relabelled offline (``spatialvlm replay --write-bag``) carries the same topics, types and
field conventions as a recording of the live ROS 2 node (``ros/reward_node.py``, outputs under its private namespace
``~/`` = ``/spatialvlm_reward/``):

| key | topic | type | content |
|---|---|---|---|
| ``distance`` | ``/spatialvlm_reward/distance`` | sensor_msgs/msg/Range | ``range`` = smoothed distance (m), held through invalid answers, NaN before the first; ``min_range`` 0, ``max_range`` = ``max_distance_m`` (10), ``field_of_view`` 0, ``radiation_type`` INFRARED (meaningless here) |
| ``distance_raw`` | ``/spatialvlm_reward/distance_raw`` | sensor_msgs/msg/Range | this frame's parsed answer (m); NaN when the answer held no distance (REP 117: NaN = invalid reading) |
| ``reward`` | ``/spatialvlm_reward/reward`` | geometry_msgs/msg/PointStamped | ``x`` = reward (held when invalid; NaN before the first valid one), ``y`` = success (1/0), ``z`` = valid (1/0) |
| ``valid`` | ``/spatialvlm_reward/valid`` | std_msgs/msg/Bool | this frame's answer was a distance accepted by the smoother (not an outlier, not stale) |
| ``stale`` | ``/spatialvlm_reward/stale`` | std_msgs/msg/Bool | no accepted estimate for the smoother's ``stale_after_s`` (offline: judged on image stamps) |
| ``answer`` | ``/spatialvlm_reward/answer`` | std_msgs/msg/String | the raw answer text (first sample) |
| ``result`` | ``/spatialvlm_reward/result`` | diagnostic_msgs/msg/DiagnosticArray | the frame's record: one status, key/values ``stamp_ns``, ``frame_id``, ``answer``, ``reason``, ``distance_raw``, ``distance``, ``reward``, ``success``, ``valid``, ``stale``, ``rejected``, ``latency_ms``, ``subject``, ``target`` |

Every stamped message carries the source image's header (stamp and ``frame_id``); in a bag
every output's timestamp is the image's stamp (``Bool`` and ``String`` have no header). Offline
``latency_ms`` is the estimator's time alone (live it also includes queueing).
"""  # noqa: E501 - the table reads better unwrapped

from __future__ import annotations

import math
from typing import Any

from spatialvlm_ros.bags.topics import TopicSpec

NODE_NAME = 'spatialvlm_reward'
NAMESPACE = f'/{NODE_NAME}'
MAX_DISTANCE_M = 10.0  # the node's default max_distance_m (max_range of the Range outputs)
RANGE_INFRARED = 1  # sensor_msgs/Range.INFRARED

REWARD_TOPICS: dict[str, TopicSpec] = {
    'distance': TopicSpec(f'{NAMESPACE}/distance', 'sensor_msgs/msg/Range',
                          'range = smoothed distance (m), nan before the first'),
    'distance_raw': TopicSpec(f'{NAMESPACE}/distance_raw', 'sensor_msgs/msg/Range',
                              "range = this frame's answer (m), nan = no distance"),
    'reward': TopicSpec(f'{NAMESPACE}/reward', 'geometry_msgs/msg/PointStamped',
                        'x = reward (held when invalid), y = success (1/0), z = valid (1/0)'),
    'valid': TopicSpec(f'{NAMESPACE}/valid', 'std_msgs/msg/Bool',
                       'the answer was a distance accepted by the smoother'),
    'stale': TopicSpec(f'{NAMESPACE}/stale', 'std_msgs/msg/Bool',
                       'no accepted estimate for stale_after_s'),
    'answer': TopicSpec(f'{NAMESPACE}/answer', 'std_msgs/msg/String', 'raw answer text'),
    'result': TopicSpec(f'{NAMESPACE}/result', 'diagnostic_msgs/msg/DiagnosticArray',
                        "the frame's record as key/values"),
}
RESULT_KEYS = ('stamp_ns', 'frame_id', 'answer', 'reason', 'distance_raw', 'distance', 'reward',
               'success', 'valid', 'stale', 'rejected', 'latency_ms', 'subject', 'target')
STATUS_OK, STATUS_WARN, STATUS_STALE = 0, 1, 3  # diagnostic_msgs/DiagnosticStatus levels


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def record_values(record: Any, stamp_ns: int, frame_id: str, subject: str,
                  target: str) -> dict[str, Any]:
    """Return the ``~/result`` key/values of one ``FrameRecord`` (:data:`RESULT_KEYS`)."""
    return {
        'stamp_ns': int(stamp_ns), 'frame_id': frame_id, 'answer': record.text,
        'reason': record.reason, 'distance_raw': _nan_if_none(record.distance_raw_m),
        'distance': float(record.distance_m), 'reward': float(record.reward),
        'success': bool(record.success), 'valid': bool(record.reward_fresh),
        'stale': bool(record.stale), 'rejected': bool(record.rejected),
        'latency_ms': float(record.latency_s) * 1e3, 'subject': subject, 'target': target,
    }


def build_messages(record: Any, header: Any, types: Any, subject: str, target: str,
                   max_distance_m: float = MAX_DISTANCE_M) -> dict[str, Any]:
    """
    Return the output messages of one ``FrameRecord``, keyed as :data:`REWARD_TOPICS`.

    :param header: the source image's ``std_msgs/msg/Header`` (copied into stamped outputs).
    :param types: a mapping msgtype -> message class (a rosbags typestore's ``types``).
    """
    stamp_ns = int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)
    values = record_values(record, stamp_ns, str(header.frame_id), subject, target)
    rng, point = types['sensor_msgs/msg/Range'], types['geometry_msgs/msg/Point']
    boolean, string = types['std_msgs/msg/Bool'], types['std_msgs/msg/String']
    out: dict[str, Any] = {}
    for key in ('distance', 'distance_raw'):
        out[key] = rng(header=header, radiation_type=RANGE_INFRARED, field_of_view=0.0,
                       min_range=0.0, max_range=float(max_distance_m), range=values[key],
                       variance=0.0)  # Jazzy's Range has variance (default 0)
    out['reward'] = types['geometry_msgs/msg/PointStamped'](
        header=header, point=point(x=values['reward'], y=1.0 if values['success'] else 0.0,
                                   z=1.0 if values['valid'] else 0.0))
    out['valid'] = boolean(data=values['valid'])
    out['stale'] = boolean(data=values['stale'])
    out['answer'] = string(data=str(record.text))
    level = STATUS_STALE if values['stale'] else (STATUS_OK if values['valid'] else STATUS_WARN)
    status = types['diagnostic_msgs/msg/DiagnosticStatus'](
        level=level, name=f'{NODE_NAME}/result',
        message=(record.text[:200] or record.reason[:200]), hardware_id=str(header.frame_id),
        values=[types['diagnostic_msgs/msg/KeyValue'](key=k, value=str(v))
                for k, v in values.items()])
    out['result'] = types['diagnostic_msgs/msg/DiagnosticArray'](header=header, status=[status])
    return out

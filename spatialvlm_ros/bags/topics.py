"""
The rosbag2 topic layout of a recorded episode, kept as data.

| topic | type | content |
|---|---|---|
| ``/camera/color/image_raw`` | sensor_msgs/msg/Image | rgb8, frame_id ``camera_color_optical_frame`` |
| ``/camera/color/camera_info`` | sensor_msgs/msg/CameraInfo | plumb_bob, zero distortion, K, R = I, P = [K 0] |
| ``/camera/depth/image_raw`` | sensor_msgs/msg/Image | 32FC1 metres aligned to colour (same frame_id), nan = no reading |
| ``/ground_truth/segmentation`` | sensor_msgs/msg/Image | 16UC1: 0 = background, else object index + 1 |
| ``/ground_truth/gripper_pose`` | geometry_msgs/msg/PoseStamped | grasp point in the camera optical frame; orientation identity |
| ``/ground_truth/object_poses`` | geometry_msgs/msg/PoseArray | camera optical frame; per object its oriented-box centre and rotation, in the order of the metadata's ``objects`` list |
| ``/ground_truth/distance/centre`` | sensor_msgs/msg/JointState | name = object ids, position = gripper-to-centre distance (m) |
| ``/ground_truth/distance/surface`` | sensor_msgs/msg/JointState | name = object ids, position = gripper-to-surface distance (m) |

JointState is used for the distances because it is the standard message carrying a header plus
parallel named float arrays (``name``/``position``); ``velocity`` and ``effort`` stay empty.

Every message of one frame carries the frame's stamp in its header and as the bag timestamp.
Per-bag metadata (see :func:`episode_metadata`) is JSON stored under :data:`CUSTOM_DATA_KEY` in
``metadata.yaml``'s ``custom_data`` and as the sidecar :data:`SIDECAR_NAME` in the bag folder.
"""  # noqa: E501 - the table reads better unwrapped

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialvlm_ros.core.datatypes import Episode

FORMAT_VERSION = 1
"""Version of this layout and of the metadata JSON; bump on incompatible change."""

CAMERA_FRAME_ID = 'camera_color_optical_frame'
CUSTOM_DATA_KEY = 'spatialvlm_episode'
SIDECAR_NAME = 'episode.json'


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the layout: name, ROS 2 message type and what it carries."""

    name: str
    msgtype: str
    description: str
    encoding: str = ''  # for sensor_msgs/Image topics

    def __post_init__(self) -> None:
        if not self.name.startswith('/'):
            raise ValueError(f'topic names must be absolute, got {self.name!r}')
        if self.msgtype.count('/') != 2:
            raise ValueError(f'msgtype must be pkg/msg/Name, got {self.msgtype!r}')


# key -> spec; the keys are used in code and in the metadata's topic map.
TOPICS: dict[str, TopicSpec] = {
    'rgb': TopicSpec('/camera/color/image_raw', 'sensor_msgs/msg/Image', 'colour image', 'rgb8'),
    'camera_info': TopicSpec('/camera/color/camera_info', 'sensor_msgs/msg/CameraInfo',
                             'plumb_bob, zero distortion, K, R = I, P = [K 0]'),
    'depth': TopicSpec('/camera/depth/image_raw', 'sensor_msgs/msg/Image',
                       'metres aligned to colour, nan = no reading', '32FC1'),
    'segmentation': TopicSpec('/ground_truth/segmentation', 'sensor_msgs/msg/Image',
                              '0 = background, else object index + 1', '16UC1'),
    'gripper_pose': TopicSpec('/ground_truth/gripper_pose', 'geometry_msgs/msg/PoseStamped',
                              'grasp point in the camera optical frame'),
    'object_poses': TopicSpec('/ground_truth/object_poses', 'geometry_msgs/msg/PoseArray',
                              'oriented-box centre and rotation per object, camera frame'),
    'distance_centre': TopicSpec('/ground_truth/distance/centre', 'sensor_msgs/msg/JointState',
                                 'name = object id, position = distance to centre (m)'),
    'distance_surface': TopicSpec('/ground_truth/distance/surface',
                                  'sensor_msgs/msg/JointState',
                                  'name = object id, position = distance to surface (m)'),
}


def topic_map() -> dict[str, dict[str, str]]:
    """Return the layout as plain JSON-ready data: key -> {topic, type, encoding?}."""
    out: dict[str, dict[str, str]] = {}
    for key, spec in TOPICS.items():
        entry = {'topic': spec.name, 'type': spec.msgtype}
        if spec.encoding:
            entry['encoding'] = spec.encoding
        out[key] = entry
    return out


def episode_metadata(episode: Episode) -> dict[str, Any]:
    """Return the per-bag metadata of ``episode`` as JSON (objects of the first frame)."""
    if not episode.frames:
        raise ValueError('episode has no frames')
    first = episode.frames[0]
    k = first.intrinsics
    return {
        'format_version': FORMAT_VERSION,
        'seed': int(episode.seed),
        'rate_hz': float(episode.rate_hz),
        'scenario': episode.scenario,
        'target_id': episode.target_id,
        'frame_count': len(episode.frames),
        'frame_id': CAMERA_FRAME_ID,
        'intrinsics': {'fx': k.fx, 'fy': k.fy, 'cx': k.cx, 'cy': k.cy,
                       'width': k.width, 'height': k.height},
        'T_world_cam': np.asarray(first.T_world_cam, dtype=float).tolist(),
        'objects': [
            {
                'object_id': obj.object_id,
                'category': obj.category,
                'attributes': dict(obj.attributes),
                'captions': list(obj.captions),
                'half_extents': np.asarray(obj.obb_world.half_extents, dtype=float).tolist(),
            }
            for obj in first.objects
        ],
        'topics': topic_map(),
        'extra': _jsonable(episode.metadata),
    }


def _jsonable(value: Any) -> Any:
    """Convert numpy values inside plain containers into JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

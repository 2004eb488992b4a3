"""
``spatialvlm_sim_camera``: a simulated episode published live, like a camera on a robot.

On start the node renders an episode (:func:`spatialvlm_ros.sim.episode.generate_episode`;
seed, scenario, size, frames from its parameters), builds every message once, then publishes
one frame per timer tick at ``rate`` Hz, once or looping. Each tick stamps all of the frame's
messages with the node clock's *now* (so stamps are consistent across topics and increase
across loops) and publishes, in this order, the ground truth, the camera info, the depth and
last the colour image (so ground truth is out before the frame it belongs to):

| topic | type | content |
|---|---|---|
| ``/ground_truth/distance/centre`` | sensor_msgs/JointState | name = object ids (the episode's target first), position = gripper-to-centre metres |
| ``/ground_truth/distance/surface`` | sensor_msgs/JointState | same, gripper-to-surface metres |
| ``/camera/color/camera_info`` | sensor_msgs/CameraInfo | plumb_bob, zero distortion, K, R = I, P = [K 0] |
| ``/camera/depth/image_raw`` | sensor_msgs/Image | 32FC1 metres, nan = no reading (if ``publish_depth``) |
| ``/camera/color/image_raw`` | sensor_msgs/Image | rgb8 |
| ``/ground_truth/episode`` | std_msgs/String | JSON: seed, scenario, target_id, target_caption, frames, rate (transient local) |

Topic names and frame_id are those of the bag layout (:mod:`spatialvlm_ros.bags.topics`); remap
them as usual. Frames are rendered at ``min(max(rate, 10), 30)`` Hz (the simulator's range):
above 30 Hz the episode plays faster than real time. Output QoS: ``reliability`` (default
reliable, which best-effort and reliable subscribers both accept), depth 5.
"""  # noqa: E501 - the table reads better unwrapped

from __future__ import annotations

import json
from typing import Any

from builtin_interfaces.msg import Time
import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState, RegionOfInterest

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.imageconv import array_to_image
from spatialvlm_ros.core.datatypes import Episode, Frame
from spatialvlm_ros.ros.conversions import (
    message_class,
    ns_to_stamp,
    RELIABILITIES,
    ros_session,
)

NODE_NAME = 'spatialvlm_sim_camera'
EPISODE_TOPIC = '/ground_truth/episode'
Header = message_class('std_msgs/msg/Header')
String = message_class('std_msgs/msg/String')


def _range(low: float, high: float, integer: bool = False) -> dict[str, Any]:
    if integer:
        return {'integer_range': [IntegerRange(from_value=int(low), to_value=int(high),
                                               step=1)]}
    return {'floating_point_range': [FloatingPointRange(from_value=float(low),
                                                        to_value=float(high), step=0.0)]}


# name -> (default, description, extra descriptor fields); all read-only (set at start).
PARAMETERS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    'seed': (0, 'Episode seed.', _range(0, 2**31 - 1, True)),
    'scenario': ('approach', 'Episode scenario (spatialvlm_ros.sim.episode.SCENARIOS).', {}),
    'rate': (15.0, 'Publishing rate in Hz (frames are rendered at min(max(rate, 10), 30)).',
             _range(0.5, 240.0)),
    'width': (320, 'Image width in pixels.', _range(16, 4096, True)),
    'height': (240, 'Image height in pixels.', _range(16, 4096, True)),
    'num_frames': (60, 'Frames in the episode.', _range(10, 10000, True)),
    'loop': (True, 'Start over after the last frame (else publish once).', {}),
    'publish_depth': (True, 'Publish the depth image.', {}),
    'reliability': ('reliable', 'Output reliability: best_effort or reliable.', {}),
}


def frame_messages(frame: Frame, frame_id: str, target_id: str) -> dict[str, Any]:
    """Return the rclpy messages of one frame (headers filled in at publication)."""
    empty = Header(frame_id=frame_id)
    k = frame.intrinsics
    kmat = k.K
    msgs: dict[str, Any] = {
        'rgb': array_to_image(frame.rgb, 'rgb8', Image, header=empty, data_type='array'),
        'depth': array_to_image(np.asarray(frame.depth, dtype=np.float32), '32FC1', Image,
                                header=Header(frame_id=frame_id), data_type='array'),
        'camera_info': CameraInfo(
            header=Header(frame_id=frame_id), height=k.height, width=k.width,
            distortion_model='plumb_bob', d=[0.0] * 5, k=kmat.reshape(-1).tolist(),
            r=np.eye(3).reshape(-1).tolist(),
            p=np.hstack([kmat, np.zeros((3, 1))]).reshape(-1).tolist(),
            roi=RegionOfInterest()),
    }
    for key, distances in (('distance_centre', frame.distance_centre),
                           ('distance_surface', frame.distance_surface)):
        names = sorted(distances, key=lambda name: name != target_id)  # target first
        msgs[key] = JointState(header=Header(frame_id=frame_id), name=names,
                               position=[float(distances[n]) for n in names])
    return msgs


class SimCameraNode(Node):
    """
    Publish a simulated episode live (see the module docstring).

    :param episode: an episode to publish instead of rendering one from the parameters
        (tests use a synthetic one).
    :param kwargs: passed to ``rclpy.node.Node``.
    """

    def __init__(self, episode: Episode | None = None, *, node_name: str = NODE_NAME,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description, extra) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=True, **extra))
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        if p['reliability'] not in RELIABILITIES:
            raise ValueError(f'reliability must be one of {RELIABILITIES}, '
                             f'got {p["reliability"]!r}')
        self.rate = float(p['rate'])
        self.loop = bool(p['loop'])
        self.publish_depth = bool(p['publish_depth'])
        if episode is None:
            episode = self._render(p)
        self.episode = episode
        frame_id = layout.CAMERA_FRAME_ID
        self._frames = [frame_messages(f, frame_id, episode.target_id) for f in episode.frames]
        qos = QoSProfile(depth=5, reliability=(
            ReliabilityPolicy.RELIABLE if p['reliability'] == 'reliable'
            else ReliabilityPolicy.BEST_EFFORT))
        self._pubs = {key: self.create_publisher(type(msg), layout.TOPICS[key].name, qos)
                      for key, msg in self._frames[0].items()}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._episode_pub = self.create_publisher(String, EPISODE_TOPIC, latched)
        self._episode_pub.publish(String(data=json.dumps(self.episode_info())))
        self.index = 0
        self.published = 0
        self.done = False
        self._timer = self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(
            f'publishing {len(self._frames)} frames at {self.rate:g} Hz '
            f'({"looping" if self.loop else "once"}); target {episode.target_id!r}')

    def _render(self, p: dict[str, Any]) -> Episode:
        from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

        config = EpisodeConfig(seed=int(p['seed']), scenario=str(p['scenario']),
                               rate_hz=min(max(float(p['rate']), 10.0), 30.0),
                               width=int(p['width']), height=int(p['height']),
                               num_frames=int(p['num_frames']))
        self.get_logger().info(f'rendering {config.frames} frames of {config.scenario!r} '
                               f'(seed {config.seed}, {config.width}x{config.height})')
        return generate_episode(config)

    def episode_info(self) -> dict[str, Any]:
        """Return what ``/ground_truth/episode`` announces."""
        meta = self.episode.metadata
        return {'seed': self.episode.seed, 'scenario': self.episode.scenario,
                'target_id': self.episode.target_id,
                'target_caption': meta.get('target_caption', ''),
                'target_captions': list(self.episode.target_captions),
                'frames': len(self.episode.frames), 'rate_hz': self.rate,
                'frame_id': layout.CAMERA_FRAME_ID}

    def _tick(self) -> None:
        if self.index >= len(self._frames):
            if not self.loop:
                if not self.done:
                    self.done = True
                    self.get_logger().info('episode published')
                return
            self.index = 0
        msgs = self._frames[self.index]
        stamp = ns_to_stamp(self.get_clock().now().nanoseconds, Time)
        for key in ('distance_centre', 'distance_surface', 'camera_info', 'depth', 'rgb'):
            if key == 'depth' and not self.publish_depth:
                continue
            msgs[key].header.stamp = stamp
            self._pubs[key].publish(msgs[key])
        self.index += 1
        self.published += 1


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run spatialvlm_ros sim_camera_node``."""
    with ros_session(args):
        node = SimCameraNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()
            node.destroy_node()


if __name__ == '__main__':
    main()

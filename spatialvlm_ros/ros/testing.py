"""
Helpers for tests and benchmarks of the nodes: fake estimators, test messages, a collector.

:class:`FakeEstimator` answers from a function of the image and phrases after an optional
delay, so a 'slow model' costs no CPU. :class:`~spatialvlm_ros.ros.harness.RosHarness` (an
rclpy context with a background executor) is re-exported here.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import numpy as np
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image

from spatialvlm_ros.bags.imageconv import array_to_image
from spatialvlm_ros.model.estimator import check_image, DistanceEstimate
from spatialvlm_ros.ros.conversions import message_class, ns_to_stamp
from spatialvlm_ros.ros.harness import RosHarness

__all__ = ['Collector', 'FakeEstimator', 'make_compressed', 'make_image', 'pixel_distance',
           'result_values', 'RosHarness', 'setup_test_env', 'wait_for_subscribers']


def setup_test_env() -> None:
    """Set the test defaults: localhost discovery, logs under /tmp/roslog."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('ROS_LOG_DIR', '/tmp/roslog')
    os.makedirs(os.environ['ROS_LOG_DIR'], exist_ok=True)


class FakeEstimator:
    """
    A distance estimator with known answers and an optional delay (a slow 'model').

    :param value: ``value(image, subject, target) -> metres or None`` (None = an answer
        without a distance); default: the image's top-left red value / 100.
    :param delay_s: seconds each ``estimate`` sleeps (no CPU used).
    """

    name = 'fake'
    device = 'cpu'

    def __init__(self, value: Callable[[np.ndarray, str, str], float | None] | None = None,
                 delay_s: float = 0.0) -> None:
        self.value = value or pixel_distance
        self.delay_s = delay_s
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    def estimate(self, image: np.ndarray, subject: str, target: str) -> DistanceEstimate:
        """Return the known answer after the delay."""
        start = time.perf_counter()
        image = check_image(image)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        self.calls.append((subject, target))
        metres = self.value(image, subject, target)
        text = ('I cannot tell.' if metres is None
                else f'{subject} is {metres:.2f} m from {target}.')
        return DistanceEstimate(metres, text, [text], time.perf_counter() - start,
                                '' if metres is not None else 'no distance in the answer')

    def close(self) -> None:
        """Mark the estimator closed."""
        self.closed = True


def pixel_distance(image: np.ndarray, subject: str, target: str) -> float:
    """Return the distance a test frame encodes: its top-left red value / 100 metres."""
    return float(image[0, 0, 0]) / 100.0


def header(stamp_ns: int, frame_id: str = 'camera_color_optical_frame') -> Any:
    """Return a std_msgs/Header."""
    from builtin_interfaces.msg import Time

    header_type = message_class('std_msgs/msg/Header')
    return header_type(stamp=ns_to_stamp(stamp_ns, Time), frame_id=frame_id)


def make_image(value: int, stamp_ns: int, width: int = 64, height: int = 48,
               frame_id: str = 'camera_color_optical_frame') -> Image:
    """Return an rgb8 Image filled with ``value`` (it encodes ``value / 100`` metres)."""
    array = np.full((height, width, 3), value, dtype=np.uint8)
    return array_to_image(array, 'rgb8', Image, header=header(stamp_ns, frame_id),
                          data_type='array')


def make_compressed(value: int, stamp_ns: int, width: int = 64, height: int = 48) -> Any:
    """Return a jpeg CompressedImage filled with ``value``."""
    from spatialvlm_ros.bags.imageconv import compressed_to_fields

    array = np.full((height, width, 3), value, dtype=np.uint8)
    fields = compressed_to_fields(array, 'jpeg', header=header(stamp_ns), data_type='array')
    return CompressedImage(**fields)


class Collector:
    """Record every message of some topics (with receipt time) through a plain node."""

    def __init__(self, node: Any, topics: dict[str, type], qos: QoSProfile | None = None) -> None:
        self.messages: dict[str, list[tuple[float, Any]]] = {name: [] for name in topics}
        self._lock = threading.Lock()
        self.subscriptions = [
            node.create_subscription(msg_type, name, self._callback(name), qos or QoSProfile(
                depth=100)) for name, msg_type in topics.items()]

    def _callback(self, name: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self._lock:
                self.messages[name].append((time.monotonic(), msg))
        return store

    def get(self, name: str) -> list[Any]:
        """Return the messages of ``name`` received so far."""
        with self._lock:
            return [msg for _, msg in self.messages[name]]

    def count(self, name: str) -> int:
        """Return how many messages of ``name`` arrived."""
        with self._lock:
            return len(self.messages[name])

    def clear(self) -> None:
        """Forget everything received."""
        with self._lock:
            for values in self.messages.values():
                values.clear()


def wait_for_subscribers(publisher: Any, count: int, timeout: float) -> bool:
    """Return True once ``publisher`` has at least ``count`` matched subscriptions."""
    return RosHarness.wait_for(lambda: publisher.get_subscription_count() >= count, timeout)


def result_values(msg: Any) -> dict[str, str]:
    """Return the key/values of a ``spatialvlm/result`` DiagnosticArray's first status."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}

"""
Message helpers for the nodes: ROS session, QoS, stamps, and checked image decoding.

Images are checked in two steps so a subscription callback stays cheap: :func:`precheck_image`
looks only at the declared fields (encoding, size, step, data length; O(1), no copy) and is
run when a message arrives; :func:`decode_colour` / :func:`decode_depth` then do the real
conversion (via :mod:`spatialvlm_ros.bags.imageconv`) when a frame is processed. Both raise or
return reasons instead of crashing, so malformed input is counted, not fatal.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from typing import Any, Iterator

import numpy as np
import rclpy
from rclpy.qos import (
    HistoryPolicy,
    qos_profile_sensor_data,
    QoSProfile,
    ReliabilityPolicy,
)

from spatialvlm_ros.bags.imageconv import (
    colour_array,
    compressed_to_array,
    depth_to_metres,
    ENCODINGS,
    image_to_array,
    ImageConversionError,
)
from spatialvlm_ros.core.datatypes import CameraIntrinsics

RELIABILITIES = ('best_effort', 'reliable')
COMPRESSED_NAMES = ('jpeg', 'jpg', 'png')


@contextlib.contextmanager
def ros_session(args: list[str] | None = None) -> Iterator[None]:
    """
    Initialise rclpy for a ``main()`` and shut it down on exit (a ``with`` block).

    rclpy releases after Jazzy return a context manager from ``rclpy.init`` (the
    ``with rclpy.init(args=args):`` idiom); Jazzy's (7.1) returns None, so the equivalent
    try/finally is used there.
    """
    handle = rclpy.init(args=args)
    if handle is not None and hasattr(handle, '__exit__'):
        with handle:
            yield
        return
    try:
        yield
    finally:
        rclpy.try_shutdown()


def message_class(msgtype: str) -> type:
    """
    Return the rclpy message class of ``'pkg/msg/Name'``.

    Also used for std_msgs types: a plain ``from std_msgs.msg import ...`` cannot satisfy both
    ruff's first-party section and flake8-import-order's alphabetical google order.
    """
    package, kind, name = msgtype.split('/')
    cls: type = getattr(importlib.import_module(f'{package}.{kind}'), name)
    return cls


def input_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Return the sensor-data QoS profile with ``depth`` and the given reliability."""
    if reliability not in RELIABILITIES:
        raise ValueError(f'reliability must be one of {RELIABILITIES}, got {reliability!r}')
    policy = (ReliabilityPolicy.RELIABLE if reliability == 'reliable'
              else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=qos_profile_sensor_data.durability)


def stamp_to_ns(stamp: Any) -> int:
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, factory: Any) -> Any:
    """Return ``factory(sec=..., nanosec=...)`` for ``ns`` nanoseconds (a Time message)."""
    ns = int(ns)
    return factory(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def precheck_image(msg: Any, max_bytes: int) -> str:
    """
    Return why a sensor_msgs/Image cannot be decoded ('' if its declared fields are sane).

    Checks only the header fields and the data length (no copy): known encoding, non-zero
    size, at most ``max_bytes``, ``step`` at least a row, and enough data for every row.
    """
    spec = ENCODINGS.get(str(msg.encoding))
    if spec is None:
        return f'unknown image encoding {str(msg.encoding)[:40]!r}'
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        return f'image has zero size: {width}x{height}'
    row_bytes = width * spec.channels * spec.itemsize
    if height * max(row_bytes, step) > max_bytes:
        return f'image of {width}x{height} exceeds the limit of {max_bytes} bytes'
    if step < row_bytes:
        return f'step {step} is smaller than a row of {row_bytes} bytes ({msg.encoding})'
    size = len(msg.data)
    needed = (height - 1) * step + row_bytes
    if size < needed:
        return f'image data has {size} bytes, expected {height * step} for {width}x{height}'
    return ''


def precheck_compressed(msg: Any, max_bytes: int) -> str:
    """Return why a sensor_msgs/CompressedImage cannot be decoded ('' if it may be)."""
    fmt = str(msg.format).lower()
    if 'compresseddepth' in fmt or not any(name in fmt for name in COMPRESSED_NAMES):
        return f'unsupported compressed format {str(msg.format)[:40]!r}'
    size = len(msg.data)
    if size == 0:
        return 'compressed image has no data'
    if size > max_bytes:
        return f'compressed image of {size} bytes exceeds the limit of {max_bytes} bytes'
    return ''


def decode_colour(msg: Any, compressed: bool, max_bytes: int) -> np.ndarray:
    """
    Decode an Image or CompressedImage into RGB ``uint8`` ``(H, W, 3)``.

    Colour encodings are reordered to RGB; mono8 is repeated into three channels; anything
    else raises :class:`ImageConversionError`.
    """
    array = (compressed_to_array(msg, max_bytes=max_bytes) if compressed
             else image_to_array(msg, max_bytes=max_bytes))
    return colour_array(array)


def decode_depth(msg: Any, max_bytes: int) -> np.ndarray:
    """
    Decode a depth Image (32FC1 metres or 16UC1/mono16 millimetres) into float32 metres.

    ``nan`` marks no reading. An image with no finite positive reading at all raises
    :class:`ImageConversionError` (a NaN-only depth image is useless, so it is malformed).
    """
    array = image_to_array(msg, max_bytes=max_bytes)
    metres = depth_to_metres(array, str(msg.encoding))
    if not np.isfinite(metres).any():
        raise ImageConversionError(f'depth image {metres.shape[1]}x{metres.shape[0]} has no '
                                   'valid reading (all nan, inf or <= 0)')
    return metres


def intrinsics_from_info(msg: Any) -> CameraIntrinsics:
    """Return the CameraIntrinsics of a sensor_msgs/CameraInfo (K, width, height)."""
    k = np.asarray(msg.k, dtype=np.float64)
    if k.size != 9 or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
        raise ValueError(f'camera_info has an invalid K matrix: {k.tolist()}')
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ValueError(f'camera_info has zero size: {width}x{height}')
    return CameraIntrinsics.from_matrix(k.reshape(3, 3), width, height)


def finite_or_nan(value: float | None) -> float:
    """Return ``value`` as a float, ``nan`` when it is None or not finite."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan

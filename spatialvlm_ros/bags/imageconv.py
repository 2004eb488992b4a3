"""
sensor_msgs/Image and sensor_msgs/CompressedImage <-> numpy, without ROS.

Functions take message-like objects by duck typing (``header``, ``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data`` for Image; ``header``, ``format``, ``data``
for CompressedImage), so the same code serves rosbags' typestore classes and rclpy messages.
Building goes the other way through :func:`image_to_fields` / :func:`compressed_to_fields`,
which return the keyword arguments of a message constructor; :func:`array_to_image` calls a
constructor you pass in.

Output formats follow ``spatialvlm_ros.core.datatypes``: colour encodings (rgb8, bgr8, rgba8,
bgra8) decode to RGB ``uint8`` ``(H, W, 3)`` (alpha dropped); mono8 to ``uint8`` ``(H, W)``; mono16
and 16UC1 to ``uint16``; 16SC1 to ``int16``; 32SC1 to ``int32``; 32FC1 to ``float32``. Returned
arrays are always copies, never views of the message buffer.

Backend: a real ``cv_bridge`` is used for raw images when one is importable *and* round-trips
a tiny rgb8, 16UC1 and 32FC1 image (the PyPI ``cv-bridge`` fails with numpy 2 / OpenCV 5 and
for 16UC1); otherwise, the numpy implementation here. :func:`backend` says which. Validation
(step, size, limits) is always done here, so errors do not depend on the backend.
"""

from __future__ import annotations

import array as pyarray
from dataclasses import dataclass
import functools
import sys
from typing import Any, Callable

import numpy as np


class ImageConversionError(ValueError):
    """A message cannot be converted: malformed, unsupported or not what was asked for."""


@dataclass(frozen=True)
class Encoding:
    """Layout of one raw image encoding: channels, element dtype, and colour channel order."""

    channels: int
    dtype: str
    order: str = ''  # 'rgb', 'bgr', 'rgba', 'bgra' for colour, '' otherwise

    def __post_init__(self) -> None:
        if self.channels not in (1, 3, 4):
            raise ValueError(f'channels must be 1, 3 or 4, got {self.channels}')
        if len(self.order) not in (0, self.channels):
            raise ValueError(f'order {self.order!r} does not match {self.channels} channels')

    @property
    def itemsize(self) -> int:
        """Bytes per channel element."""
        return np.dtype(self.dtype).itemsize


# The supported raw encodings (names as in sensor_msgs/image_encodings.hpp).
ENCODINGS: dict[str, Encoding] = {
    'rgb8': Encoding(3, 'uint8', 'rgb'),
    'bgr8': Encoding(3, 'uint8', 'bgr'),
    'rgba8': Encoding(4, 'uint8', 'rgba'),
    'bgra8': Encoding(4, 'uint8', 'bgra'),
    'mono8': Encoding(1, 'uint8'),
    '8UC1': Encoding(1, 'uint8'),
    'mono16': Encoding(1, 'uint16'),
    '16UC1': Encoding(1, 'uint16'),
    '16SC1': Encoding(1, 'int16'),
    '32SC1': Encoding(1, 'int32'),
    '32FC1': Encoding(1, 'float32'),
}

# Requested encodings that accept several message encodings (same decoded array type).
_COMPATIBLE: dict[str, frozenset[str]] = {
    'rgb8': frozenset({'rgb8', 'bgr8', 'rgba8', 'bgra8'}),
    'mono8': frozenset({'mono8', '8UC1'}),
    '8UC1': frozenset({'mono8', '8UC1'}),
    'mono16': frozenset({'mono16', '16UC1'}),
    '16UC1': frozenset({'mono16', '16UC1'}),
}

COMPRESSED_FORMATS: tuple[str, ...] = ('jpeg', 'png')

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest image (decoded bytes) accepted by default; guards against absurd headers."""


def backend() -> str:
    """Name the raw-image backend in use: ``'cv_bridge'`` or ``'numpy'``."""
    return 'cv_bridge' if _cv_bridge() is not None else 'numpy'


@functools.lru_cache(maxsize=1)
def _cv_bridge() -> Any | None:
    """Return a working ``CvBridge`` instance, or None (probed once, lazily)."""
    try:
        from cv_bridge import CvBridge
    except Exception:
        return None
    try:
        bridge = CvBridge()
        probes = [
            (np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), 'rgb8'),
            (np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000, '16UC1'),
            (np.linspace(0.5, 3.0, 6, dtype=np.float32).reshape(2, 3), '32FC1'),
        ]
        for probe, encoding in probes:
            msg = bridge.cv2_to_imgmsg(probe, encoding=encoding)
            back = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding='passthrough'))
            if back.dtype != probe.dtype or not np.array_equal(back, probe):
                return None
    except Exception:
        return None
    return bridge


def _buffer(data: Any) -> np.ndarray:
    """View the message's data as flat uint8 (numpy array, bytes or array.array)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_size(height: int, width: int, row_bytes: int, max_bytes: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image has zero size: {width}x{height}')
    if height * row_bytes > max_bytes:
        raise ImageConversionError(
            f'image of {width}x{height} ({height * row_bytes} bytes) exceeds the limit of '
            f'{max_bytes} bytes')


def check_requested(encoding: str, requested: str | None) -> None:
    """Raise ``ImageConversionError`` if a message ``encoding`` cannot serve ``requested``."""
    if requested is None or requested == encoding:
        return
    if encoding in _COMPATIBLE.get(requested, ()):
        return
    raise ImageConversionError(f'image has encoding {encoding!r}, but {requested!r} was requested')


def image_to_array(msg: Any, requested: str | None = None, *,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """
    Decode a sensor_msgs/Image-like message into a new numpy array.

    :param msg: object with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``,
        ``data``.
    :param requested: if given, the encoding the caller expects (``'rgb8'`` accepts any
        colour encoding, ``'16UC1'`` and ``'mono16'`` are interchangeable).
    :param max_bytes: largest accepted ``height * step``.
    :returns: RGB ``uint8`` ``(H, W, 3)`` for colour, else ``(H, W)`` in the encoding's dtype.
    :raises ImageConversionError: unknown encoding, zero or huge size, step smaller than a
        row, data shorter than ``height * step``, or an encoding other than ``requested``.
    """
    encoding = str(msg.encoding)
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise ImageConversionError(
            f'unknown image encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    check_requested(encoding, requested)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * spec.channels * spec.itemsize
    _check_size(height, width, max(row_bytes, step), max_bytes)
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than a row of {width} x {spec.channels} x '
            f'{spec.itemsize} = {row_bytes} bytes ({encoding})')
    buf = _buffer(msg.data)
    # The last row need not be padded (cv_bridge and image_transport accept this too).
    needed = (height - 1) * step + row_bytes
    if buf.size < needed:
        raise ImageConversionError(
            f'image data has {buf.size} bytes, expected {height * step} '
            f'({height} rows x step {step}) for {width}x{height} {encoding}')
    bridge = _cv_bridge()
    if bridge is not None and not int(msg.is_bigendian):
        try:
            out = np.array(bridge.imgmsg_to_cv2(msg, desired_encoding='passthrough'))
        except Exception:
            out = None
        if out is not None:
            return _to_output(out, spec)
    # numpy path: a strided view over the rows (handles step padding), then one copy.
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes),
                                           strides=(step, 1), writeable=False)
    big = bool(int(msg.is_bigendian))
    dtype = np.dtype(spec.dtype).newbyteorder('>' if big else '<')
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, spec.channels)
    native = pixels.astype(np.dtype(spec.dtype), copy=False)
    return _to_output(native, spec)


def _to_output(pixels: np.ndarray, spec: Encoding) -> np.ndarray:
    """Reorder colour channels to RGB, drop alpha, squeeze mono; always a fresh array."""
    if spec.channels == 1:
        return np.array(pixels.reshape(pixels.shape[0], pixels.shape[1]), dtype=spec.dtype)
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], spec.channels)
    index = [spec.order.index(c) for c in 'rgb']
    return np.ascontiguousarray(pixels[:, :, index], dtype=np.uint8)


def image_to_fields(array: np.ndarray, encoding: str, *, header: Any = None,
                    data_type: str = 'numpy') -> dict[str, Any]:
    """
    Keyword arguments of a sensor_msgs/Image holding ``array`` in ``encoding``.

    :param array: RGB ``uint8`` ``(H, W, 3)`` for colour encodings (converted to
        bgr/rgba/bgra as needed, alpha 255), else ``(H, W)`` castable to the encoding's dtype.
    :param encoding: one of :data:`ENCODINGS`.
    :param header: included as ``header`` when given.
    :param data_type: ``'numpy'`` (uint8 array, for rosbags), ``'array'``
        (``array.array('B')``, fast for rclpy messages) or ``'bytes'``.
    :returns: dict with ``height``, ``width``, ``encoding``, ``is_bigendian`` (native order),
        ``step`` (unpadded) and ``data`` (a copy), plus ``header`` if given.
    """
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise ImageConversionError(
            f'unknown image encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    array = np.asarray(array)
    if spec.channels == 1:
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim != 2:
            raise ImageConversionError(
                f'{encoding} needs an (H, W) array, got shape {array.shape}')
        target = np.dtype(spec.dtype)
        if array.dtype != target and not np.can_cast(array.dtype, target, 'same_kind'):
            raise ImageConversionError(f'{encoding} needs {target}, got {array.dtype}')
        if array.dtype != target and array.size:  # a narrowing cast must not wrap values
            info = np.iinfo(target) if target.kind in 'iu' else np.finfo(target)
            finite = array[np.isfinite(array)] if array.dtype.kind == 'f' else array
            if finite.size and (finite.min() < info.min or finite.max() > info.max):
                raise ImageConversionError(
                    f'{encoding} ({target}) holds [{info.min}, {info.max}]; the image has '
                    f'values from {finite.min()} to {finite.max()}')
        pixels = array.astype(target)
    else:
        if array.ndim != 3 or array.shape[2] != 3:
            raise ImageConversionError(
                f'{encoding} needs an RGB (H, W, 3) array, got shape {array.shape}')
        if array.dtype != np.uint8:
            raise ImageConversionError(f'{encoding} needs uint8, got {array.dtype}')
        alpha = np.full(array.shape[:2] + (1,), 255, dtype=np.uint8)
        rgba = np.concatenate([array, alpha], axis=2)
        pixels = rgba[:, :, ['rgba'.index(c) for c in spec.order]]
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f'image has zero size: {width}x{height}')
    raw = np.ascontiguousarray(pixels).tobytes()
    return _with_header({
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': int(sys.byteorder == 'big'),
        'step': int(width * spec.channels * spec.itemsize),
        'data': _as_data(raw, data_type),
    }, header)


def _as_data(raw: bytes, data_type: str) -> Any:
    if data_type == 'numpy':
        return np.frombuffer(raw, dtype=np.uint8).copy()
    if data_type == 'array':
        return pyarray.array('B', raw)
    if data_type == 'bytes':
        return raw
    raise ValueError(f"data_type must be 'numpy', 'array' or 'bytes', got {data_type!r}")


def _with_header(fields: dict[str, Any], header: Any) -> dict[str, Any]:
    if header is not None:
        fields = {'header': header, **fields}
    return fields


def array_to_image(array: np.ndarray, encoding: str, factory: Callable[..., Any], *,
                   header: Any = None, data_type: str = 'numpy') -> Any:
    """Build an Image message with ``factory(**image_to_fields(...))``."""
    return factory(**image_to_fields(array, encoding, header=header, data_type=data_type))


def _compressed_kind(fmt: str) -> str:
    """'jpeg' or 'png' from a CompressedImage ``format`` string, else a clear error."""
    text = str(fmt).strip().lower()
    if 'compresseddepth' in text:
        raise ImageConversionError(
            f'compressed format {fmt!r} (compressedDepth) is not supported; '
            f'supported: {list(COMPRESSED_FORMATS)}')
    # image_transport writes '<encoding>; <codec> compressed <encoding>' or just '<codec>'.
    for kind, names in (('jpeg', ('jpeg', 'jpg')), ('png', ('png',))):
        if any(name in text for name in names):
            return kind
    raise ImageConversionError(
        f'unknown compressed format {fmt!r}; supported: {list(COMPRESSED_FORMATS)}')


def compressed_to_array(msg: Any, requested: str | None = None, *,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """
    Decode a sensor_msgs/CompressedImage-like message (jpeg or png) into a new array.

    Colour images become RGB ``uint8`` ``(H, W, 3)``; single-channel ones ``(H, W)`` uint8 or
    (16-bit png) uint16. ``requested`` is checked as in :func:`image_to_array`.
    """
    import cv2

    _compressed_kind(msg.format)
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageConversionError('compressed image has no data')
    if buf.size > max_bytes:
        raise ImageConversionError(
            f'compressed image of {buf.size} bytes exceeds the limit of {max_bytes} bytes')
    try:
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageConversionError(f'corrupt {msg.format!r} image: {exc}') from exc
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f'corrupt or truncated {msg.format!r} image ({buf.size} bytes): cannot decode')
    if decoded.nbytes > max_bytes:
        raise ImageConversionError(
            f'decoded image of {decoded.nbytes} bytes exceeds the limit of {max_bytes} bytes')
    if decoded.ndim == 2:
        encoding = 'mono8' if decoded.dtype == np.uint8 else '16UC1'
        out = np.array(decoded)
    else:
        encoding = 'rgb8'
        code = cv2.COLOR_BGR2RGB if decoded.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        out = np.ascontiguousarray(cv2.cvtColor(decoded, code))
        if out.dtype != np.uint8:
            raise ImageConversionError(f'unsupported compressed colour dtype {out.dtype}')
    check_requested(encoding, requested)
    return out


def compressed_to_fields(array: np.ndarray, fmt: str = 'jpeg', *, quality: int = 95,
                         header: Any = None, data_type: str = 'numpy') -> dict[str, Any]:
    """
    Keyword arguments of a sensor_msgs/CompressedImage encoding ``array`` as jpeg or png.

    ``array`` is RGB ``uint8`` ``(H, W, 3)`` or single-channel ``(H, W)`` (uint8, or uint16
    for png).
    """
    import cv2

    kind = _compressed_kind(fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f'quality must be in [1, 100], got {quality}')
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 2 and (array.dtype == np.uint8
                              or (array.dtype == np.uint16 and kind == 'png')):
        image = array
    else:
        raise ImageConversionError(
            f'cannot encode {array.dtype} array of shape {array.shape} as {kind}')
    if array.size == 0:
        raise ImageConversionError(f'image has zero size: shape {array.shape}')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == 'jpeg' else []
    ok, encoded = cv2.imencode('.jpg' if kind == 'jpeg' else '.png', image, params)
    if not ok:
        raise ImageConversionError(f'OpenCV failed to encode the image as {kind}')
    return _with_header({'format': kind, 'data': _as_data(encoded.tobytes(), data_type)},
                        header)


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """
    Depth as ``float32`` metres with ``nan`` for no reading.

    ``16UC1``/``mono16`` are millimetres with 0 meaning no reading; ``32FC1`` is metres, and
    non-finite or non-positive values become ``nan``.
    """
    array = np.asarray(array)
    if encoding in ('16UC1', 'mono16'):
        if array.dtype != np.uint16:
            raise ImageConversionError(f'{encoding} depth must be uint16, got {array.dtype}')
        out = array.astype(np.float32) / np.float32(1000.0)
        out[array == 0] = np.nan
        return out
    if encoding == '32FC1':
        out = np.array(array, dtype=np.float32)
        with np.errstate(invalid='ignore'):
            out[~(np.isfinite(out) & (out > 0))] = np.nan
        return out
    raise ImageConversionError(
        f'depth encoding must be 16UC1, mono16 or 32FC1, got {encoding!r}')


def metres_to_depth(depth: np.ndarray, encoding: str = '32FC1') -> np.ndarray:
    """Inverse of :func:`depth_to_metres`: ``nan`` becomes 0 mm (16UC1) or stays ``nan``."""
    depth = np.asarray(depth, dtype=np.float32)
    if encoding == '32FC1':
        return depth.copy()
    if encoding in ('16UC1', 'mono16'):
        mm = np.nan_to_num(np.round(depth * 1000.0), nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    raise ImageConversionError(
        f'depth encoding must be 16UC1, mono16 or 32FC1, got {encoding!r}')


IMAGE_MSGTYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
"""The message types :func:`message_to_rgb` decodes."""


def colour_array(array: np.ndarray) -> np.ndarray:
    """
    Return a decoded image as RGB ``uint8`` ``(H, W, 3)`` for a model: what the node takes.

    Colour encodings come decoded to RGB; mono8 is repeated into three channels. Anything else
    (16-bit or float images: depth, segmentation) is refused rather than squeezed into colours
    a model would answer about without complaint.

    :raises ImageConversionError: for any other dtype or shape.
    """
    if array.ndim == 2 and array.dtype == np.uint8:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageConversionError(
            f'cannot use a {array.dtype} {array.shape} image as colour (need rgb8/bgr8/mono8)')
    return np.ascontiguousarray(array)


def message_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """
    Return an Image or CompressedImage message as RGB ``uint8`` ``(H, W, 3)``, for a model.

    The reward node's rule (:func:`colour_array`): colour and mono8 images only; a depth or
    segmentation image raises.

    :param msgtype: ``'sensor_msgs/msg/Image'`` or ``'sensor_msgs/msg/CompressedImage'``.
    :raises ImageConversionError: for a message that does not decode, or not as colour.
    """
    rgb = compressed_to_array(msg) if msgtype.endswith('CompressedImage') else image_to_array(msg)
    return colour_array(rgb)

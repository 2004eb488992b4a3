"""Image <-> numpy conversion: every encoding, padding, endianness, malformed messages."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from spatialvlm_ros.bags import imageconv
from spatialvlm_ros.bags.imageconv import (
    compressed_to_array,
    compressed_to_fields,
    depth_to_metres,
    image_to_array,
    image_to_fields,
    ImageConversionError,
    metres_to_depth,
)

RNG = np.random.default_rng(0)
H, W = 5, 7


def _mono(dtype: str) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in 'iu' else None
    if info is None:
        return RNG.uniform(0.1, 10.0, (H, W)).astype(dtype)
    return RNG.integers(info.min, info.max, (H, W), endpoint=True).astype(dtype)


RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)

# encoding -> (array given to image_to_fields, expected decoded array)
CASES = {
    'rgb8': (RGB, RGB),
    'bgr8': (RGB, RGB),
    'rgba8': (RGB, RGB),
    'bgra8': (RGB, RGB),
    'mono8': (m := _mono('uint8'), m),
    '8UC1': (m, m),
    'mono16': (m16 := _mono('uint16'), m16),
    '16UC1': (m16, m16),
    '16SC1': (s16 := _mono('int16'), s16),
    '32SC1': (s32 := _mono('int32'), s32),
    '32FC1': (f32 := _mono('float32'), f32),
}


def _msg(**fields: object) -> SimpleNamespace:
    return SimpleNamespace(header=None, **fields)


@pytest.mark.parametrize('encoding', sorted(CASES))
def test_round_trip_every_encoding(encoding: str) -> None:
    given, expected = CASES[encoding]
    msg = _msg(**image_to_fields(given, encoding))
    out = image_to_array(msg)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    assert not np.shares_memory(out, msg.data)


@pytest.mark.parametrize('data_type', ['numpy', 'array', 'bytes'])
def test_data_types(data_type: str) -> None:
    msg = _msg(**image_to_fields(RGB, 'rgb8', data_type=data_type))
    np.testing.assert_array_equal(image_to_array(msg), RGB)


def test_channel_order_of_bgr_and_bgra() -> None:
    fields = image_to_fields(RGB, 'bgra8')
    raw = fields['data'].reshape(H, W, 4)
    np.testing.assert_array_equal(raw[:, :, 0], RGB[:, :, 2])
    assert np.all(raw[:, :, 3] == 255)


@pytest.mark.parametrize('encoding', sorted(CASES))
@pytest.mark.parametrize('pad', [1, 3, 8])
def test_step_padding(encoding: str, pad: int) -> None:
    given, expected = CASES[encoding]
    fields = image_to_fields(given, encoding)
    rows = fields['data'].reshape(H, fields['step'])
    padded = np.concatenate([rows, np.full((H, pad), 0xAB, np.uint8)], axis=1)
    fields.update(step=fields['step'] + pad, data=padded.reshape(-1))
    np.testing.assert_array_equal(image_to_array(_msg(**fields)), expected)


def test_last_row_without_padding_is_accepted() -> None:
    fields = image_to_fields(CASES['mono8'][0], 'mono8')
    rows = fields['data'].reshape(H, W)
    padded = np.concatenate([rows, np.zeros((H, 2), np.uint8)], axis=1).reshape(-1)[:-2]
    fields.update(step=W + 2, data=padded)
    np.testing.assert_array_equal(image_to_array(_msg(**fields)), CASES['mono8'][0])


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', '16SC1', '32SC1', '32FC1', 'rgb8'])
def test_big_endian(encoding: str) -> None:
    given, expected = CASES[encoding]
    fields = image_to_fields(given, encoding)
    spec = imageconv.ENCODINGS[encoding]
    native = fields['data'].view(np.dtype(spec.dtype).newbyteorder('='))
    swapped = native.astype(np.dtype(spec.dtype).newbyteorder('>')).view(np.uint8)
    fields.update(is_bigendian=1, data=swapped)
    out = image_to_array(_msg(**fields))
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, expected)
    assert image_to_fields(given, encoding)['is_bigendian'] == int(sys.byteorder == 'big')


def _good(**changes: object) -> SimpleNamespace:
    fields = image_to_fields(RGB, 'rgb8')
    fields.update(changes)
    return _msg(**fields)


MALFORMED = [
    ('step too small', _good(step=W * 3 - 1), 'step'),
    ('short data', _good(data=np.zeros(H * W * 3 - 1, np.uint8)), 'data has'),
    ('unknown encoding', _good(encoding='yuv422'), 'unknown image encoding'),
    ('zero width', _good(width=0, step=0, data=np.zeros(0, np.uint8)), 'zero size'),
    ('zero height', _good(height=0), 'zero size'),
    ('huge', _good(height=10**6, width=10**5, step=3 * 10**5), 'exceeds the limit'),
]


@pytest.mark.parametrize(('case', 'msg', 'words'), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_messages(case: str, msg: SimpleNamespace, words: str) -> None:
    with pytest.raises(ImageConversionError, match=words):
        image_to_array(msg)


def test_custom_size_limit() -> None:
    with pytest.raises(ImageConversionError, match='exceeds the limit of 10 bytes'):
        image_to_array(_good(), max_bytes=10)


@pytest.mark.parametrize(('encoding', 'requested', 'ok'), [
    ('bgr8', 'rgb8', True), ('16UC1', 'mono16', True), ('mono16', '16UC1', True),
    ('32FC1', '32FC1', True), ('rgb8', '32FC1', False), ('16UC1', '32FC1', False),
    ('mono8', 'rgb8', False),
])
def test_requested_encoding(encoding: str, requested: str, ok: bool) -> None:
    msg = _msg(**image_to_fields(CASES[encoding][0], encoding))
    if ok:
        image_to_array(msg, requested)
    else:
        with pytest.raises(ImageConversionError, match=f"but '{requested}' was requested"):
            image_to_array(msg, requested)


def test_image_to_fields_rejects_bad_arrays() -> None:
    with pytest.raises(ImageConversionError, match='needs an RGB'):
        image_to_fields(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError, match='needs uint16'):
        image_to_fields(np.zeros((2, 2), np.float32), '16UC1')
    with pytest.raises(ImageConversionError, match='unknown image encoding'):
        image_to_fields(RGB, 'nv12')
    # a narrowing cast never wraps a value silently (300 would become 44 in mono8)
    for values, dtype, encoding in (([[300, 5]], np.uint16, 'mono8'),
                                    ([[70000, 5]], np.uint32, '16UC1'),
                                    ([[40000, 1]], np.int32, '16SC1'),
                                    ([[1e40, 1]], np.float64, '32FC1')):
        with pytest.raises(ImageConversionError, match=f'{encoding} .* the image has values'):
            image_to_fields(np.array(values, dtype), encoding)
    fits = image_to_fields(np.array([[200, 5]], np.uint16), 'mono8')  # values that fit: kept
    assert bytes(fits['data']) == bytes([200, 5])


def test_png_round_trip_colour_mono_and_16bit() -> None:
    for array in (RGB, CASES['mono8'][0], CASES['16UC1'][0]):
        msg = _msg(**compressed_to_fields(array, 'png'))
        assert msg.format == 'png'
        np.testing.assert_array_equal(compressed_to_array(msg), array)


def test_jpeg_round_trip_is_close() -> None:
    smooth = np.dstack([np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))] * 3)
    msg = _msg(**compressed_to_fields(smooth, 'jpeg', quality=95))
    out = compressed_to_array(msg, 'rgb8')
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize('fmt', ['jpeg', 'rgb8; jpeg compressed bgr8', 'png', 'bgr8; png'])
def test_compressed_format_strings(fmt: str) -> None:
    kind = 'png' if 'png' in fmt else 'jpeg'
    data = compressed_to_fields(RGB, kind)['data']
    assert compressed_to_array(_msg(format=fmt, data=data)).shape == RGB.shape


@pytest.mark.parametrize(('fmt', 'data', 'words'), [
    ('16UC1; compressedDepth', b'\x00' * 20, 'compressedDepth'),
    ('tiff', b'\x00' * 20, 'unknown compressed format'),
    ('jpeg', b'', 'no data'),
    ('jpeg', b'\xff\xd8\xff' + b'garbage' * 10, 'corrupt'),
    ('png', None, 'corrupt'),
])
def test_corrupt_compressed(fmt: str, data: bytes | None, words: str) -> None:
    if data is None:  # a truncated png
        data = compressed_to_fields(RGB, 'png', data_type='bytes')['data'][:30]
    with pytest.raises(ImageConversionError, match=words):
        compressed_to_array(_msg(format=fmt, data=data))


def test_depth_to_metres() -> None:
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    out = depth_to_metres(mm, '16UC1')
    assert out.dtype == np.float32 and np.isnan(out[0, 0])
    np.testing.assert_allclose(out[1], [1.5, 65.535])
    f = np.array([[np.inf, -1.0], [0.0, 2.5]], np.float32)
    out = depth_to_metres(f, '32FC1')
    assert np.isnan(out).sum() == 3 and out[1, 1] == np.float32(2.5)
    np.testing.assert_array_equal(metres_to_depth(depth_to_metres(mm, '16UC1'), '16UC1'), mm)
    with pytest.raises(ImageConversionError, match='depth encoding'):
        depth_to_metres(mm, 'rgb8')


def test_backend_is_reported() -> None:
    assert imageconv.backend() in ('cv_bridge', 'numpy')


def _rclpy_msgs() -> object:
    os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    os.environ.setdefault('ROS_LOG_DIR', '/tmp/roslog')
    try:
        from sensor_msgs import msg
    except Exception as exc:
        pytest.skip(f'sensor_msgs (rclpy) not importable: {exc}')
    return msg


@pytest.mark.parametrize('encoding', sorted(CASES))
def test_rclpy_messages(encoding: str) -> None:
    msgs = _rclpy_msgs()
    given, expected = CASES[encoding]
    msg = imageconv.array_to_image(given, encoding, msgs.Image, data_type='array')
    assert msg.encoding == encoding and msg.height == H and msg.width == W
    np.testing.assert_array_equal(image_to_array(msg), expected)


def test_rclpy_compressed() -> None:
    msgs = _rclpy_msgs()
    msg = msgs.CompressedImage(**compressed_to_fields(RGB, 'png', data_type='array'))
    np.testing.assert_array_equal(compressed_to_array(msg), RGB)


def test_message_to_rgb_gives_the_model_rgb_uint8() -> None:
    msg = _msg(**imageconv.image_to_fields(RGB, 'bgr8'))
    np.testing.assert_array_equal(imageconv.message_to_rgb(msg, 'sensor_msgs/msg/Image'), RGB)
    mono = np.array([[0, 128], [255, 7]], np.uint8)
    out = imageconv.message_to_rgb(_msg(**imageconv.image_to_fields(mono, 'mono8')),
                                   'sensor_msgs/msg/Image')
    assert out.shape == (2, 2, 3) and (out == mono[:, :, None]).all()
    # what the node refuses as colour: 16-bit and float images (depth, segmentation)
    deep = np.array([[0, 65535], [257, 1000]], np.uint16)
    depth = np.array([[0.5, np.nan], [np.inf, -1.0]], np.float32)  # metres, nan: no reading
    for array, encoding in ((deep, 'mono16'), (deep, '16UC1'), (depth, '32FC1')):
        with pytest.raises(ImageConversionError, match='as colour'):
            imageconv.message_to_rgb(_msg(**imageconv.image_to_fields(array, encoding)),
                                     'sensor_msgs/msg/Image')
    png = _msg(**compressed_to_fields(RGB, 'png'))
    np.testing.assert_array_equal(
        imageconv.message_to_rgb(png, 'sensor_msgs/msg/CompressedImage'), RGB)

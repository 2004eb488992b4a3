"""
Frames of a bag for a replay: the image stream plus, when present, the episode's ground truth.

Works on any rosbag2 bag with an image topic (``sensor_msgs/msg/Image`` in any colour or mono
encoding, or ``sensor_msgs/msg/CompressedImage``); episode bags written by
:mod:`spatialvlm_ros.bags.writer` also give the target phrase (metadata) and the true
gripper-to-target distances (``/ground_truth/distance/centre`` and ``.../surface``, matched to
images by header stamp). Ground truth is read first (small messages), then images are decoded
one at a time, so a long bag is never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.errors import BagCorruptError, BagError, MissingTopicsError
from spatialvlm_ros.bags.imageconv import IMAGE_MSGTYPES

IMAGE_TYPES = IMAGE_MSGTYPES
DEFAULT_IMAGE_TOPIC = layout.TOPICS['rgb'].name
TRUTH_KEYS = ('distance_centre', 'distance_surface')


@dataclass
class ReplayFrame:
    """One image to score: stamp, header frame id, RGB pixels and the true distances."""

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    truth_centre_m: float | None = None
    truth_surface_m: float | None = None


@dataclass
class BagSource:
    """
    What a replay needs to know about one bag before reading its images.

    :ivar path: the bag.
    :ivar image_topic: the topic scored.
    :ivar image_count: images stored on it.
    :ivar metadata: the episode metadata (``{}`` for other bags).
    :ivar target_id: the episode's target object id (None for other bags).
    :ivar truth_centre: stamp (ns) -> true gripper-to-target centre distance (m).
    :ivar truth_surface: stamp (ns) -> true gripper-to-target surface distance (m).
    """

    path: Path
    image_topic: str
    image_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    target_id: str | None = None
    truth_centre: dict[int, float] = field(default_factory=dict)
    truth_surface: dict[int, float] = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        """Return whether the bag holds ground-truth distances to the target."""
        return bool(self.truth_centre)

    def default_target(self) -> str | None:
        """Return the target phrase from the metadata (sampled caption, else the first one)."""
        meta = self.metadata
        caption = (meta.get('extra') or {}).get('target_caption')
        if caption:
            return str(caption)
        for obj in meta.get('objects') or []:
            if obj.get('object_id', obj.get('id')) == self.target_id and obj.get('captions'):
                return str(obj['captions'][0])
        return None


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _metadata(bag: Any) -> dict[str, Any]:
    text = bag.custom_data.get(layout.CUSTOM_DATA_KEY)
    if text is None:
        sidecar = (bag.path if bag.path.is_dir() else bag.path.parent) / layout.SIDECAR_NAME
        if not sidecar.is_file():
            return {}
        text = sidecar.read_text(encoding='utf-8')
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BagCorruptError(f'{bag.path}: invalid episode metadata JSON ({exc})') from exc
    return meta if isinstance(meta, dict) else {}


def open_source(path: str | Path, image_topic: str = DEFAULT_IMAGE_TOPIC) -> BagSource:
    """
    Open ``path`` for a replay: check the image topic and read the ground truth.

    :raise MissingTopicsError: the image topic is absent (the message lists the image topics
        present).
    :raise BagError: the bag cannot be read, the image topic has another type, or its first
        image is not one the reward node takes as colour (a depth or segmentation topic).
    """
    from spatialvlm_ros.bags.imageconv import ImageConversionError, message_to_rgb
    from spatialvlm_ros.bags.reader import open_bag

    with open_bag(path) as bag:
        info = bag.topics.get(image_topic)
        if info is None:
            images = sorted(n for n, t in bag.topics.items() if t.msgtype in IMAGE_TYPES)
            raise MissingTopicsError(
                f'{bag.path}: no image topic {image_topic!r}; image topics present: '
                f'{images or "none"} (choose one with --image-topic)')
        if info.msgtype not in IMAGE_TYPES:
            raise BagError(f'{bag.path}: topic {image_topic} has type {info.msgtype}, '
                           f'expected one of {IMAGE_TYPES}')
        count = info.count_stored or info.count_metadata or 0
        for msg in bag.messages([image_topic]):  # the first image: is it colour at all?
            try:
                message_to_rgb(bag.deserialize(msg.data, msg.msgtype), msg.msgtype)
            except ImageConversionError as exc:
                raise BagError(f'{bag.path}: the first image on {image_topic} cannot be used as '
                               f'colour: {exc}') from exc
            break
        meta = _metadata(bag)
        target = meta.get('target_id')
        source = BagSource(Path(path), image_topic, int(count), meta,
                           str(target) if target else None)
        names = {layout.TOPICS[k].name: k for k in TRUTH_KEYS}
        present = [n for n in names if n in bag.topics]
        if source.target_id and present:
            for msg in bag.messages(present):
                decoded = bag.deserialize(msg.data, msg.msgtype)
                joints = dict(zip(decoded.name, decoded.position, strict=False))
                value = joints.get(source.target_id)
                if value is None or not math.isfinite(value):
                    continue
                table = (source.truth_centre if names[msg.topic] == 'distance_centre'
                         else source.truth_surface)
                table[_stamp(decoded.header)] = float(value)
    return source


def iter_frames(source: BagSource) -> Iterator[ReplayFrame]:
    """
    Yield the bag's images in storage (time) order, decoded to RGB, with their true distances.

    Images are decoded one at a time; mono8 images are repeated into three channels. Anything the
    reward node would not take as colour (a depth or segmentation topic) raises
    :class:`BagCorruptError` naming the frame.
    """
    from spatialvlm_ros.bags.imageconv import ImageConversionError, message_to_rgb
    from spatialvlm_ros.bags.reader import open_bag

    with open_bag(source.path) as bag:
        for msg in bag.messages([source.image_topic]):
            decoded = bag.deserialize(msg.data, msg.msgtype)
            stamp = _stamp(decoded.header)
            try:
                rgb = message_to_rgb(decoded, msg.msgtype)
            except ImageConversionError as exc:
                raise BagCorruptError(f'{source.path}: image at {stamp} ns: {exc}') from exc
            yield ReplayFrame(stamp, str(decoded.header.frame_id), rgb,
                              source.truth_centre.get(stamp), source.truth_surface.get(stamp))

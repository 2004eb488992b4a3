"""
Write an :class:`~spatialvlm_ros.core.datatypes.Episode` as a rosbag2 bag (sqlite3 or mcap).

Uses rosbags' Writer and its ROS 2 Jazzy typestore (``serialize_cdr``), so no ROS install is
needed; the layout is :mod:`spatialvlm_ros.bags.topics`. Bags are written into a temporary
sibling folder and renamed into place, so a reader never sees a half-written bag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any

import numpy as np

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.errors import BagError, BagExistsError, EmptyEpisodeError
from spatialvlm_ros.bags.imageconv import image_to_fields
from spatialvlm_ros.core.datatypes import Episode, Frame
from spatialvlm_ros.core.files import write_text_atomic

STORAGES: tuple[str, ...] = ('sqlite3', 'mcap')


def get_typestore() -> Any:
    """Return the rosbags ROS 2 Jazzy typestore (cached by rosbags)."""
    from rosbags.typesys import get_typestore as _get
    from rosbags.typesys import Stores

    return _get(Stores.ROS2_JAZZY)


def write_episode(episode: Episode, path: str | os.PathLike[str], storage: str = 'sqlite3',
                  overwrite: bool = False) -> Path:
    """
    Write ``episode`` as a rosbag2 bag folder at ``path`` and return the path.

    :param episode: the frames and ground truth to record (at least one frame).
    :param path: the bag folder to create.
    :param storage: ``'sqlite3'`` or ``'mcap'``.
    :param overwrite: replace an existing bag instead of refusing. The new bag is written
        aside first; the old one is then moved aside and the new one renamed in (two renames:
        for that instant the path is absent), and put back if the new one cannot be.
    :raises EmptyEpisodeError: the episode has no frames.
    :raises BagExistsError: ``path`` exists and ``overwrite`` is False, or it is something
        other than a bag folder (never deleted).
    :raises ValueError: unknown storage.
    """
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    if not episode.frames:
        raise EmptyEpisodeError(f'episode (seed {episode.seed}) has no frames; nothing to write')
    path = Path(path)
    if path.exists() and not overwrite:
        raise BagExistsError(f'{path} exists; pass overwrite=True to replace it')
    if path.exists() and not _is_bag_folder(path):
        raise BagExistsError(f'{path} exists and is not a bag folder (no metadata.yaml or '
                             'storage file); it is not replaced')
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = layout.episode_metadata(episode)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent))
    try:
        tmp_bag = staging / path.name
        _write_bag(episode, tmp_bag, storage, metadata)
        write_json_atomic(tmp_bag / layout.SIDECAR_NAME, metadata)
        if path.exists():
            # Move the old bag aside first: a rename cannot replace a non-empty folder.
            old = staging / (path.name + '.old')
            os.replace(path, old)
            try:
                os.replace(tmp_bag, path)
            except OSError:
                os.replace(old, path)  # the old bag back where it was
                raise
        else:
            os.replace(tmp_bag, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _is_bag_folder(path: Path) -> bool:
    """Return whether ``path`` is a rosbag2 folder: metadata.yaml or a storage file in it."""
    return path.is_dir() and ((path / 'metadata.yaml').is_file() or any(
        child.suffix in ('.db3', '.mcap') for child in path.iterdir()))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + '\n')


def _write_bag(episode: Episode, path: Path, storage: str, metadata: dict[str, Any]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    store = get_typestore()
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    try:
        with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
            writer.set_custom_data(layout.CUSTOM_DATA_KEY, json.dumps(metadata, sort_keys=True))
            connections = {key: writer.add_connection(spec.name, spec.msgtype, typestore=store)
                           for key, spec in layout.TOPICS.items()}
            for frame in episode.frames:
                for key, msg in frame_messages(frame, store).items():
                    spec = layout.TOPICS[key]
                    writer.write(connections[key], int(frame.stamp_ns),
                                 store.serialize_cdr(msg, spec.msgtype))
    except WriterError as exc:
        raise BagError(f'cannot write bag {path}: {exc}') from exc


def frame_messages(frame: Frame, store: Any) -> dict[str, Any]:
    """Build the rosbags messages of one frame, keyed as :data:`topics.TOPICS`."""
    types = store.types
    header = _header(types, frame.stamp_ns)
    k = frame.intrinsics
    msgs: dict[str, Any] = {}
    image = types['sensor_msgs/msg/Image']
    msgs['rgb'] = image(**image_to_fields(frame.rgb, 'rgb8', header=header))
    kmat = k.K
    msgs['camera_info'] = types['sensor_msgs/msg/CameraInfo'](
        header=header, height=k.height, width=k.width, distortion_model='plumb_bob',
        d=np.zeros(5), k=kmat.reshape(-1), r=np.eye(3).reshape(-1),
        p=np.hstack([kmat, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    depth = np.asarray(frame.depth, dtype=np.float32)
    msgs['depth'] = image(**image_to_fields(depth, '32FC1', header=header))
    seg = np.asarray(frame.segmentation)
    if seg.size and (seg.min() < -1 or seg.max() >= np.iinfo(np.uint16).max):
        raise BagError(f'segmentation values must be in [-1, 65534], got '
                       f'[{seg.min()}, {seg.max()}] in frame {frame.index}')
    msgs['segmentation'] = image(**image_to_fields((seg + 1).astype(np.uint16), '16UC1',
                                                   header=header))
    msgs['gripper_pose'] = types['geometry_msgs/msg/PoseStamped'](
        header=header, pose=_pose(types, frame.gripper_cam, np.eye(3)))
    msgs['object_poses'] = types['geometry_msgs/msg/PoseArray'](
        header=header,
        poses=[_pose(types, o.obb_cam.center, o.obb_cam.rotation) for o in frame.objects])
    for key, dists in (('distance_centre', frame.distance_centre),
                       ('distance_surface', frame.distance_surface)):
        names = list(dists)
        msgs[key] = types['sensor_msgs/msg/JointState'](
            header=header, name=names,
            position=np.array([dists[n] for n in names], dtype=np.float64),
            velocity=np.zeros(0), effort=np.zeros(0))
    return msgs


def _header(types: Any, stamp_ns: int) -> Any:
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise BagError(f'stamps must be non-negative, got {stamp_ns} ns')
    stamp = types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                 nanosec=stamp_ns % 10**9)
    return types['std_msgs/msg/Header'](stamp=stamp, frame_id=layout.CAMERA_FRAME_ID)


def _pose(types: Any, position: np.ndarray, rotation: np.ndarray) -> Any:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(rotation, dtype=float)).as_quat()
    px, py, pz = (float(v) for v in np.asarray(position, dtype=float))
    return types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=px, y=py, z=pz),
        orientation=types['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))

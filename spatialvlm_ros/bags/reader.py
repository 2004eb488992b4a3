"""
Read rosbag2 bags robustly: real-world bags generically, and episodes written by ``writer``.

Why not just ``rosbags.rosbag2.Reader(folder)``: rosbags 0.11.9 matches each storage
connection against metadata.yaml including its QoS profiles, and silently yields nothing for a
topic whose stored QoS differs (rosbag2's own ``talker`` and ``convert_a`` test bags); it also
rejects metadata version 1 and cannot open folders of storage files without metadata.yaml. So
this module resolves the bag itself (metadata.yaml when present, else the storage files), reads
every storage file with rosbags' *storage-level* readers (which yield all stored messages),
applies file and message zstd decompression, and counts what each storage holds independently
(sqlite: ``SELECT COUNT(*) FROM messages``; mcap: the Statistics record, else a record scan).
After a full read, fewer messages than stored raises :class:`MessageCountMismatchError`.

Everything raised derives from :class:`~spatialvlm_ros.bags.errors.BagError` and names the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
import json
import logging
import mmap
from pathlib import Path
import re
import shutil
import sqlite3
import struct
import tempfile
from typing import Any, NamedTuple

import numpy as np

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.errors import (
    BagCorruptError,
    BagError,
    BagNotFoundError,
    MessageCountMismatchError,
    MissingTopicsError,
    UnsupportedBagError,
    UnsupportedSerializationError,
)
from spatialvlm_ros.bags.imageconv import image_to_array, ImageConversionError
from spatialvlm_ros.core.datatypes import CameraIntrinsics

LOG = logging.getLogger(__name__)

STORAGE_SUFFIXES: dict[str, str] = {'.db3': 'sqlite3', '.mcap': 'mcap'}
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'
MCAP_MAGIC = b'\x89MCAP0\r\n'


class BagMessage(NamedTuple):
    """One stored message: topic, type, bag timestamp (ns) and raw (decompressed) bytes."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


@dataclass
class TopicInfo:
    """A topic of a bag: type, serialization format, and message counts."""

    name: str
    msgtype: str
    serialization_format: str = 'cdr'
    count_metadata: int | None = None  # from metadata.yaml, None without one
    count_stored: int = 0  # from the storage files' connections


@dataclass
class _StorageFile:
    path: Path  # as found in the bag
    storage: str  # 'sqlite3' or 'mcap'
    file_compressed: bool = False
    readable: Path | None = None  # decompressed / checkpointed copy when needed
    count_stored: int = 0


def _zstd() -> Any:
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    return zstd


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path.name)]


def _storage_of(path: Path) -> tuple[str, bool] | None:
    """(storage, file_compressed) for a storage file name, None for other files."""
    suffixes = path.suffixes
    compressed = bool(suffixes) and suffixes[-1] == '.zstd'
    suffix = suffixes[-2] if compressed and len(suffixes) >= 2 else path.suffix
    storage = STORAGE_SUFFIXES.get(suffix)
    return (storage, compressed) if storage else None


def _load_metadata(path: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML, YAMLError

    try:
        doc = YAML(typ='safe').load(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise BagCorruptError(f'cannot read {path}: {exc}') from exc
    info = doc.get('rosbag2_bagfile_information') if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        raise BagCorruptError(f'{path} has no rosbag2_bagfile_information mapping')
    return info


def _group_key(path: Path) -> tuple[str, str]:
    """(stem without a trailing _<n> split index, storage) of a storage file."""
    name = path.name.removesuffix('.zstd')
    stem = name.rsplit('.', 1)[0]
    return re.sub(r'_\d+$', '', stem), (_storage_of(path) or ('', False))[0]


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """
    Bags under ``paths``, recursively.

    A folder with metadata.yaml and storage files is one bag (a folder with only
    metadata.yaml, like rosbag2's reindex ``target_metadata``, is not a bag). A folder without
    metadata.yaml is one bag if its storage files form one split set (``name_0.db3``,
    ``name_1.db3``, ...); otherwise each storage file is a bag of its own.
    """
    found: list[Path] = []
    for root in (Path(p) for p in paths):
        if not root.exists():
            raise BagNotFoundError(f'{root} does not exist')
        if root.is_file():
            found.append(root)
            continue
        for folder in sorted([root, *(p for p in root.rglob('*') if p.is_dir())]):
            storage = sorted((f for f in folder.iterdir() if f.is_file() and _storage_of(f)),
                             key=_natural_key)
            if not storage:
                continue
            if (folder / 'metadata.yaml').is_file():
                found.append(folder)
            elif len({_group_key(f) for f in storage}) == 1:
                found.append(folder)
            else:
                found.extend(storage)
    return found


class Bag:
    """
    An open rosbag2 bag (folder with metadata.yaml, folder of storage files, or one file).

    Use as a context manager, or call :meth:`close`. Attributes after opening: ``storage``,
    ``metadata`` (the metadata.yaml mapping or ``{}``), ``version`` (metadata version or None),
    ``compression_mode`` / ``compression_format``, ``topics`` (name -> :class:`TopicInfo`),
    ``custom_data`` and ``files``.
    """

    def __init__(self, path: str | Path, *, allow_unknown_serialization: bool = False) -> None:
        """Resolve and open the bag at ``path``; raises a ``BagError`` subclass on failure."""
        self.path = Path(path)
        self.allow_unknown_serialization = allow_unknown_serialization
        self.metadata: dict[str, Any] = {}
        self.version: int | None = None
        self.compression_mode = ''
        self.compression_format = ''
        self.storage = ''
        self.files: list[_StorageFile] = []
        self.topics: dict[str, TopicInfo] = {}
        self.msgdefs: dict[str, tuple[str, str]] = {}  # msgtype -> (format, text)
        self.messages_read: int | None = None
        self._stack = ExitStack()
        self._tmp: Path | None = None
        try:
            self._resolve()
            self._prepare_files()
            self._scan_connections()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------
    def _resolve(self) -> None:
        path = self.path
        if not path.exists():
            raise BagNotFoundError(f'{path} does not exist')
        if path.is_file():
            kind = _storage_of(path)
            if kind is None:
                raise BagNotFoundError(f'{path} is not a .db3 or .mcap storage file')
            self.files = [_StorageFile(path, *kind)]
        elif (path / 'metadata.yaml').is_file():
            self._resolve_metadata(path / 'metadata.yaml')
        else:
            files = sorted((f for f in path.iterdir() if f.is_file() and _storage_of(f)),
                           key=_natural_key)
            if not files:
                raise BagNotFoundError(
                    f'{path} holds neither metadata.yaml nor .db3/.mcap storage files')
            self.files = [_StorageFile(f, *_storage_of(f)) for f in files]  # type: ignore[misc]
        storages = {f.storage for f in self.files}
        if len(storages) > 1:
            raise UnsupportedBagError(f'{path} mixes storage types {sorted(storages)}; open '
                                      f'its storage files one by one')
        self.storage = storages.pop()
        if self.compression_mode not in ('', 'none', 'file', 'message'):
            raise UnsupportedBagError(
                f'{path}: unknown compression mode {self.compression_mode!r}')
        if self.compression_mode in ('file', 'message') and self.compression_format != 'zstd':
            raise UnsupportedBagError(
                f'{path}: compression format {self.compression_format!r} is not supported '
                f"(only 'zstd')")

    def _resolve_metadata(self, yaml_path: Path) -> None:
        info = _load_metadata(yaml_path)
        self.metadata = info
        try:
            self.version = int(info['version'])
            storage_id = str(info.get('storage_identifier', ''))
            names = [str(p) for p in info.get('relative_file_paths') or []]
            self.compression_mode = str(info.get('compression_mode') or '').lower()
            self.compression_format = str(info.get('compression_format') or '').lower()
            for entry in info.get('topics_with_message_count') or []:
                # v1 calls it topic_and_type, later versions topic_metadata.
                meta = entry.get('topic_metadata') or entry.get('topic_and_type')
                name = str(meta['name'])
                self.topics[name] = TopicInfo(
                    name, str(meta['type']), str(meta.get('serialization_format', 'cdr')),
                    int(entry.get('message_count', 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BagCorruptError(f'{yaml_path}: invalid metadata ({exc!r})') from exc
        if storage_id not in ('sqlite3', 'mcap'):
            raise UnsupportedBagError(
                f'{yaml_path}: storage {storage_id!r} is not supported (sqlite3, mcap)')
        folder = yaml_path.parent
        files = [folder / Path(n).name for n in names]
        if missing := [str(f) for f in files if not f.exists()]:
            raise BagCorruptError(f'{yaml_path}: storage files missing: {missing}')
        self.files = []
        for f in files:
            kind = _storage_of(f)
            compressed = kind[1] if kind else f.suffix == '.zstd'
            self.files.append(_StorageFile(f, storage_id, compressed))

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(
                prefix='spatialvlm-bag-')))
        return self._tmp

    def _prepare_files(self) -> None:
        zstd = _zstd()
        for index, sf in enumerate(self.files):
            src = sf.path
            if sf.file_compressed or self.compression_mode == 'file':
                out = self._tmpdir() / f'{index}_{src.name.removesuffix(".zstd")}'
                try:
                    with src.open('rb') as raw, zstd.open(raw, 'rb') as inp, \
                            out.open('wb') as dst:
                        shutil.copyfileobj(inp, dst)
                except (OSError, zstd.ZstdError, EOFError) as exc:
                    raise BagCorruptError(f'{src}: cannot zstd-decompress ({exc})') from exc
                sf.readable = out
            elif sf.storage == 'sqlite3' and _wal_has_data(src):
                # rosbags opens sqlite read-only with immutable=1, which ignores a -wal file:
                # fold the WAL into a private copy so no committed message is missed.
                out = self._tmpdir() / f'{index}_{src.name}'
                shutil.copy2(src, out)
                shutil.copy2(Path(f'{src}-wal'), Path(f'{out}-wal'))
                with sqlite3.connect(out) as conn:
                    conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
                conn.close()
                sf.readable = out
            else:
                sf.readable = src
            sf.count_stored = (_sqlite_count(sf.readable, src) if sf.storage == 'sqlite3'
                               else mcap_message_count(sf.readable, src))

    def _scan_connections(self) -> None:
        from rosbags.rosbag2 import Reader, ReaderError

        stored: dict[str, TopicInfo] = {}
        for sf in self.files:
            try:
                with Reader(_storage_alias(sf, self._tmpdir)) as reader:
                    conns = list(reader.connections)
            except (ReaderError, OSError, ValueError, KeyError, struct.error) as exc:
                raise BagCorruptError(f'{sf.path}: cannot open {sf.storage} storage: '
                                      f'{exc}') from exc
            for conn in conns:
                fmt = getattr(conn.ext, 'serialization_format', 'cdr') or 'cdr'
                info = stored.setdefault(conn.topic, TopicInfo(conn.topic, conn.msgtype, fmt))
                info.count_stored += int(conn.msgcount or 0)
                if fmt != 'cdr':
                    info.serialization_format = fmt
                if conn.msgdef.data and conn.msgtype not in self.msgdefs:
                    self.msgdefs[conn.msgtype] = (conn.msgdef.format.name, conn.msgdef.data)
        for name, info in stored.items():
            if name in self.topics:
                self.topics[name].count_stored = info.count_stored
                if info.serialization_format != 'cdr':
                    self.topics[name].serialization_format = info.serialization_format
            else:
                self.topics[name] = info
        bad = {n: t.serialization_format for n, t in self.topics.items()
               if t.serialization_format != 'cdr'}
        if bad and not self.allow_unknown_serialization:
            raise UnsupportedSerializationError(
                f'{self.path}: serialization format(s) {sorted(set(bad.values()))} are not '
                f"supported (only 'cdr'); topics: {sorted(bad)}")

    # -- queries -----------------------------------------------------------------------------
    @property
    def message_count(self) -> int:
        """Messages the storage files hold (counted from the storage itself)."""
        return sum(sf.count_stored for sf in self.files)

    @property
    def custom_data(self) -> dict[str, str]:
        """metadata.yaml's ``custom_data`` (v6+), else ``{}``."""
        return dict(self.metadata.get('custom_data') or {})

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """
        Yield every stored message (optionally only ``topics``), file by file in order.

        After a full, unfiltered pass, reading fewer messages than the storage holds raises
        :class:`MessageCountMismatchError` (never lose messages silently).
        """
        from rosbags.rosbag2 import Reader, ReaderError

        wanted = set(topics) if topics is not None else None
        zstd = _zstd()
        per_message = self.compression_mode == 'message'
        read = 0
        for sf in self.files:
            try:
                with Reader(_storage_alias(sf, self._tmpdir)) as reader:
                    conns = [c for c in reader.connections
                             if wanted is None or c.topic in wanted]
                    if not conns:
                        continue
                    for conn, stamp, data in reader.messages(connections=conns):
                        # Loose files carry no compression flag: zstd frames cannot be CDR
                        # (which starts with a 00 0x encapsulation header), so sniff the magic.
                        if per_message or bytes(data[:4]) == ZSTD_MAGIC:
                            try:
                                data = zstd.decompress(data)
                            except zstd.ZstdError as exc:
                                raise BagCorruptError(
                                    f'{sf.path}: corrupt zstd message on {conn.topic} at '
                                    f'{stamp} ns ({exc})') from exc
                        read += 1
                        yield BagMessage(conn.topic, conn.msgtype, int(stamp), bytes(data))
            except (ReaderError, struct.error, EOFError, ValueError) as exc:
                if isinstance(exc, BagError):
                    raise
                raise BagCorruptError(f'{sf.path}: error while reading messages: {exc}') \
                    from exc
        if wanted is None:
            self.messages_read = read
            if read < self.message_count:
                raise MessageCountMismatchError(
                    f'{self.path}: read {read} messages but the storage holds '
                    f'{self.message_count}')

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        """Deserialize CDR bytes into a rosbags message (types from Jazzy or the bag)."""
        store = _typestore_for(self)
        try:
            return store.deserialize_cdr(data, msgtype)
        except KeyError as exc:
            raise UnsupportedBagError(
                f'{self.path}: no definition for message type {msgtype!r}') from exc
        except Exception as exc:
            raise BagCorruptError(
                f'{self.path}: cannot deserialize {msgtype} ({type(exc).__name__}: {exc})'
            ) from exc

    def close(self) -> None:
        """Remove temporary decompressed copies."""
        self._stack.close()
        self._tmp = None

    def __enter__(self) -> Bag:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the bag."""
        self.close()


def _storage_alias(sf: _StorageFile, tmpdir: Any) -> Path:
    """Return a path rosbags' Reader recognises as one storage file (suffix .db3 or .mcap)."""
    path = sf.readable or sf.path
    suffix = '.db3' if sf.storage == 'sqlite3' else '.mcap'
    if path.suffix == suffix:
        return path
    alias = tmpdir() / f'{abs(hash(str(path)))}{suffix}'
    if not alias.exists():
        alias.symlink_to(path.resolve())
    return alias


def _wal_has_data(path: Path) -> bool:
    wal = Path(f'{path}-wal')
    return wal.is_file() and wal.stat().st_size > 0


def _sqlite_count(path: Path, shown: Path) -> int:
    """``SELECT COUNT(*) FROM messages`` on a read-only, immutable connection."""
    try:
        conn = sqlite3.connect(f'file:{path}?mode=ro&immutable=1', uri=True)
        try:
            (count,) = conn.execute('SELECT COUNT(*) FROM messages').fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BagCorruptError(f'{shown}: corrupt or truncated sqlite3 storage ({exc})') from exc
    return int(count)


def mcap_message_count(path: Path, shown: Path | None = None) -> int:
    """
    Messages in one mcap file: its Statistics record, else a scan of all records.

    Hand-written (about 40 lines) because the ``mcap`` package is not a dependency, and the
    count must not come from the reader it checks.
    """
    shown = shown or path
    try:
        with path.open('rb') as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _mcap_count(buf, shown)
    except ValueError as exc:  # mmap of an empty file
        raise BagCorruptError(f'{shown}: empty or unreadable mcap file ({exc})') from exc
    except (struct.error, IndexError) as exc:
        raise BagCorruptError(f'{shown}: truncated mcap record ({exc})') from exc


def _mcap_count(buf: Any, shown: Path) -> int:
    size = len(buf)
    if size < 2 * len(MCAP_MAGIC) or buf[:8] != MCAP_MAGIC:
        raise BagCorruptError(f'{shown}: not an mcap file (bad magic)')
    if buf[size - 8:] != MCAP_MAGIC:
        raise BagCorruptError(f'{shown}: truncated mcap file (no trailing magic)')
    footer = size - 8 - 29  # footer record: opcode 1 + length 8 + content 20
    if buf[footer] != 0x02:
        raise BagCorruptError(f'{shown}: truncated or corrupt mcap file (no footer)')
    (summary_start,) = struct.unpack_from('<Q', buf, footer + 9)
    if summary_start:
        pos = summary_start
        while pos < footer:
            op, length = struct.unpack_from('<BQ', buf, pos)
            if op == 0x0B:  # Statistics: message_count u64 first
                return int(struct.unpack_from('<Q', buf, pos + 9)[0])
            pos += 9 + length
    return _mcap_scan(buf, 8, footer, shown)


def _mcap_scan(buf: Any, pos: int, end: int, shown: Path) -> int:
    count = 0
    while pos < end:
        op, length = struct.unpack_from('<BQ', buf, pos)
        if pos + 9 + length > end:
            raise BagCorruptError(f'{shown}: truncated mcap record at byte {pos}')
        if op == 0x05:
            count += 1
        elif op == 0x06:  # Chunk: start, end, uncompressed size, crc, compression, records
            body = pos + 9 + 28
            (clen,) = struct.unpack_from('<I', buf, body)
            compression = bytes(buf[body + 4:body + 4 + clen]).decode()
            (rlen,) = struct.unpack_from('<Q', buf, body + 4 + clen)
            start = body + 12 + clen
            records = bytes(buf[start:start + rlen])
            if compression == 'zstd':
                records = _zstd().decompress(records)
            elif compression == 'lz4':
                import lz4.frame

                records = lz4.frame.decompress(records)
            elif compression:
                raise UnsupportedBagError(f'{shown}: chunk compression {compression!r}')
            count += _mcap_scan(memoryview(records), 0, len(records), shown)
        pos += 9 + length
    return count


def _typestore_for(bag: Bag) -> Any:
    """Return a Jazzy typestore, extended with the bag's own message definitions when needed."""
    store = getattr(bag, '_store', None)
    if store is not None:
        return store
    from rosbags.typesys import get_types_from_msg, get_typestore, Stores

    store = get_typestore(Stores.ROS2_JAZZY)
    extra: dict[str, Any] = {}
    for msgtype, (fmt, text) in bag.msgdefs.items():
        if msgtype in store.types or fmt != 'MSG':
            continue
        try:
            extra.update(get_types_from_msg(text, msgtype))
        except Exception as exc:
            LOG.warning('%s: cannot parse the definition of %s: %s', bag.path, msgtype, exc)
    if extra:
        try:
            store.register(extra)
        except Exception as exc:
            LOG.warning('%s: cannot register message types: %s', bag.path, exc)
    bag._store = store  # type: ignore[attr-defined]
    return store


def open_bag(path: str | Path, *, allow_unknown_serialization: bool = False) -> Bag:
    """Open a bag folder, a folder of storage files, or one .db3/.mcap(.zstd) file."""
    return Bag(path, allow_unknown_serialization=allow_unknown_serialization)


def iter_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Yield :class:`BagMessage` tuples (topic, msgtype, timestamp_ns, data) of a bag."""
    with open_bag(path) as bag:
        yield from bag.messages(topics)


def deserialize(data: bytes, msgtype: str) -> Any:
    """Deserialize CDR bytes of a ROS 2 Jazzy message type into a rosbags message."""
    return _jazzy().deserialize_cdr(data, msgtype)


def _jazzy() -> Any:
    global _JAZZY
    if _JAZZY is None:
        from rosbags.typesys import get_typestore, Stores

        _JAZZY = get_typestore(Stores.ROS2_JAZZY)
    return _JAZZY


_JAZZY: Any = None


def bag_info(path: str | Path, *, read: bool = True,
             allow_unknown_serialization: bool = False) -> dict[str, Any]:
    """
    Summary of a bag: storage, metadata version, duration, topics, messages stored vs read.

    With ``read`` every message is read (and decompressed) to fill ``messages_read``.
    """
    with open_bag(path, allow_unknown_serialization=allow_unknown_serialization) as bag:
        stamps: list[int] = []
        counts: dict[str, int] = {}
        if read:
            for msg in bag.messages():
                counts[msg.topic] = counts.get(msg.topic, 0) + 1
                stamps.append(msg.timestamp_ns)
        return {
            'path': str(bag.path),
            'storage': bag.storage,
            'metadata_version': bag.version,
            'files': [str(sf.path) for sf in bag.files],
            'compression': {'mode': bag.compression_mode, 'format': bag.compression_format},
            'messages_metadata': (int(bag.metadata['message_count'])
                                  if 'message_count' in bag.metadata else None),
            'messages_stored': bag.message_count,
            'messages_read': bag.messages_read if read else None,
            'start_ns': min(stamps) if stamps else None,
            'end_ns': max(stamps) if stamps else None,
            'duration_ns': (max(stamps) - min(stamps)) if stamps else 0,
            'topics': {
                name: {'type': t.msgtype, 'serialization_format': t.serialization_format,
                       'count_metadata': t.count_metadata, 'count_stored': t.count_stored,
                       'count_read': counts.get(name, 0) if read else None}
                for name, t in sorted(bag.topics.items())
            },
        }


def rosbags_reader_count(path: str | Path) -> int | None:
    """
    How many messages plain ``rosbags.rosbag2.Reader(path)`` yields; None if it fails.

    Used only to report the rosbags quirk (it may yield fewer than stored).
    """
    from rosbags.rosbag2 import Reader

    try:
        with Reader(Path(path)) as reader:
            return sum(1 for _ in reader.messages())
    except Exception:
        return None


# -- episodes ---------------------------------------------------------------------------------
@dataclass
class BagFrame:
    """One frame of an episode bag (formats of ``spatialvlm_ros.core.datatypes``)."""

    stamp_ns: int
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres, nan = no reading
    segmentation: np.ndarray  # (H, W) int32, -1 = background, else object index
    gripper_cam: np.ndarray  # (3,) metres, camera optical frame
    object_poses: np.ndarray  # (N, 4, 4) T_cam_object (oriented-box centre and rotation)
    distance_centre: dict[str, float] = field(default_factory=dict)
    distance_surface: dict[str, float] = field(default_factory=dict)


@dataclass
class EpisodeBag:
    """An episode read back from a bag: metadata, intrinsics and frames in stamp order."""

    path: Path
    metadata: dict[str, Any]
    intrinsics: CameraIntrinsics
    frames: list[BagFrame]


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _pose_matrix(pose: Any) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = pose.orientation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = [pose.position.x, pose.position.y, pose.position.z]
    return T


def _episode_metadata(bag: Bag) -> dict[str, Any]:
    text = bag.custom_data.get(layout.CUSTOM_DATA_KEY)
    source = f'{bag.path}/metadata.yaml custom_data'
    if text is None:
        sidecar = (bag.path if bag.path.is_dir() else bag.path.parent) / layout.SIDECAR_NAME
        if not sidecar.is_file():
            return {}
        text, source = sidecar.read_text(encoding='utf-8'), str(sidecar)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BagCorruptError(f'{source}: invalid episode metadata JSON ({exc})') from exc
    if not isinstance(meta, dict):
        raise BagCorruptError(f'{source}: episode metadata must be a JSON object')
    return meta


def read_episode(path: str | Path) -> EpisodeBag:
    """
    Read a bag written by :func:`~spatialvlm_ros.bags.writer.write_episode`.

    Messages are matched into frames by their header stamp. Raises
    :class:`MissingTopicsError` naming missing and present topics, and
    :class:`BagCorruptError` for frames lacking a topic or undecodable images.
    """
    by_topic = {spec.name: key for key, spec in layout.TOPICS.items()}
    with open_bag(path) as bag:
        missing = [name for name in by_topic if name not in bag.topics]
        if missing:
            raise MissingTopicsError(
                f'{bag.path}: missing topic(s) {missing}; present: {sorted(bag.topics)}')
        for name, key in by_topic.items():
            want = layout.TOPICS[key].msgtype
            if bag.topics[name].msgtype != want:
                raise BagCorruptError(f'{bag.path}: topic {name} has type '
                                      f'{bag.topics[name].msgtype}, expected {want}')
        meta = _episode_metadata(bag)
        frames: dict[int, dict[str, Any]] = {}
        for msg in bag.messages():
            key = by_topic.get(msg.topic)
            if key is None:
                continue
            decoded = bag.deserialize(msg.data, msg.msgtype)
            frames.setdefault(_stamp(decoded.header), {})[key] = decoded
    incomplete = {stamp: sorted(set(layout.TOPICS) - set(parts))
                  for stamp, parts in frames.items() if len(parts) < len(layout.TOPICS)}
    if incomplete:
        stamp, lacking = next(iter(sorted(incomplete.items())))
        raise BagCorruptError(f'{Path(path)}: {len(incomplete)} frame(s) lack messages, e.g. '
                              f'stamp {stamp} ns lacks {lacking}')
    if not frames:
        raise BagError(f'{Path(path)}: the bag holds no frames')
    out = [_bag_frame(stamp, frames[stamp], path) for stamp in sorted(frames)]
    info = frames[min(frames)]['camera_info']
    intrinsics = CameraIntrinsics.from_matrix(np.asarray(info.k), int(info.width),
                                              int(info.height))
    return EpisodeBag(Path(path), meta, intrinsics, out)


def _bag_frame(stamp: int, parts: dict[str, Any], path: str | Path) -> BagFrame:
    try:
        rgb = image_to_array(parts['rgb'], 'rgb8')
        depth = image_to_array(parts['depth'], '32FC1')
        seg = image_to_array(parts['segmentation'], '16UC1').astype(np.int32) - 1
    except ImageConversionError as exc:
        raise BagCorruptError(f'{Path(path)}: frame at {stamp} ns: {exc}') from exc
    poses = parts['object_poses'].poses
    p = parts['gripper_pose'].pose.position
    return BagFrame(
        stamp_ns=stamp, rgb=rgb, depth=depth, segmentation=seg,
        gripper_cam=np.array([p.x, p.y, p.z]),
        object_poses=(np.stack([_pose_matrix(q) for q in poses]) if len(poses)
                      else np.zeros((0, 4, 4))),
        distance_centre=_joint_dict(parts['distance_centre']),
        distance_surface=_joint_dict(parts['distance_surface']))


def _joint_dict(msg: Any) -> dict[str, float]:
    if len(msg.name) != len(msg.position):
        raise BagCorruptError(f'JointState has {len(msg.name)} names but '
                              f'{len(msg.position)} positions')
    return {str(n): float(v) for n, v in zip(msg.name, msg.position, strict=True)}

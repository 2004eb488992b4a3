"""
Replay outputs: per-frame CSV, a plot per bag, the summary table, and the relabelled bag.

Every file is written to a temporary name beside its destination and renamed into place, and a
relabelled bag is written into a temporary sibling folder first, so an interrupted replay never
leaves a half-written output behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.bags.errors import BagError, BagExistsError
from spatialvlm_ros.core.files import write_bytes_atomic
from spatialvlm_ros.replay.topics import build_messages, REWARD_TOPICS

CSV_COLUMNS = ('stamp_ns', 'time_s', 'text', 'distance_raw_m', 'valid', 'distance_smoothed_m',
               'smoothed_valid', 'rejected', 'reward', 'reward_fresh', 'success',
               'true_centre_m', 'true_surface_m', 'latency_s')


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _cell(value: Any) -> Any:
    if value is None:
        return ''
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return '' if math.isnan(value) else f'{value:.6g}'
    return value


def write_csv(path: Path, stamps_ns: Sequence[int], records: Sequence[Any],
              truth_centre: Sequence[float | None],
              truth_surface: Sequence[float | None]) -> Path:
    """Write one row per frame (columns :data:`CSV_COLUMNS`; empty cell = no value)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(CSV_COLUMNS)
    t0 = stamps_ns[0] if len(stamps_ns) else 0
    for stamp, rec, centre, surface in zip(stamps_ns, records, truth_centre, truth_surface,
                                           strict=True):
        row = (stamp, (stamp - t0) / 1e9, rec.text, rec.distance_raw_m, rec.valid,
               rec.distance_m, rec.smoothed_valid, rec.rejected, rec.reward, rec.reward_fresh,
               rec.success, centre, surface, rec.latency_s)
        writer.writerow([_cell(v) for v in row])
    _write_atomic(path, buf.getvalue().encode('utf-8'))
    return path


def write_plot(path: Path, title: str, stamps_ns: Sequence[int], records: Sequence[Any],
               truth_centre: Sequence[float | None],
               truth_surface: Sequence[float | None]) -> Path:
    """Plot predicted vs true distance and the reward over time into a PNG (matplotlib Agg)."""
    fig = plot_figure(title, stamps_ns, records, truth_centre, truth_surface)
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    _write_atomic(path, buf.getvalue())
    return path


def plot_figure(title: str, stamps_ns: Sequence[int], records: Sequence[Any],
                truth_centre: Sequence[float | None],
                truth_surface: Sequence[float | None]) -> Any:
    """
    Return the matplotlib figure of :func:`write_plot`.

    :param records: per frame ``distance_raw_m`` (None: the answer held no distance, drawn as
        a red cross on the time axis), ``distance_m``, ``reward``, ``success`` and, when known,
        ``rejected`` (the smoother rejected the answer as an outlier: a grey cross at its
        value).
    """
    import matplotlib

    matplotlib.use('Agg', force=False)
    from matplotlib.figure import Figure

    t = (np.asarray(stamps_ns, dtype=np.float64) - (stamps_ns[0] if len(stamps_ns) else 0)) / 1e9

    def array(values: Sequence[float | None]) -> np.ndarray:
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    raw = array([r.distance_raw_m for r in records])
    smoothed = array([r.distance_m for r in records])
    reward = array([r.reward for r in records])
    no_number = ~np.isfinite(raw)
    rejected = np.array([bool(getattr(r, 'rejected', False)) for r in records],
                        dtype=bool) & ~no_number
    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(t, array(truth_centre), 'k-', lw=1.5, label='true centre distance')
    top.plot(t, array(truth_surface), 'k--', lw=1, label='true surface distance')
    top.plot(t, raw, 'o', ms=3, color='tab:orange', alpha=0.7, label='answer (parsed)')
    top.plot(t, smoothed, '-', color='tab:blue', lw=1.5, label='smoothed')
    if rejected.any():
        top.plot(t[rejected], raw[rejected], 'x', color='tab:gray', ms=6,
                 label='answer rejected as an outlier')
    if no_number.any():
        top.plot(t[no_number], np.zeros(int(no_number.sum())), 'x', color='tab:red', ms=5,
                 label='no number in answer')
    top.set_ylabel('distance (m)')
    top.legend(loc='upper right', fontsize=7)
    top.set_title(title, fontsize=9)
    top.grid(alpha=0.3)
    bottom.plot(t, reward, '-', color='tab:green', lw=1.5, label='reward')
    success = np.array([r.success for r in records], dtype=bool)
    if success.any():
        bottom.plot(t[success], reward[success], '.', color='tab:purple', label='success')
    bottom.set_xlabel('time (s)')
    bottom.set_ylabel('reward')
    bottom.legend(loc='lower right', fontsize=7)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def summary_markdown(rows: Sequence[dict[str, Any]], total: dict[str, Any]) -> str:
    """Return the per-bag table plus a mean row as markdown."""
    head = ('| bag | frames | numeric | MAE (m) | med. rel. err | smoothed MAE (m) | '
            'Spearman | Kendall tau | success P | success R |')
    lines = [head, '|' + '---|' * 10]
    for row in rows:
        lines.append(
            f"| {row['bag_name']} | {row['frames']} | {_fmt(row['numeric_share'], 2)} | "
            f"{_fmt(row['mae_m'])} | {_fmt(row['median_rel_error'])} | "
            f"{_fmt(row['smoothed_mae_m'])} | {_fmt(row['spearman'])} | "
            f"{_fmt(row['kendall_tau'])} | {_fmt(row['success_precision'], 2)} | "
            f"{_fmt(row['success_recall'], 2)} |")

    def mean(key: str) -> Any:
        return total[key]['mean'] if isinstance(total.get(key), dict) else None

    lines.append(
        f"| **mean of {total['episodes']}** | {_fmt(mean('frames'), 1)} | "
        f"{_fmt(mean('numeric_share'), 2)} | {_fmt(mean('mae_m'))} | "
        f"{_fmt(mean('median_rel_error'))} | {_fmt(mean('smoothed_mae_m'))} | "
        f"{_fmt(mean('spearman'))} | {_fmt(mean('kendall_tau'))} | "
        f"{_fmt(total.get('success_precision'), 2)} (pooled) | "
        f"{_fmt(total.get('success_recall'), 2)} (pooled) |")
    return '\n'.join(lines) + '\n'


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically."""
    _write_atomic(path, text.encode('utf-8'))
    return path


# -- relabelled bag ----------------------------------------------------------------------------
def _store_for(bag: Any) -> Any:
    """Return a Jazzy typestore extended with the bag's own message definitions."""
    from rosbags.typesys import get_types_from_msg

    from spatialvlm_ros.bags.writer import get_typestore

    store = get_typestore()
    extra: dict[str, Any] = {}
    for msgtype, (fmt, text) in bag.msgdefs.items():
        if msgtype not in store.types and fmt == 'MSG':
            extra.update(get_types_from_msg(text, msgtype))
    if extra:
        store.register(extra)  # get_typestore() returns a new store each call
    return store


def write_relabelled_bag(source_path: Path, out_path: Path, headers: Sequence[tuple[int, str]],
                         records: Sequence[Any], subject: str, target: str,
                         overwrite: bool = False) -> dict[str, Any]:
    """
    Copy a bag with the reward topics added (offline relabelling).

    Every original message is copied byte for byte (after any zstd decompression; the copy is
    uncompressed) with its topic, type and timestamp; for each scored image the messages of
    :data:`~spatialvlm_ros.replay.topics.REWARD_TOPICS` are added with the image's header
    (stamp and frame id) and the image stamp as bag timestamp. metadata.yaml's ``custom_data``
    and an ``episode.json`` sidecar are kept. Storage (sqlite3 / mcap) follows the source.

    :param headers: per record, the source image's ``(stamp_ns, frame_id)``.
    :param subject: the subject phrase (recorded in ``spatialvlm/result``).
    :param target: the target phrase (recorded in ``spatialvlm/result``).
    :return: message counts ``{'original': n, 'added': m, 'topics': {topic: count}}``.
    :raise BagExistsError: ``out_path`` exists and ``overwrite`` is False.
    :raise BagError: the source cannot be read or the copy cannot be written.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    from spatialvlm_ros.bags.reader import open_bag
    from spatialvlm_ros.bags.topics import SIDECAR_NAME

    if len(headers) != len(records):
        raise ValueError('headers and records must have the same length')
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise BagExistsError(f'{out_path} exists; pass overwrite to replace it')
    clash = [s.name for s in REWARD_TOPICS.values()]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_path.name}.', suffix='.tmp',
                                    dir=out_path.parent))
    counts: dict[str, int] = {}
    try:
        tmp_bag = staging / out_path.name
        with open_bag(source_path) as bag:
            taken = sorted(set(clash) & set(bag.topics))
            if taken:
                raise BagError(f'{bag.path} already has reward topic(s) {taken}; replay the '
                               f'original bag instead')
            store = _store_for(bag)
            types = store.types
            plugin = StoragePlugin.MCAP if bag.storage == 'mcap' else StoragePlugin.SQLITE3
            added = []  # (stamp, key, message)
            for (stamp, frame_id), record in zip(headers, records, strict=True):
                header = types['std_msgs/msg/Header'](
                    stamp=types['builtin_interfaces/msg/Time'](sec=stamp // 10**9,
                                                               nanosec=stamp % 10**9),
                    frame_id=frame_id)
                for key, msg in build_messages(record, header, types, subject, target).items():
                    added.append((int(stamp), key, msg))
            added.sort(key=lambda item: item[0])
            try:
                with Writer(tmp_bag, version=Writer.VERSION_LATEST,
                            storage_plugin=plugin) as writer:
                    for key, value in bag.custom_data.items():
                        writer.set_custom_data(str(key), str(value))
                    conns: dict[tuple[str, str], Any] = {}
                    for name, info in sorted(bag.topics.items()):
                        if info.msgtype not in types:
                            raise BagError(f'{bag.path}: no definition of {info.msgtype} '
                                           f'(topic {name}); cannot copy it')
                        conns[(name, info.msgtype)] = writer.add_connection(
                            name, info.msgtype, typestore=store)
                    out = {key: writer.add_connection(spec.name, spec.msgtype, typestore=store)
                           for key, spec in REWARD_TOPICS.items()}
                    pending = iter(added)
                    nxt = next(pending, None)
                    for msg in bag.messages():
                        while nxt is not None and nxt[0] <= msg.timestamp_ns:
                            _write_added(writer, out, store, nxt, counts)
                            nxt = next(pending, None)
                        conn = conns.get((msg.topic, msg.msgtype))
                        if conn is None:
                            raise BagError(f'{bag.path}: message of undeclared topic '
                                           f'{msg.topic} ({msg.msgtype})')
                        writer.write(conn, msg.timestamp_ns, msg.data)
                        counts[msg.topic] = counts.get(msg.topic, 0) + 1
                    while nxt is not None:
                        _write_added(writer, out, store, nxt, counts)
                        nxt = next(pending, None)
            except WriterError as exc:
                raise BagError(f'cannot write bag {out_path}: {exc}') from exc
            src_dir = bag.path if bag.path.is_dir() else bag.path.parent
        sidecar = src_dir / SIDECAR_NAME
        if sidecar.is_file():
            shutil.copy2(sidecar, tmp_bag / SIDECAR_NAME)
        if out_path.exists():
            os.replace(out_path, staging / (out_path.name + '.old'))
        os.replace(tmp_bag, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reward_names = set(clash)
    return {'original': sum(v for k, v in counts.items() if k not in reward_names),
            'added': sum(v for k, v in counts.items() if k in reward_names),
            'topics': dict(sorted(counts.items()))}


def _write_added(writer: Any, conns: dict[str, Any], store: Any, item: tuple[int, str, Any],
                 counts: dict[str, int]) -> None:
    stamp, key, msg = item
    spec = REWARD_TOPICS[key]
    writer.write(conns[key], stamp, store.serialize_cdr(msg, spec.msgtype))
    counts[spec.name] = counts.get(spec.name, 0) + 1

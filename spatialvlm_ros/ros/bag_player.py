"""
Live replay: a bag played onto topics at its recorded rate, the reward node's outputs recorded.

This is the live mode of the offline replay (``spatialvlm replay --live``): instead of calling
the estimator per frame, the frames go over DDS to a real :class:`RewardNode` running at its
own pace, so the records show what a robot would get (latest-frame-only: frames that arrive
during inference are dropped).

:class:`BagPlayer` reads the bag with :func:`spatialvlm_ros.bags.reader.iter_messages` and
publishes each message's raw CDR bytes (no deserialisation) on the same topic name, paced by
the bag timestamps divided by ``rate``. Messages sharing a timestamp are published together,
the colour image last, so a frame's ground truth, camera info and depth are out before it.
:class:`ResultRecorder` subscribes to the node's ``spatialvlm/result`` (stamped with the source
frame's header) and keeps one record per processed frame; :func:`write_records_csv` writes
them. Playing starts once every link the replay relies on (each played topic the node
subscribes to, and the node's result to the recorder) is matched at both ends
(:func:`wait_until_matched`), so the first frame is delivered like the others.

Everything runs in one process on its own rclpy context, in the domain of ``ROS_DOMAIN_ID`` or
a random one (so a replay never talks to a robot on the default domain).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
import threading
import time
from typing import Any, Iterable, Iterator

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.reader import _episode_metadata, iter_messages, open_bag
from spatialvlm_ros.replay.topics import RESULT_KEYS, REWARD_TOPICS
from spatialvlm_ros.ros.conversions import message_class
from spatialvlm_ros.ros.estimators import EstimatorFactory
from spatialvlm_ros.ros.harness import RosHarness
from spatialvlm_ros.ros.reward_node import RewardNode

RECORD_FIELDS = RESULT_KEYS
"""CSV columns, in order (the key/values of the node's ``spatialvlm/result``)."""

DEFAULT_TOPICS = ('rgb', 'camera_info', 'depth', 'distance_centre')
"""Bag layout keys played by default (the colour image, what the node may use with it)."""

MATCH_TIMEOUT_S = 10.0
"""Default seconds to wait for the publishers and subscriptions to match before playing."""


def _groups(messages: Iterable[Any]) -> Iterator[list[Any]]:
    """Yield runs of messages sharing a timestamp."""
    group: list[Any] = []
    for msg in messages:
        if group and msg.timestamp_ns != group[0].timestamp_ns:
            yield group
            group = []
        group.append(msg)
    if group:
        yield group


class BagPlayer(Node):
    """
    Publish a bag's messages (raw CDR bytes) at the recorded rate, in a background thread.

    :param bag: the bag folder or file.
    :param topics: bag topic names to play (on the same names).
    :param rate: playback speed factor (2 = twice as fast).
    :param image_topic: the topic published last within a timestamp.
    """

    def __init__(self, bag: str | os.PathLike[str], topics: Iterable[str], rate: float = 1.0,
                 image_topic: str = layout.TOPICS['rgb'].name, **kwargs: Any) -> None:
        super().__init__('spatialvlm_bag_player', **kwargs)
        if not rate > 0:
            raise ValueError(f'rate must be > 0, got {rate}')
        self.bag = Path(bag)
        self.topics = tuple(topics)
        self.rate = float(rate)
        self.image_topic = image_topic
        self._pubs: dict[str, Any] = {}
        self.published = 0
        self.images = 0
        self.error = ''  # why playing stopped early (empty: played to the end)
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def publishers(self) -> dict[str, Any]:
        """Return the publishers created so far, by topic name."""
        return dict(self._pubs)

    def publisher_for(self, topic: str, msgtype: str) -> Any:
        """Return (creating it once) the publisher of ``topic``."""
        if topic not in self._pubs:
            self._pubs[topic] = self.create_publisher(message_class(msgtype), topic,
                                                      QoSProfile(depth=10))
        return self._pubs[topic]

    def prepare(self) -> None:
        """Create the publishers from the bag's first messages (before subscribers wait)."""
        seen: set[str] = set()
        for msg in iter_messages(self.bag, self.topics):
            if msg.topic not in seen:
                self.publisher_for(msg.topic, msg.msgtype)
                seen.add(msg.topic)
            if len(seen) == len(self.topics):
                break

    def start(self) -> None:
        """Start playing in a background thread."""
        self._thread = threading.Thread(target=self._play, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop playing and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _play(self) -> None:
        try:
            start_wall: float | None = None
            first_ns = 0
            for group in _groups(iter_messages(self.bag, self.topics)):
                if self._stop.is_set():
                    break
                stamp = group[0].timestamp_ns
                if start_wall is None:
                    start_wall, first_ns = time.monotonic(), stamp
                due = start_wall + (stamp - first_ns) / 1e9 / self.rate
                if self._stop.wait(max(due - time.monotonic(), 0.0)):
                    break
                group.sort(key=lambda m: m.topic == self.image_topic)  # image last
                for msg in group:
                    self.publisher_for(msg.topic, msg.msgtype).publish(bytes(msg.data))
                    self.published += 1
                    self.images += msg.topic == self.image_topic
        except Exception as exc:  # kept for the caller, which raises it after the node stops
            self.error = f'playing {self.bag} failed after {self.images} images: {exc}'
            self.get_logger().error(self.error)
        finally:
            self.finished.set()


def replay_links(player: BagPlayer, node: RewardNode,
                 recorder: ResultRecorder) -> list[tuple[Any, Any]]:
    """
    Return the (publisher, subscription) pairs a live replay relies on.

    Each node input subscription on a topic the player publishes (after ``prepare``), and the
    node's ``spatialvlm/result`` publisher with the recorder's subscription.
    """
    publishers = player.publishers
    links = [(publishers[sub.topic_name], sub) for sub in node.input_subscriptions()
             if sub.topic_name in publishers]
    result = node.output_publisher('result')
    if result is not None:
        links.append((result, recorder.subscription))
    return links


def wait_until_matched(links: Iterable[tuple[Any, Any]], timeout_s: float) -> None:
    """
    Wait until every (publisher, subscription) pair is matched at both ends.

    Both ends must report the match (``get_subscription_count`` of the publisher and
    ``get_publisher_count`` of the subscription): a reliable sample published before the
    subscription has matched the publisher may be lost.

    :raise RuntimeError: naming the topics still unmatched after ``timeout_s`` seconds.
    """
    links = list(links)

    def pending() -> list[str]:
        return sorted({pub.topic_name for pub, sub in links
                       if pub.get_subscription_count() < 1 or sub.get_publisher_count() < 1})

    if not RosHarness.wait_for(lambda: not pending(), timeout_s):
        raise RuntimeError(f'publishers and subscriptions not matched after {timeout_s:g} s '
                           f'on {", ".join(pending())} (discovery blocked? check '
                           'ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE)')


def parse_result(msg: DiagnosticArray) -> dict[str, Any]:
    """Return a typed record (see :data:`RECORD_FIELDS`) from a ``spatialvlm/result`` message."""
    values = {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}
    record: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        text = values.get(name, '')
        if name == 'stamp_ns':
            record[name] = int(text) if text else 0
        elif name in ('distance_raw', 'distance', 'reward', 'latency_ms'):
            record[name] = float(text) if text else math.nan
        elif name in ('success', 'valid', 'stale', 'rejected'):
            record[name] = text == 'True'
        else:
            record[name] = text
    return record


class ResultRecorder:
    """Keep one record per ``spatialvlm/result`` message of a reward node (thread-safe)."""

    def __init__(self, node: Node, topic: str = REWARD_TOPICS['result'].name) -> None:
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.subscription = node.create_subscription(DiagnosticArray, topic, self._store,
                                                     QoSProfile(depth=100))

    def _store(self, msg: DiagnosticArray) -> None:
        record = parse_result(msg)
        record['received_s'] = time.time()
        with self._lock:
            self.records.append(record)

    def __len__(self) -> int:
        with self._lock:
            return len(self.records)

    def snapshot(self) -> list[dict[str, Any]]:
        """Return a copy of the records so far."""
        with self._lock:
            return [dict(r) for r in self.records]


def write_records_csv(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as CSV (columns :data:`RECORD_FIELDS` plus ``received_s``); return path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(RECORD_FIELDS) + ['received_s']
    with path.open('w', newline='', encoding='utf-8') as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        for record in records:
            writer.writerow(record)
    return path


def run_live_replay(bag: str | os.PathLike[str], node_params: dict[str, Any] | None = None, *,
                    estimator_factory: EstimatorFactory | None = None, rate: float = 1.0,
                    topics: Iterable[str] = DEFAULT_TOPICS,
                    csv_path: str | os.PathLike[str] | None = None,
                    settle_s: float = 10.0, report: dict[str, Any] | None = None,
                    match_timeout_s: float = MATCH_TIMEOUT_S) -> list[dict[str, Any]]:
    """
    Play ``bag`` live through a reward node and return its records (one per processed frame).

    :param bag: an episode bag (layout of :mod:`spatialvlm_ros.bags.topics`).
    :param node_params: reward node parameters (e.g. ``{'estimator': 'oracle', 'target':
        'the red mug'}``); ``use_depth`` is honoured, the inputs are remapped to the bag's
        topics.
    :param estimator_factory: injected into the node (default: the node's own).
    :param rate: playback speed factor.
    :param topics: bag layout keys to play (missing ones are skipped).
    :param csv_path: if given, the records are also written there.
    :param settle_s: after the last message, how long to wait for the last frame's outputs.
    :param report: if given, filled with ``frames_played``, ``node`` (the node's final
        diagnostics) and ``wall_s``.
    :param match_timeout_s: how long to wait for the player, node and recorder to match.
    :raise RuntimeError: if the node fails to configure / activate, or the topics do not match
        within ``match_timeout_s``.
    """
    params = dict(node_params or {})
    wanted = [layout.TOPICS[key].name for key in topics if key in layout.TOPICS]
    with open_bag(bag) as opened:
        present = set(opened.topics)
        meta = _episode_metadata(opened)
    if meta.get('target_id'):
        params.setdefault('oracle_object_id', str(meta['target_id']))
    play = [name for name in wanted if name in present]
    rgb = layout.TOPICS['rgb'].name
    if rgb not in play:
        raise ValueError(f'{bag}: no {rgb} messages to play; topics: {sorted(present)}')
    remaps = ['image:=' + rgb, 'camera_info:=' + layout.TOPICS['camera_info'].name,
              'depth:=' + layout.TOPICS['depth'].name,
              'ground_truth_distance:=' + layout.TOPICS['distance_centre'].name]
    params.setdefault('input_reliability', 'reliable')
    params.setdefault('autostart', True)
    from rclpy.parameter import Parameter

    overrides = [Parameter(name, value=value) for name, value in params.items()]
    started = time.monotonic()
    with RosHarness() as session:
        node = session.add(RewardNode(
            estimator_factory, context=session.context, parameter_overrides=overrides,
            cli_args=['--ros-args'] + [arg for r in remaps for arg in ('-r', r)]))
        node.trigger_configure()
        if node.lifecycle_state != 'inactive':
            raise RuntimeError('the reward node failed to configure (see its log)')
        node.trigger_activate()
        if node.lifecycle_state != 'active':
            raise RuntimeError('the reward node failed to activate (see its log)')
        player = session.add(BagPlayer(bag, play, rate=rate, image_topic=rgb,
                                       context=session.context))
        recorder = ResultRecorder(player)
        player.prepare()
        wait_until_matched(replay_links(player, node, recorder), match_timeout_s)
        player.start()
        player.finished.wait()
        stats = node.stats

        def settled() -> bool:
            c = stats.counts
            handled = (c['frames_processed'] + c['frames_dropped'] + c['malformed_messages']
                       + c['late_results_dropped'] + c['superseded_results_dropped'])
            return (c['frames_received'] >= player.images and handled >= c['frames_received']
                    and len(recorder) >= c['frames_processed'])

        session.wait_for(settled, settle_s)
        records = recorder.snapshot()
        if report is not None:
            report.update({'frames_played': player.images, 'node': node.diagnostics(),
                           'wall_s': time.monotonic() - started})
        node.trigger_deactivate()
    if csv_path is not None:
        write_records_csv(records, csv_path)
    if player.error:  # the partial results are kept, but do not pass for a whole run
        raise RuntimeError(f'{player.error}; the {len(records)} results up to then are in '
                           f'{csv_path or "no CSV"}')
    return records


def main(argv: list[str] | None = None) -> int:
    """
    Play an episode bag live through the reward node; write its outputs (CSV) and a report.

    ``python -m spatialvlm_ros.ros.bag_player BAG --csv OUT.csv [--report OUT.json]``: the
    node runs in this process on real DDS with the shipped default model (or
    ``--model-folder``); the bag's images are published at their recorded rate.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog='python -m spatialvlm_ros.ros.bag_player',
                                     description=main.__doc__)
    parser.add_argument('bag', help='episode bag folder')
    parser.add_argument('--csv', required=True, help='CSV of the node outputs per frame')
    parser.add_argument('--report', help='JSON report (frames played, node diagnostics)')
    parser.add_argument('--estimator', default='vlm', choices=('vlm', 'oracle'))
    parser.add_argument('--model-folder', default='', help="local VLM folder ('' = default)")
    parser.add_argument('--subject', default='the gripper', help='subject phrase')
    parser.add_argument('--target', help='target phrase (default: the node default)')
    parser.add_argument('--samples', type=int, help="answers per frame (default: the node's)")
    parser.add_argument('--temperature', type=float,
                        help="sampling temperature when --samples > 1 (default: the node's)")
    parser.add_argument('--question-template',
                        help="question with {subject} and {target} (default: the node's)")
    parser.add_argument('--number-decoding', choices=('median', 'greedy'),
                        help="how one answer per frame is decoded (default: the node's)")
    parser.add_argument('--mirror-average', action='store_true',
                        help="average each frame's distance with its mirror image's")
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    args = parser.parse_args(argv)
    params: dict[str, Any] = {'estimator': args.estimator, 'model_folder': args.model_folder,
                              'subject': args.subject}
    if args.mirror_average:
        params['mirror_average'] = True
    for name, value in (('target', args.target), ('samples_per_frame', args.samples),
                        ('sampling_temperature', args.temperature),
                        ('question_template', args.question_template),
                        ('number_decoding', args.number_decoding)):
        if value is not None:
            params[name] = value
    report: dict[str, Any] = {}
    try:
        records = run_live_replay(args.bag, params, rate=args.rate, csv_path=args.csv,
                                  report=report)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f'live replay failed: {exc}', file=sys.stderr)
        return 1
    report['records'] = len(records)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=str),
                                     encoding='utf-8')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

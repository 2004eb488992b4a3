"""Every rosbag2 test bag in ../shared/data reads completely; corrupt bags fail clearly."""

from __future__ import annotations

from pathlib import Path
import shutil
import sqlite3

import pytest
from rosbags.rosbag2 import Reader

from spatialvlm_ros.bags import commands
from spatialvlm_ros.bags.errors import (
    BagCorruptError,
    BagError,
    BagNotFoundError,
    MessageCountMismatchError,
    UnsupportedSerializationError,
)
from spatialvlm_ros.bags.reader import bag_info, find_bags, open_bag

ROOT = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'rosbag2_test_bags'
pytestmark = pytest.mark.skipif(not ROOT.is_dir(),
                                reason=f'shared rosbag2 test bags not found at {ROOT}')

# bag (relative to ROOT) -> (storage, metadata version or None, messages the storage holds)
EXPECTED: dict[str, tuple[str, int | None, int]] = {
    'from_history/78b3711a6c/rosbag2_tests/resources/compressed_bag': ('sqlite3', 4, 0),
    'from_history/84baffa215/rosbag2_tests/resources/cdr_test': ('sqlite3', 1, 7),
    'from_history/c7c7954d4d/rosbag2_tests/resources/reindex_test_bags/file_compression':
        ('sqlite3', None, 775),
    'from_history/c7c7954d4d/rosbag2_tests/resources/reindex_test_bags/message_compression':
        ('sqlite3', None, 1127),
    'from_history/c7c7954d4d/rosbag2_tests/resources/reindex_test_bags/multiple_files':
        ('sqlite3', None, 52),
    'ros2bag/test/resources/empty_bag': ('sqlite3', 4, 0),
    'rosbag2_cpp/test/rosbag2_cpp/bags/only_services.mcap': ('mcap', None, 12),
    'rosbag2_cpp/test/rosbag2_cpp/bags/only_topics.mcap': ('mcap', None, 7),
    'rosbag2_cpp/test/rosbag2_cpp/bags/topics_and_services.db3': ('sqlite3', None, 13),
    'rosbag2_cpp/test/rosbag2_cpp/bags/topics_and_services.mcap': ('mcap', None, 13),
    'rosbag2_py/test/resources/mcap/convert_a': ('mcap', 5, 150),
    'rosbag2_py/test/resources/mcap/convert_b': ('mcap', 5, 75),
    'rosbag2_py/test/resources/mcap/reindex_test_bags/multiple_files': ('mcap', None, 3177),
    'rosbag2_py/test/resources/mcap/talker': ('mcap', 4, 20),
    'rosbag2_py/test/resources/mcap/wbag': ('mcap', 4, 6074),
    'rosbag2_py/test/resources/sqlite3/convert_a': ('sqlite3', 5, 150),
    'rosbag2_py/test/resources/sqlite3/convert_b': ('sqlite3', 5, 75),
    'rosbag2_py/test/resources/sqlite3/reindex_test_bags/multiple_files':
        ('sqlite3', None, 3177),
    'rosbag2_py/test/resources/sqlite3/talker': ('sqlite3', 4, 20),
    'rosbag2_py/test/resources/sqlite3/wbag': ('sqlite3', 4, 6074),
    'rosbag2_tests/resources/mcap/bag_with_topics_and_service_events': ('mcap', 8, 10),
    'rosbag2_tests/resources/mcap/cdr_test': ('mcap', 7, 7),
    'rosbag2_tests/resources/sqlite3/bag_with_topics_and_service_events': ('sqlite3', 8, 10),
    'rosbag2_tests/resources/sqlite3/cdr_test': ('sqlite3', 7, 7),
    'rosbag2_transport/test/resources/mcap/rewriter_a': ('mcap', 5, 150),
    'rosbag2_transport/test/resources/mcap/rewriter_b': ('mcap', 6, 75),
    'rosbag2_transport/test/resources/mcap/test_bag_for_seek': ('mcap', 6, 5),
    'rosbag2_transport/test/resources/sqlite3/rewriter_a': ('sqlite3', 5, 150),
    'rosbag2_transport/test/resources/sqlite3/rewriter_b': ('sqlite3', 5, 75),
    'rosbag2_transport/test/resources/sqlite3/test_bag_for_seek': ('sqlite3', 4, 5),
}
WRONG_FORMAT = ['rosbag2_tests/resources/mcap/wrong_rmw_test',
                'rosbag2_tests/resources/sqlite3/wrong_rmw_test']
TALKER = ROOT / 'rosbag2_py/test/resources/sqlite3/talker'


def test_find_bags_finds_every_bag() -> None:
    found = {str(p.relative_to(ROOT)) for p in find_bags([ROOT])}
    assert found == set(EXPECTED) | set(WRONG_FORMAT)


@pytest.mark.parametrize('rel', sorted(EXPECTED))
def test_every_shared_bag_reads_completely(rel: str) -> None:
    storage, version, stored = EXPECTED[rel]
    info = bag_info(ROOT / rel)
    assert (info['storage'], info['metadata_version']) == (storage, version)
    assert info['messages_stored'] == stored
    assert info['messages_read'] == stored
    assert sum(t['count_read'] for t in info['topics'].values()) == stored


@pytest.mark.parametrize('rel', sorted(r for r in EXPECTED if 'sqlite3' in EXPECTED[r][0]))
def test_sqlite_counts_match_sqlite_itself(rel: str, tmp_path: Path) -> None:
    """The expected counts are what SELECT COUNT(*) says (decompressing .zstd files)."""
    path = ROOT / rel
    with open_bag(path) as bag:
        files = [sf.readable for sf in bag.files]
        total = 0
        for f in files:
            conn = sqlite3.connect(f'file:{f}?mode=ro&immutable=1', uri=True)
            total += conn.execute('SELECT COUNT(*) FROM messages').fetchone()[0]
            conn.close()
    assert total == EXPECTED[rel][2]


def test_talker_trap_rosbags_yields_nothing_we_read_all() -> None:
    with Reader(TALKER) as reader:
        assert sum(1 for _ in reader.messages()) == 0  # the rosbags 0.11.9 quirk
        assert reader.message_count == 20
    with open_bag(TALKER) as bag:
        msgs = list(bag.messages())
        assert len(msgs) == 20
        text = [bag.deserialize(m.data, m.msgtype).data for m in msgs if m.topic == '/topic']
    assert len(text) == 10 and all(t.startswith('Hello, world!') for t in text)


def test_metadata_version_1() -> None:
    path = ROOT / 'from_history/84baffa215/rosbag2_tests/resources/cdr_test'
    with pytest.raises(Exception):  # noqa: B017 - rosbags rejects v1 outright
        with Reader(path) as reader:
            list(reader.messages())
    with open_bag(path) as bag:
        assert bag.version == 1
        assert {t: i.count_metadata for t, i in bag.topics.items() if i.count_metadata} == {
            '/test_topic': 3, '/array_topic': 4}
        assert len(list(bag.messages())) == 7


def test_loose_files_and_compressed_messages() -> None:
    base = ROOT / 'from_history/c7c7954d4d/rosbag2_tests/resources/reindex_test_bags'
    with open_bag(base / 'message_compression') as bag:
        assert bag.version is None and len(bag.files) == 4
        msg = next(m for m in bag.messages(['/topic']))
        assert bag.deserialize(msg.data, msg.msgtype).data.startswith('Hello')
    one = base / 'file_compression' / 'file_compression_0.db3.zstd'
    assert bag_info(one)['messages_read'] > 0


@pytest.mark.parametrize('rel', WRONG_FORMAT)
def test_unknown_serialization_format(rel: str) -> None:
    with pytest.raises(UnsupportedSerializationError, match="'wrong_format'") as err:
        open_bag(ROOT / rel)
    assert 'wrong_rmw_test' in str(err.value)
    with open_bag(ROOT / rel, allow_unknown_serialization=True) as bag:
        assert bag.message_count == 7


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('*-shm', '*-wal'))
    for f in dst.rglob('*'):
        f.chmod(0o644 if f.is_file() else 0o755)
    dst.chmod(0o755)
    return dst


@pytest.mark.parametrize('name', ['talker.db3', 'talker.mcap'])
def test_truncated_storage(name: str, tmp_path: Path) -> None:
    storage = 'sqlite3' if name.endswith('db3') else 'mcap'
    bag = _copy(ROOT / f'rosbag2_py/test/resources/{storage}/talker', tmp_path / 'bag')
    data = (bag / name).read_bytes()
    (bag / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(BagCorruptError, match=name):
        bag_info(bag)


@pytest.mark.parametrize('name', ['junk.db3', 'junk.mcap', 'empty.mcap'])
def test_garbage_storage_files(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(b'' if name.startswith('empty') else b'not a bag at all ' * 100)
    with pytest.raises(BagCorruptError, match=name):
        bag_info(path)


def test_metadata_naming_a_missing_file(tmp_path: Path) -> None:
    bag = _copy(TALKER, tmp_path / 'bag')
    (bag / 'talker.db3').unlink()
    with pytest.raises(BagCorruptError, match='storage files missing'):
        open_bag(bag)


def test_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagNotFoundError, match='neither metadata.yaml'):
        open_bag(tmp_path)
    with pytest.raises(BagNotFoundError, match='does not exist'):
        open_bag(tmp_path / 'nope')


def test_wal_contents_are_not_lost(tmp_path: Path) -> None:
    bag = _copy(TALKER, tmp_path / 'bag')
    db = bag / 'talker.db3'
    conn = sqlite3.connect(db)
    conn.execute('PRAGMA journal_mode=WAL')
    conn.execute('PRAGMA wal_autocheckpoint=0')
    conn.execute('INSERT INTO messages(topic_id, timestamp, data) SELECT topic_id, '
                 'timestamp + 1, data FROM messages')
    conn.commit()
    keep = sqlite3.connect(db)  # hold the WAL open so it is not checkpointed on close
    shutil.copy(db, tmp_path / 'db'), shutil.copy(f'{db}-wal', tmp_path / 'wal')
    keep.close(), conn.close()
    shutil.copy(tmp_path / 'db', db), shutil.copy(tmp_path / 'wal', f'{db}-wal')
    assert Path(f'{db}-wal').stat().st_size > 0
    info = bag_info(bag)
    assert info['messages_stored'] == info['messages_read'] == 40


def test_count_mismatch_is_an_error() -> None:
    with open_bag(TALKER) as bag:
        bag.files[0].count_stored += 1
        with pytest.raises(MessageCountMismatchError, match='read 20 messages but the storage '
                                                            'holds 21'):
            list(bag.messages())


def test_check_command_table() -> None:
    rows = commands.check_bags([str(ROOT / 'rosbag2_py/test/resources/sqlite3'),
                                str(ROOT / 'rosbag2_tests/resources/mcap/wrong_rmw_test')])
    by_name = {Path(r['bag']).name: r for r in rows}
    assert by_name['talker']['status'] == 'OK' and by_name['talker']['rosbags_reader'] == 0
    wrong = by_name['wrong_rmw_test']
    assert wrong['status'] == 'OK' and wrong['messages_read'] == wrong['messages_stored'] == 7
    assert 'raw bytes only' in wrong['reason'] and 'wrong_format' in wrong['reason']
    table = commands.format_table(rows)
    assert '| OK |' in table and 'OK (raw bytes only, not decodable' in table
    assert issubclass(UnsupportedSerializationError, BagError)

"""``spatialvlm bag info|check``: inspect rosbag2 bags and verify none loses messages."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``bag`` command and its ``info`` and ``check`` subcommands."""
    parser = subparsers.add_parser('bag', help='inspect and check rosbag2 bags')
    sub = parser.add_subparsers(dest='bag_command', metavar='SUBCOMMAND', required=True)
    info = sub.add_parser('info', help='summary of one bag (storage, version, topics, counts)')
    info.add_argument('path', help='bag folder, folder of storage files, or .db3/.mcap file')
    info.add_argument('--json', action='store_true', help='print JSON')
    info.set_defaults(func=_info)
    check = sub.add_parser(
        'check', help='find bags under paths and compare messages stored with messages read')
    check.add_argument('paths', nargs='+', help='bags or folders to search recursively')
    check.add_argument('--json', action='store_true', help='print JSON')
    check.set_defaults(func=_check)


def _info(args: argparse.Namespace) -> int:
    from spatialvlm_ros.bags.errors import BagError
    from spatialvlm_ros.bags.reader import bag_info
    from spatialvlm_ros.cli import CommandError, print_result

    try:
        info = bag_info(args.path)
    except BagError as exc:
        raise CommandError(str(exc)) from exc
    lines = [f'path:      {info["path"]}',
             f'storage:   {info["storage"]} (metadata version {info["metadata_version"]})',
             f'files:     {len(info["files"])}',
             f'messages:  {info["messages_read"]} read / {info["messages_stored"]} stored',
             f'duration:  {info["duration_ns"] / 1e9:.3f} s', 'topics:']
    for name, topic in info['topics'].items():
        lines.append(f'  {name}  {topic["type"]}  stored {topic["count_stored"]}  '
                     f'read {topic["count_read"]}')
    print_result(info, args.json, '\n'.join(lines))
    return 0


def check_bags(paths: list[str]) -> list[dict[str, Any]]:
    """One row per bag found under ``paths``: stored vs read counts and a status."""
    from spatialvlm_ros.bags.errors import BagError, UnsupportedSerializationError
    from spatialvlm_ros.bags.reader import (
        bag_info,
        find_bags,
        rosbags_reader_count,
    )

    rows = []
    for bag in find_bags(paths):
        row: dict[str, Any] = {'bag': str(bag), 'storage': None, 'metadata_version': None,
                               'messages_stored': None, 'messages_read': None,
                               'rosbags_reader': rosbags_reader_count(bag)}
        try:
            info = bag_info(bag)
            row.update({k: info[k] for k in ('storage', 'metadata_version', 'messages_stored',
                                             'messages_read')})
            ok = info['messages_read'] == info['messages_stored']
            row['status'] = 'OK' if ok else 'MISMATCH'
            row['reason'] = '' if ok else 'fewer messages read than stored'
            listed = metadata_mismatch(info)
            if ok and listed:  # rows deleted from the storage, or a stale metadata.yaml
                row['status'], row['reason'] = 'MISMATCH', listed
        except UnsupportedSerializationError as exc:
            # Messages we cannot decode are still read as raw bytes and counted, so the check
            # shows that none is lost; decoding them raises this error, as intended.
            info = bag_info(bag, allow_unknown_serialization=True)
            row.update({k: info[k] for k in ('storage', 'metadata_version', 'messages_stored',
                                             'messages_read')})
            ok = info['messages_read'] == info['messages_stored']
            row['status'] = 'OK' if ok else 'MISMATCH'
            row['reason'] = ('raw bytes only, not decodable: '
                             + str(exc).removeprefix(f'{bag}: ').split(';')[0])
        except BagError as exc:
            reason = str(exc).removeprefix(f'{bag}: ')
            row['status'], row['reason'] = 'ERROR', f'{type(exc).__name__}: {reason}'
            try:  # still report what the storage holds where the bag can be opened
                info = bag_info(bag, read=False, allow_unknown_serialization=True)
                row.update({k: info[k] for k in ('storage', 'metadata_version',
                                                 'messages_stored')})
            except BagError:
                pass
        rows.append(row)
    return rows


def metadata_mismatch(info: dict[str, Any]) -> str:
    """
    Return how the storage's message counts differ from ``metadata.yaml``'s ('' if they agree).

    :param info: a ``bags.reader.bag_info`` dict; counts the metadata does not list are not
        compared.
    """
    listed, stored = info.get('messages_metadata'), info.get('messages_stored')
    if listed is not None and stored is not None and listed != stored:
        return f'metadata.yaml lists {listed} messages, the storage holds {stored}'
    for name, topic in info.get('topics', {}).items():
        if topic.get('count_metadata') is not None and \
                topic['count_metadata'] != topic.get('count_stored'):
            return (f'metadata.yaml lists {topic["count_metadata"]} messages on {name}, the '
                    f'storage holds {topic.get("count_stored")}')
    return ''


def _check(args: argparse.Namespace) -> int:
    from spatialvlm_ros.bags.errors import BagError
    from spatialvlm_ros.cli import CommandError, print_result

    try:
        rows = check_bags(args.paths)
    except BagError as exc:
        raise CommandError(str(exc)) from exc
    if not rows:
        raise CommandError(f'no bags found under {args.paths}')
    print_result(rows, args.json, format_table(rows))
    return 0 if all(r['status'] == 'OK' for r in rows) else 1


def format_table(rows: list[dict[str, Any]]) -> str:
    """Format as a markdown table :func:`check_bags` rows."""
    head = ('| bag | storage | metadata version | messages stored | messages read '
            '| plain rosbags Reader | status |')
    lines = [head, '|---|---|---|---|---|---|---|']
    for r in rows:
        status = r['status'] + (f' ({r["reason"]})' if r.get('reason') else '')
        version = r['metadata_version'] if r['metadata_version'] is not None else '-'
        stored = r['messages_stored'] if r['messages_stored'] is not None else '-'
        read = r['messages_read'] if r['messages_read'] is not None else '-'
        plain = r.get('rosbags_reader')
        plain = 'fails' if plain is None else plain
        lines.append(f'| {r["bag"]} | {r["storage"] or "-"} | {version} | {stored} | {read} '
                     f'| {plain} | {status} |')
    return '\n'.join(lines)

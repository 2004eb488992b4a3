"""
The ``spatialvlm`` command line: thin wrappers over the subpackages.

Each subcommand lives beside the code it wraps, in a ``commands`` module exposing
``register(subparsers)``; handlers import their heavy dependencies only when they run, so
``spatialvlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from pathlib import Path
import sys
from typing import Any, Sequence

# subcommand name -> module defining register(subparsers)
COMMANDS: dict[str, str] = {
    'sim': 'spatialvlm_ros.sim.commands',
    'bag': 'spatialvlm_ros.bags.commands',
    'demo': 'spatialvlm_ros.demo',
    'synth': 'spatialvlm_ros.synth.commands',
    'train': 'spatialvlm_ros.train.commands',
    'train-default': 'spatialvlm_ros.train.default',
    'eval': 'spatialvlm_ros.evaluate.commands',
    'ask': 'spatialvlm_ros.evaluate.ask',
    'replay': 'spatialvlm_ros.replay.commands',
}


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog='spatialvlm',
        description='SpatialVLM for ROS 2: simulated data, bags, data engine, model, reward.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def output_file(path: str | os.PathLike[str], what: str) -> Path:
    """
    Return ``path`` as a file a command may write once its work is done, checked now.

    Call it before the long work, so a bad ``--out`` never throws that work away: its folder is
    created, and a path that is a folder, or whose parent is a file, is a :class:`CommandError`.

    :param what: what the file is for, named in the error ('--out').
    """
    path = Path(path)
    if path.is_dir():
        raise CommandError(f'{what}: {path} is a folder, not a file')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CommandError(f'{what}: {path.parent} is a file, not a folder') from None
    except OSError as exc:
        raise CommandError(f'{what}: cannot create {path.parent}: {exc.strerror}') from None
    return path


def output_folder(path: str | os.PathLike[str], what: str) -> Path:
    """
    Return ``path`` as a folder a command may write into, checked before its work.

    :raises CommandError: when ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f'{what}: {path} is a file, not a folder')
    return path


def print_result(result: Any, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or the human-readable ``text``."""
    if as_json:  # strict JSON: a NaN or infinite number (no value) is null
        print(json.dumps(_finite(result), indent=2, sort_keys=True, default=_json_default,
                         allow_nan=False))
    else:
        print(text)


def _finite(value: Any) -> Any:
    """Return ``value`` with every non-finite float (in dicts, lists, tuples) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, 'tolist') and not hasattr(value, '__fspath__'):  # numpy scalars, arrays
        return _finite(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, 'tolist'):
        return value.tolist()
    if hasattr(value, '__fspath__'):
        return str(value)
    raise TypeError(f'cannot serialise {type(value).__name__} to JSON')


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spatialvlm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f'spatialvlm {args.command}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'spatialvlm {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    # Run through the imported module so that CommandError is the same class handlers raise.
    from spatialvlm_ros.cli import main as _main

    sys.exit(_main())

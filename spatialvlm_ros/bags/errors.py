"""Errors raised by the bag tools; all derive from :class:`BagError`."""

from __future__ import annotations


class BagError(Exception):
    """A bag cannot be written or read; the message names the problem and the file."""


class BagNotFoundError(BagError, FileNotFoundError):
    """The path holds no bag (no metadata.yaml and no .db3/.mcap storage file)."""


class BagExistsError(BagError, FileExistsError):
    """The output bag exists and overwriting was not asked for."""


class EmptyEpisodeError(BagError, ValueError):
    """An episode without frames cannot be written."""


class BagCorruptError(BagError):
    """A storage file or metadata.yaml is truncated, corrupt or inconsistent."""


class UnsupportedBagError(BagError):
    """A valid bag using a feature this reader does not support (storage, compression)."""


class UnsupportedSerializationError(UnsupportedBagError):
    """A topic's serialization format is not ``cdr``."""


class MissingTopicsError(BagError):
    """Topics the caller needs are not in the bag."""


class MessageCountMismatchError(BagError):
    """Fewer messages were read than the storage holds."""

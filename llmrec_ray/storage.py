"""Where files live: local paths, or any filesystem URI pyarrow knows (s3://, gs://, hdfs://,
file://; `local://` is Ray's "this node's disk" prefix and is read as a local path here).

Input files (the generic loader's interactions/items/users) and Ray Train's checkpoints
(`train.storage_path`) may be URIs. The Feast repository and the embedding cache are directories
on a filesystem every node mounts at the same path (they are renamed into place atomically, which
object stores cannot do): see the README's "On a Ray cluster".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(value: str) -> bool:
    return "://" in value and not value.startswith("local://")


@dataclass(frozen=True)
class Location:
    """A file on some filesystem: `fs` and the path inside it; str() is what the user wrote."""

    fs: pafs.FileSystem
    path: str
    display: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def open(self):
        """A readable stream, decompressed by extension (.gz, .bz2)."""
        return self.fs.open_input_stream(self.path, compression="detect")

    def __str__(self) -> str:
        return self.display


def locate(value: str) -> Location:
    """A path or URI -> Location. A URI whose filesystem is not available (a missing optional
    pyarrow component, no credentials) is a ValueError naming the URI."""
    if value.startswith("local://"):
        value = value[len("local://"):]
    if not is_uri(value):
        path = str(Path(value).expanduser().absolute())
        return Location(pafs.LocalFileSystem(), path, value)
    try:
        fs, path = pafs.FileSystem.from_uri(value)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{value}: cannot open this filesystem URI: {e}") from e
    return Location(fs, path, value)

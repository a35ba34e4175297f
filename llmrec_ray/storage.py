"""Where files live: local paths, or any filesystem URI pyarrow knows (s3://, gs://, hdfs://,
file://; `local://` is Ray's "this node's disk" prefix and is read as a local path here).

Input files (the generic loader's interactions/items/users) and Ray Train's checkpoints
(`train.storage_path`) may be URIs. The Feast repository and the embedding cache are directories
on a filesystem every node mounts at the same path (they are renamed into place atomically, which
object stores cannot do): see the README's "On a Ray cluster".

Files and directories the project replaces are replaced atomically here, one mechanism for all:
`atomic_file` / `write_atomic` for a file, `atomic_dir` for a directory, `sweep` for what a
killed writer leaves.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)


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


# ---- atomic replacement -------------------------------------------------------------------------
# Every file and directory the project replaces goes through `atomic_file` or `atomic_dir`: the
# new content is written beside the target under a dot-name (`.<name>.tmp-<id>`,
# `.<name>.v-<id>`), fsynced, and renamed into place (a rename within one directory is atomic on
# POSIX). `sweep` clears what a killed writer left behind.

GRACE_S = 60.0  # a temp entry or replaced directory younger than this may be in use elsewhere
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|v|old)-[0-9a-f]+(\.[^.]*)?$")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _beside(path: Path, kind: str, suffix: str = "") -> Path:
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}{suffix}"


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file under `root`, then every directory, on disk."""
    for parent, dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(parent) / name)
        _fsync(Path(parent), directory=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` (with `path`'s suffix, for writers that go by it) to write the
    new file to. On a clean exit it is fsynced and renamed over `path`, so a reader, or a crash at
    any moment, finds the old file or the new one, never part of one; on an error it is removed and
    `path` is left as it was.

        with atomic_file(run_dir / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "tmp", path.suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Replace the file `path` with `data` (str as UTF-8) atomically (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A new empty directory to fill; on a clean exit it replaces the directory `path` whole.

    `path` becomes a symlink to the new directory (`.<name>.v-<id>` beside it), flipped by one
    rename, so whoever opens `path` finds the old complete directory or the new one at every
    moment, a crash included. Readers that list a directory and then open its files resolve
    `path` once first (`Path.resolve`): the version they resolved stays whole for `GRACE_S` after
    it is replaced, then a later `atomic_dir` or `sweep` removes it. On an error the new directory
    is removed and `path` is left as it was. `path` may be a plain directory (written before
    this scheme): it is replaced by the symlink in one step where Linux's renameat2 can exchange
    the two, else by two renames that `sweep` completes after a crash between them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    version = _beside(path, "v")
    version.mkdir()
    try:
        yield version
        _fsync_tree(version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    _flip(path, version)
    _sweep_dir(path.parent, GRACE_S)


def _flip(path: Path, version: Path) -> None:
    """Point `path` at `version` (a sibling) in one rename."""
    link = _beside(path, "tmp")
    os.symlink(version.name, link)
    try:
        if path.exists() and not path.is_symlink():
            _swap_out(path, link)
        else:
            old = _version_of(path)
            if old is not None:
                os.utime(old)  # its grace starts now (still current: no sweep takes it before the flip)
            os.replace(link, path)
        _fsync(path.parent, directory=True)
    finally:
        _remove(link)


def _version_of(path: Path) -> Path | None:
    """The `.<name>.v-<id>` sibling the symlink `path` points at (None: anything else)."""
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    match = _LEFTOVER.match(target)
    if "/" in target or not match or match["kind"] != "v" or match["name"] != path.name:
        return None
    return path.parent / target


def _swap_out(path: Path, link: Path) -> None:
    """Put the symlink `link` in the place of the plain directory `path`, which takes a version
    name, to be removed like any replaced version."""
    os.utime(path)  # its grace starts now
    retired = _beside(path, "v")
    if _exchange(link, path):  # one step: `link` now names the old directory
        os.rename(link, retired)
        return
    old = _beside(path, "old")
    os.rename(path, old)  # `path` is missing until the next rename; `sweep` restores `old` if killed here
    os.replace(link, path)
    try:
        os.rename(old, retired)
    except FileNotFoundError:  # a sweep in another process took it meanwhile
        pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE). False where the
    platform or the filesystem (NFS, for one) cannot; any other failure is an OSError."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def sweep(root: str | Path, grace_s: float = GRACE_S) -> None:
    """Clear what killed writers left under `root`: temp files and links, and versions no symlink
    points at (a crash before or after a flip, or a replaced version past its grace), once
    untouched for `grace_s` seconds (younger ones may belong to a write in flight elsewhere); a
    plain directory renamed away by `atomic_dir`'s two-rename fallback goes back to its name."""
    for parent, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        _sweep_dir(Path(parent), grace_s)


def _sweep_dir(parent: Path, grace_s: float) -> None:
    cutoff = time.time() - grace_s
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match:
            continue
        dest = parent / match["name"]
        try:
            if match["kind"] == "old" and not (dest.exists() or dest.is_symlink()):
                os.rename(entry, dest)
                logger.warning("restored %s from an interrupted write", dest)
            elif match["kind"] == "old" or (entry.lstat().st_mtime < cutoff and _version_of(dest) != entry):
                _remove(entry)
        except FileNotFoundError:  # removed by another process meanwhile
            continue


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)

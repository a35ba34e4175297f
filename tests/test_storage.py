"""Atomic replacement (`storage.atomic_file`, `atomic_dir`, `sweep`): a writer killed at any step
leaves the old file or directory or the new one, never neither and never a mix; readers running
beside a writer see one complete version at a time."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from llmrec_ray import storage
from llmrec_ray.storage import atomic_dir, atomic_file, sweep, write_atomic

KILLED = 17
# every filesystem step of a write goes through one of these (the writers below also call
# os.fsync between their own writes, so a kill can land half-way through the content)
STEPS = ("replace", "rename", "symlink", "fsync", "utime", "mkdir", "unlink")


def killed_at(step: int, work) -> int:
    """Run `work()` in a forked child that dies (os._exit, no cleanup) just before its `step`-th
    filesystem step; its exit code: KILLED, or 0 when it finished first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            count = [0]

            def hook(fn):
                def wrapped(*args, **kwargs):
                    count[0] += 1
                    if count[0] == step:
                        os._exit(KILLED)
                    return fn(*args, **kwargs)
                return wrapped

            for name in STEPS:
                setattr(os, name, hook(getattr(os, name)))
            shutil.rmtree = hook(shutil.rmtree)
            storage._exchange = hook(storage._exchange)
            work()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def each_kill(setup, work, check, limit: int = 60) -> int:
    """For step = 1, 2, ...: a fresh `setup(step)` -> state, `work(state)` killed at that step,
    then `check(state, finished)`; until the work finishes unkilled. Returns the steps killed."""
    for step in range(1, limit):
        state = setup(step)
        code = killed_at(step, lambda: work(state))
        assert code in (KILLED, 0), f"the writer failed at step {step} (exit {code})"
        check(state, code == 0)
        if code == 0:
            return step - 1
    pytest.fail(f"the writer did not finish within {limit} steps")


# ---- files --------------------------------------------------------------------------------------

OLD, NEW = b"old " * 1000, b"new " * 1500


def write_in_two_halves(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())  # a step: a kill here leaves half the content in the temp file
        f.write(data[len(data) // 2:])


def test_write_atomic_replaces_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    assert write_atomic(path, '{"a": 1}') == path
    write_atomic(path, b'{"a": 2}')
    assert path.read_text() == '{"a": 2}' and os.listdir(path.parent) == ["summary.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "blend.npz"
    path.write_bytes(OLD)
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".npz"
        tmp.write_bytes(NEW[:10])
        raise RuntimeError("writer failed")
    assert path.read_bytes() == OLD and os.listdir(tmp_path) == ["blend.npz"]


@pytest.mark.parametrize("exists", [True, False])
def test_a_file_write_killed_at_each_step_leaves_old_or_new(tmp_path, exists):
    def setup(step):
        path = tmp_path / f"k{step}" / "model.pt"
        path.parent.mkdir()
        if exists:
            path.write_bytes(OLD)
        return path

    def check(path, finished):
        got = path.read_bytes() if path.exists() else None
        assert got == NEW if finished else got in ((OLD,) if exists else (None,)) + (NEW,)
        sweep(path.parent, grace_s=0)  # what the killed writer left goes; the file stays
        assert os.listdir(path.parent) == ([] if got is None else ["model.pt"])
        assert (path.read_bytes() if path.exists() else None) == got
        write_in_two_halves(path, b"next")  # and the next write works
        assert path.read_bytes() == b"next" and os.listdir(path.parent) == ["model.pt"]

    assert each_kill(setup, lambda path: write_in_two_halves(path, NEW), check) >= 4


# ---- directories --------------------------------------------------------------------------------

OLD_DIR = {"month=2024-01/part-0.parquet": b"old a", "month=2024-02/part-0.parquet": b"old b"}
NEW_DIR = {"month=2024-01/part-0.parquet": b"new a", "month=2024-03/part-0.parquet": b"new c"}


def fill(root: Path, files: dict, sync: bool = False) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with open(root / name, "wb") as f:
            f.write(data)
            if sync:
                os.fsync(f.fileno())  # a step: a kill here leaves part of the files written


def snapshot(path: Path) -> dict | None:
    """Every file under the directory `path` (resolved once, as readers do) -> its bytes."""
    if not path.exists():
        return None
    root = path.resolve()
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_dir(path: Path, files: dict) -> None:
    with atomic_dir(path) as tmp:
        assert not any(tmp.iterdir())
        fill(tmp, files, sync=True)


def test_a_directory_is_replaced_whole(tmp_path):
    path = tmp_path / "item_metadata"
    fill(path, OLD_DIR)  # a plain directory, as older builds left it
    write_dir(path, NEW_DIR)
    assert path.is_symlink() and snapshot(path) == NEW_DIR
    old_version = path.resolve()
    write_dir(path, OLD_DIR)
    assert snapshot(path) == OLD_DIR
    # the replaced version stays for readers that resolved it, until its grace has passed
    assert snapshot(old_version) == NEW_DIR
    sweep(tmp_path)
    assert old_version.exists()
    sweep(tmp_path, grace_s=0)
    assert not old_version.exists() and sorted(os.listdir(tmp_path)) == sorted(
        ["item_metadata", path.resolve().name])


def test_a_failed_directory_write_leaves_the_old_one(tmp_path):
    path = tmp_path / "view"
    write_dir(path, OLD_DIR)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(RuntimeError), atomic_dir(path) as tmp:
        fill(tmp, NEW_DIR)
        raise RuntimeError("writer failed")
    assert snapshot(path) == OLD_DIR and sorted(os.listdir(tmp_path)) == before


def test_a_symlink_of_the_users_own_is_replaced_but_its_target_kept(tmp_path):
    elsewhere = tmp_path / "big_disk" / "view"
    fill(elsewhere, OLD_DIR)
    (tmp_path / "repo").mkdir()
    os.symlink(elsewhere, tmp_path / "repo" / "view")
    write_dir(tmp_path / "repo" / "view", NEW_DIR)
    sweep(tmp_path / "repo", grace_s=0)
    assert snapshot(tmp_path / "repo" / "view") == NEW_DIR and snapshot(elsewhere) == OLD_DIR


@pytest.mark.parametrize("start, exchange", [
    ("version", True),   # the view was written by atomic_dir before: its symlink is flipped
    ("plain", True),     # a plain directory: exchanged with the symlink in one step (renameat2)
    ("plain", False),    # ... where the filesystem cannot exchange: two renames
    ("none", True),      # the first write
])
def test_a_directory_write_killed_at_each_step_leaves_old_or_new(tmp_path, monkeypatch, start, exchange):
    if exchange and start == "plain":
        probe = tmp_path / "probe"
        probe.mkdir()
        (tmp_path / "probe2").mkdir()
        if not storage._exchange(probe, tmp_path / "probe2"):
            pytest.skip("this filesystem cannot exchange two names (renameat2)")
    if not exchange:
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    old = None if start == "none" else OLD_DIR

    def setup(step):
        path = tmp_path / "runs" / f"k{step}" / "view"
        path.parent.mkdir(parents=True)
        if start == "plain":
            fill(path, OLD_DIR)
        elif start == "version":
            write_dir(path, OLD_DIR)
        return path

    def check(path, finished):
        got = snapshot(path)
        if finished:
            assert got == NEW_DIR
        elif start == "plain" and not exchange and got is None:
            # the one moment of the two-rename fallback without the directory: sweep restores it
            sweep(path.parent, grace_s=0)
            got = snapshot(path)
            assert got == OLD_DIR
        else:
            assert got in (old, NEW_DIR), got
        sweep(path.parent, grace_s=0)  # the leftovers go, the directory stays as it was
        assert snapshot(path) == got
        assert sorted(os.listdir(path.parent)) == ([] if got is None else sorted(
            {"view", path.resolve().name}))
        write_dir(path, {"x": b"next"})  # and the next write works
        assert snapshot(path) == {"x": b"next"}

    assert each_kill(setup, lambda path: write_dir(path, NEW_DIR), check) >= 6


def test_readers_beside_a_writer_see_one_whole_version(tmp_path):
    """A writer process replaces the directory again and again; a reader here, resolving it once
    per read as the views' readers do, always finds every file, all of one version."""
    path = tmp_path / "view"
    write_dir(path, {f"f{i}": b"0" for i in range(5)})
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the writer)
        try:
            for n in range(1, 100):
                write_dir(path, {f"f{i}": str(n).encode() for i in range(5)})
            os._exit(0)
        except BaseException:
            os._exit(1)
    versions, status = set(), None
    try:
        deadline = time.time() + 120
        while status is None and time.time() < deadline:
            got = snapshot(path)
            assert sorted(got) == [f"f{i}" for i in range(5)] and len(set(got.values())) == 1, got
            versions.add(got["f0"])
            done, code = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(code) if done else None
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert status == 0 and snapshot(path)["f0"] == b"99" and len(versions) > 2

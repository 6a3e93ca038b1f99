"""Atomic writes: the old content survives any failure, and no temporary file is left behind."""

from __future__ import annotations

import os

import pytest

from segsplat_ns.io import atomic_open, atomic_path


def test_atomic_open_replaces_content(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_open(target) as handle:
        handle.write(b"first")
    with atomic_open(target) as handle:
        handle.write(b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_error_inside_the_block_keeps_old_content(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failing_rename_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "frame.png"
    target.write_bytes(b"old")

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as temp:
            temp.write_bytes(b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]


def test_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_open(target) as handle:
        handle.write(b"x")
    assert target.read_bytes() == b"x"

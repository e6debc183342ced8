"""Atomic writes keep the previous file when a write fails."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest
import torch

from fedmtl.atomic import FILE_MODE, naming, torch_save, write_bytes


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.pt"
    torch_save({"x": torch.ones(2)}, path)
    with pytest.raises(TypeError):
        torch_save({"lock": threading.Lock()}, path)  # not picklable
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]


def test_write_bytes_replaces_content(tmp_path):
    path = tmp_path / "a.txt"
    write_bytes(path, b"one")
    write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_files_are_written_with_the_mode_open_would_give_them(tmp_path):
    """A temporary file is made 0600; the renamed one gets what the umask allows (0644 under the
    usual 022), so colleagues sharing a results folder read every file of a run."""
    path = tmp_path / "summary.json"
    write_bytes(path, b"{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o666 & ~mask
    with open(tmp_path / "plain", "w"):  # what a plain open gives
        pass
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == FILE_MODE


def test_a_failed_write_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write on a full disk: no file named

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as raised:
        write_bytes(tmp_path / "checkpoints" / "round-3.pt", b"x")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "checkpoints" / "round-3.pt")
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no temporary left
    with pytest.raises(FileNotFoundError) as appended:
        with naming(tmp_path / "metrics.csv"):
            raise FileNotFoundError(errno.ENOENT, "gone")
    assert appended.value.filename == str(tmp_path / "metrics.csv")
    with pytest.raises(ValueError), naming(tmp_path / "metrics.csv"):
        raise ValueError("not an OSError: as it was")

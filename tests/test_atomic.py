"""Atomic writes keep the previous file when a write fails."""

from __future__ import annotations

import threading

import pytest
import torch

from fedmtl.atomic import torch_save, write_bytes


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

"""benchmarks/gpu.py's CPU path (CI has no GPU): every configuration validates, CUDA rows are
skipped and said so, the CPU rows are measured and written."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu


@pytest.mark.parametrize("engine", ["ray", "none"])
def test_every_configuration_of_each_engine_validates(engine):
    configs = gpu.plan(engine, quick=True)
    expected = gpu.RAY_CASES if engine == "ray" else gpu.NONE_CASES
    assert set(configs) == set(expected)
    if engine == "ray":
        assert configs["gpu-0.25"].engine.client_num_gpus == 0.25
        assert configs["gpu-0.25"].client.device == "cuda"
        assert configs["fair-server-cuda"].server.device == "cuda"
        assert configs["fair-server-cuda"].server.weighting == configs["fair-server-cpu"].server.weighting == "fairgrad"
        assert configs["cpu"].client.device == "cpu"


def test_the_cpu_path_measures_cpu_rows_and_skips_cuda_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    small = gpu.workload(True, ["data.num-clients=4", "run.rounds=2", "data.params.pairs-per-digit=1"])
    configs = {name: small for name in gpu.NONE_CASES}
    result = gpu.measure(configs, "none", repeat=1, out=tmp_path)
    assert set(result["seconds"]) == {"floor-cpu", "fairgrad-cpu"}
    assert all(value > 0 for value in result["seconds"].values())
    assert set(result["skipped"]) == {"floor-cuda", "fairgrad-cuda"}
    page = gpu.write(result, "none", True, 1, tmp_path)
    assert page.name == "gpu-none-quick.md"
    assert "| floor-cpu |" in page.read_text() and "| floor-cuda | not run: no CUDA device" in page.read_text()
    assert json.loads((tmp_path / "gpu-none-quick.json").read_text())["skipped"]["fairgrad-cuda"].startswith("no CUDA")


def test_each_pass_is_written_as_it_ends_with_each_row_s_repeats(tmp_path, monkeypatch):
    """A run stopped by a time limit keeps the passes it finished; the page counts each row's."""
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    small = gpu.workload(True, ["data.num-clients=4", "run.rounds=2", "data.params.pairs-per-digit=1"])
    pages = []

    def after_each(result):
        pages.append(gpu.write(result, "none", False, 2, tmp_path).read_text())

    gpu.measure({"floor-cpu": small, "fairgrad-cpu": small}, "none", repeat=2, out=tmp_path, after_each=after_each)
    assert len(pages) == 2
    assert "| floor-cpu |" in pages[0] and pages[0].count("| 1 |") == 2 and pages[1].count("| 2 |") == 2
    assert len(json.loads((tmp_path / "gpu-none.json").read_text())["repeats"]["floor-cpu"]) == 2


def test_the_gpu_check_names_tests_that_exist():
    """``benchmarks/gpu_check.sh`` runs the CUDA tests by name: a renamed test must not drop out."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "benchmarks" / "gpu_check.sh").read_text()
    named = re.findall(r"(tests/test_\w+\.py)(?:::(\w+))?", script)
    assert {"tests/test_sgd.py", "tests/test_aggregation_device.py"} <= {path for path, _ in named}
    for path, function in named:
        assert (root / path).is_file(), path
        if function:
            assert f"def {function}(" in (root / path).read_text(), f"{path}::{function}"

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
    page = gpu.write(result, "none", True, 1, tmp_path).read_text()
    assert "| floor-cpu |" in page and "| floor-cuda | not run: no CUDA device" in page
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"]["fairgrad-cuda"].startswith("no CUDA")

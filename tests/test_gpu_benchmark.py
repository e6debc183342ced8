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


def test_a_deterministic_row_is_its_counterpart_with_deterministic_kernels_and_its_cost_is_written(tmp_path):
    configs = gpu.plan("ray", quick=True)
    for name in ("gpu-0.25", "fair-server-cuda"):
        twin = configs[f"{name}-deterministic"]
        assert twin.run.deterministic and not configs[name].run.deterministic
        undone = twin.run.model_copy(update={"deterministic": False, "name": configs[name].run.name})
        assert twin.model_copy(update={"run": undone}) == configs[name]
    assert gpu.needs_cuda("floor-cuda-deterministic") and gpu.needs_cuda("gpu-0.25-deterministic")
    assert not gpu.needs_cuda("floor-cpu")
    result = {"seconds": {"gpu-0.25": 0.2, "gpu-0.25-deterministic": 0.3, "cpu": 0.1},
              "repeats": {"gpu-0.25": [0.2], "gpu-0.25-deterministic": [0.3], "cpu": [0.1]}, "skipped": {}}
    page = gpu.write(result, "ray", True, 1, tmp_path).read_text()
    assert "- `gpu-0.25-deterministic` / `gpu-0.25` = 0.3000 / 0.2000 = 1.50" in page


def test_only_some_rows_are_planned_and_an_unknown_name_is_refused():
    assert list(gpu.plan("none", quick=True, only=["fairgrad-cpu", "floor-cpu"])) == ["floor-cpu", "fairgrad-cpu"]
    with pytest.raises(ValueError, match="no configuration 'gpu-2' for --engine ray"):
        gpu.plan("ray", quick=True, only=["gpu-0.25", "gpu-2"])


def test_an_engine_free_deterministic_row_runs_under_deterministic_kernels_and_restores_them(monkeypatch):
    from fedmtl.determinism import is_deterministic

    seen = []
    monkeypatch.setattr(gpu, "floor", lambda cfg, device: seen.append((device, is_deterministic())) or [0.0, 1.0])
    before = is_deterministic()
    small = gpu.workload(True)
    assert gpu.none_case("floor-cuda-deterministic", small) == 1.0
    assert gpu.none_case("floor-cuda", small) == 1.0
    assert seen == [("cuda", True), ("cuda", False)]
    assert is_deterministic() == before


def test_the_cpu_path_measures_cpu_rows_and_skips_cuda_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    small = gpu.workload(True, ["data.num-clients=4", "run.rounds=2", "data.params.pairs-per-digit=1"])
    configs = {name: small for name in gpu.NONE_CASES}
    result = gpu.measure(configs, "none", repeat=1, out=tmp_path)
    assert set(result["seconds"]) == {"floor-cpu", "fairgrad-cpu"}
    assert all(value > 0 for value in result["seconds"].values())
    assert set(result["skipped"]) == {"floor-cuda", "floor-cuda-deterministic", "fairgrad-cuda"}
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


def test_the_agreement_benchmark_compares_the_right_runs_and_writes_after_each_case(tmp_path, monkeypatch):
    """``benchmarks/gpu_agreement.py`` (GPU-only) wired on the CPU: each case's CPU run, GPU
    runs (TF32 off; PyTorch's defaults at the smoke settings; again at the calm ones) with the
    right overrides, and its page written after each case."""
    import fedmtl
    from benchmarks import gpu_agreement as agreement

    done = fedmtl.run(agreement.SMOKE, overrides=[*agreement.BASE, *agreement.ON_CPU, "run.rounds=1"],
                      out=tmp_path / "run").folder
    calls = []

    def one_run(out, overrides, flag):
        calls.append((out.name, overrides, flag))
        return done

    monkeypatch.setattr(agreement, "one_run", one_run)
    monkeypatch.setattr(agreement.torch.cuda, "get_device_name", lambda index: "emulated")
    cases = {"a": ["personalization.method=none"], "b": ["personalization.method=fedrep"]}
    monkeypatch.setattr(agreement, "CASES", cases)
    pages = []
    result = agreement.measure(tmp_path / "runs", after_each=lambda r: pages.append(
        (set(r), agreement.write(r, tmp_path / "out").read_text())))
    assert [names for names, _ in pages] == [{"a"}, {"a", "b"}]
    assert pages[-1][1].count("| b |") == 4 and pages[-1][1].count("| a |") == 4
    assert all(row == {"model": 0.0, "loss": 0.0, "accuracy": 0.0} for rows in result.values() for row in rows.values())
    for out, overrides, flag in calls:
        case = cases["a"] if out.startswith("0-") else cases["b"]
        assert overrides[:len(case)] == case
        assert (agreement.CALM[0] in overrides) == ("calm" in out)
        where = agreement.ON_CPU if out.endswith("cpu") else agreement.ON_GPU
        assert overrides[-len(where):] == where
        assert flag is (None if out.endswith("defaults") else False)
    assert sorted(out.split("-", 1)[1] for out, _, _ in calls if out.startswith("1-")) == [
        "calm-again", "calm-cpu", "calm-gpu", "smoke's-cpu", "smoke's-defaults", "smoke's-gpu"]

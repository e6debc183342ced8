"""``run.deterministic``: torch's deterministic kernels in every process of a run, put back after.

On the CPU a run is deterministic without it (``tests/test_simulation.py``); on a GPU two runs
differ (``tests/test_gpu_runs.py`` checks that with it they do not, where there is a GPU). Here:
the switches, the ClientApp and the ServerApp asking for them, the same numbers with and without
them on the CPU, and the caller's settings left as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmtl import determinism
from fedmtl.determinism import (
    CUBLAS_SETTING,
    CUBLAS_VARIABLE,
    Settings,
    is_deterministic,
    preserved_determinism,
    use_deterministic,
)
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
QUICK = ["engine.backend=inprocess", "data.num-clients=4", "run.rounds=1", "client.device=cpu", "server.device=cpu"]


def test_the_switches_turn_on_and_off_and_are_put_back(monkeypatch):
    monkeypatch.delenv(CUBLAS_VARIABLE, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a caller's own: cuDNN times algorithms
    before = Settings.now()
    assert not is_deterministic()
    with preserved_determinism():
        use_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert is_deterministic()
        assert os.environ[CUBLAS_VARIABLE] == CUBLAS_SETTING  # cuBLAS reads it when its handle is made
        use_deterministic(False)  # what it turned on is turned off: the settings of before
        assert Settings.now() == before
        use_deterministic(True)
    assert Settings.now() == before  # put back as it was


def test_false_leaves_a_caller_s_own_settings_and_true_puts_them_back(monkeypatch):
    """A session that turned deterministic kernels on itself (warning only) keeps them through a
    run without run.deterministic, and gets them back after a run with it (which raises)."""
    with preserved_determinism():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        own = Settings.now()
        use_deterministic(False)
        assert Settings.now() == own
        with preserved_determinism():
            use_deterministic(True)
            assert is_deterministic() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert Settings.now() == own
        use_deterministic(False)
        assert Settings.now() == own
        use_deterministic(True)  # a client process: no simulation around it puts them back
        assert is_deterministic()
        use_deterministic(False)
        assert Settings.now() == own


def test_a_workspace_setting_of_the_user_s_is_kept(monkeypatch):
    monkeypatch.setenv(CUBLAS_VARIABLE, ":16:8")
    with preserved_determinism():
        use_deterministic(True)
        assert os.environ[CUBLAS_VARIABLE] == ":16:8"


def test_the_config_key_is_a_boolean_named_in_its_error():
    assert load_config(None, []).run.deterministic is False
    assert load_config(None, ["run.deterministic=true"]).run.deterministic is True
    with pytest.raises(Exception, match="deterministic"):
        load_config(None, ["run.deterministic=sometimes"])


def test_a_deterministic_run_asks_every_client_and_the_server_and_gives_the_cpu_s_numbers(tmp_path, monkeypatch):
    """The ClientApp (each message) and the ServerApp turn the kernels on; on the CPU, where they
    change nothing, the metrics are the same bit for bit; the caller's settings are put back."""
    import fedmtl
    import fedmtl.clients.app as client_app
    import fedmtl.server.app as server_app

    asked: list[tuple[str, bool]] = []

    def recording(where: str):
        def use(enabled: bool) -> None:
            asked.append((where, enabled))
            determinism.use_deterministic(enabled)
        return use

    monkeypatch.setattr(client_app, "use_deterministic", recording("client"))
    monkeypatch.setattr(server_app, "use_deterministic", recording("server"))
    fair = ["server.plan=flat", "server.weighting=fairgrad", "client.weighting=fairgrad"]
    plain = fedmtl.run(SMOKE, overrides=[*QUICK, *fair], out=tmp_path / "plain").folder
    assert set(asked) == {("client", False), ("server", False)}
    asked.clear()
    kept = fedmtl.run(SMOKE, overrides=[*QUICK, *fair, "run.deterministic=true"], out=tmp_path / "deterministic").folder
    assert ("server", True) in asked and asked.count(("client", True)) >= 4  # train and evaluate, 4 clients
    assert ("client", False) not in asked
    assert not is_deterministic()
    assert (plain / "metrics.csv").read_text() == (kept / "metrics.csv").read_text()
    assert len(pd.read_csv(kept / "metrics.csv")) > 0


def test_the_centralized_baseline_runs_deterministic_and_puts_the_settings_back(tmp_path):
    from fedmtl.results import create_run_dir
    from fedmtl.training.centralized import run_centralized

    seen: list[bool] = []
    cfg = load_config(SMOKE, ["run.mode=centralized", "run.rounds=1", "run.deterministic=true", "client.device=cpu"])
    original = torch.nn.Module.train

    def train(self, mode=True):  # the model is set to train mode inside the run
        seen.append(is_deterministic())
        return original(self, mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "train", train)
        run_centralized(cfg, create_run_dir(cfg, tmp_path / "run"), quiet=True)
    assert seen and all(seen)
    assert not is_deterministic()


def test_a_run_folder_from_before_the_key_resumes_exactly(tmp_path, monkeypatch):
    """A run folder written before run.deterministic existed (its config.toml and checkpoint
    lack it) was refused on resume ("config.toml differs ... run.deterministic = False (was
    unset)") and its heads counted as another config's."""
    import fedmtl
    from fedmtl.config import ExperimentConfig

    flat = ExperimentConfig.to_flat
    with monkeypatch.context() as old_code:  # the config as the code before the key wrote it
        old_code.setattr(ExperimentConfig, "to_flat",
                         lambda self: {k: v for k, v in flat(self).items() if k != "run.deterministic"})
        folder = fedmtl.run(SMOKE, overrides=[*QUICK, "run.rounds=2", "personalization.method=ditto"],
                            out=tmp_path / "old").folder
    config = folder / "config.toml"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.startswith("deterministic")) + "\n")
    assert "deterministic" not in config.read_text()
    resumed = fedmtl.resume(folder, rounds=3)
    assert not (folder / "forced-resumes.jsonl").exists()
    straight = fedmtl.run(SMOKE, overrides=[*QUICK, "run.rounds=3", "personalization.method=ditto"],
                          out=tmp_path / "new").folder
    assert (resumed.folder / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()


def test_deterministic_runs_are_one_configuration_with_the_others_in_a_report():
    """Seeds of one configuration from before the key and with it (true or false) are one
    configuration of the report: the key changes no CPU number and a GPU run's by rounding."""
    from fedmtl.report import RunResult

    def result(**extra: object) -> RunResult:
        config = {"run.seed": 0, "run.rounds": 2, "client.lr": 0.05, **extra}
        return RunResult(Path("run"), config, {}, pd.DataFrame(), pd.DataFrame())

    before = result()
    assert result(**{"run.deterministic": False}).identity() == before.identity()
    assert result(**{"run.deterministic": True}).identity() == before.identity()
    assert result(**{"client.lr": 0.01}).identity() != before.identity()


def test_a_resume_that_turns_the_key_on_or_off_is_refused_naming_both_values():
    """A run mixing rounds with and without deterministic kernels would not be the run it
    records; the refusal names the values as written (``False``, not "unset")."""
    from fedmtl.results import config_changes, resume_config, without_later_keys

    plain = resume_config(load_config(SMOKE, QUICK))
    kept = resume_config(load_config(SMOKE, [*QUICK, "run.deterministic=true"]))
    assert config_changes(kept, plain) == ["run.deterministic = False (was True)"]
    assert config_changes(plain, kept) == ["run.deterministic = True (was False)"]
    assert without_later_keys({**plain, "run.deterministic": False}) == plain  # a checkpoint that wrote it


def test_threads_turning_the_kernels_on_at_once_record_the_caller_s_settings(monkeypatch):
    """In-process clients call it from several threads at once: the settings recorded as the
    caller's must be the caller's, not a thread's deterministic ones (reading the settings is
    slowed down here, so that threads without a lock would interleave between the check and
    the record)."""
    import threading
    import time

    read = Settings.now.__func__

    def slow(cls):
        time.sleep(0.01)
        return read(cls)

    with preserved_determinism():
        monkeypatch.setattr(Settings, "now", classmethod(slow))
        own = Settings.now()
        start = threading.Barrier(8)

        def client(i: int) -> None:
            start.wait()
            time.sleep(0.012 * i)  # each thread's check while an earlier one is turning them on
            use_deterministic(True)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert is_deterministic()
        use_deterministic(False)
        assert Settings.now() == own

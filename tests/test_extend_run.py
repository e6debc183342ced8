"""``fedmtl run --resume RUN --set run.rounds=N`` extends a run to N rounds.

A finished run keeps a checkpoint of its last round (every run checkpoints its last round:
:func:`fedmtl.server.rounds.is_checkpoint_round`), so extending it is a resume after that
round with more rounds. The smoke config evaluates every round (``run.evaluate-every = 1``,
``server.fraction-evaluate = 1``), so the 2-round run evaluated round 2 exactly as the
3-round run does and drew nothing more from the server's sampling stream: the extended run's
``metrics.csv`` and ``rounds.csv`` (but for the times) equal those of a 3-round run from the
start, every value compared exactly. The runs use the in-process engine
(``engine.backend = "inprocess"``, recorded in each run's ``config.toml``, so the extension
runs in-process too): resuming, not the engine, is the subject.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedmtl.cli import cli
from fedmtl.personalization import DiskHeadStore, RunIdentity, check_heads
from fedmtl.results import config_fingerprint, extended_to, resume_problems, shorter_runs
from fedmtl.validation import load_config
from tests.simulation_batch import run_batch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.toml")
IN_PROCESS = "engine.backend=inprocess"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-round smoke run, and two 2-round ones extended to 3 rounds, by the command line and by
    :func:`fedmtl.resume` (in-process, in one process)."""
    folder = tmp_path_factory.mktemp("extend")
    jobs = [
        {"config": SMOKE, "overrides": ["run.rounds=3", IN_PROCESS], "out": str(folder / "whole")},
        {"config": SMOKE, "overrides": [IN_PROCESS], "out": str(folder / "extended")},
        {"argv": ["run", "--resume", str(folder / "extended"), "--set", "run.rounds=3", "-q"], "out": "extend"},
        {"config": SMOKE, "overrides": [IN_PROCESS], "out": str(folder / "api")},
        {"resume": str(folder / "api"), "rounds": 3, "out": "api-extend"},
    ]
    results = run_batch(jobs, folder)
    assert all(error == "" for error in results.values()), results
    return folder


@pytest.mark.slow
def test_an_extended_run_equals_a_run_of_that_many_rounds(runs):
    whole, extended = runs / "whole", runs / "extended"
    a, b = (pd.read_csv(path / "metrics.csv") for path in (whole, extended))
    assert sorted(b["round"].unique()) == [1, 2, 3]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ra, rb = (pd.read_csv(path / "rounds.csv").drop(columns="elapsed_s") for path in (whole, extended))
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    sa, sb = (json.loads((path / "summary.json").read_text()) for path in (whole, extended))
    assert sb["rounds"] == sb["final_round"] == 3
    assert sb["final"] == sa["final"] and sb["config_fingerprint"] == sa["config_fingerprint"]
    assert sb["provenance"]["resumed_after_round"] == 2
    assert (extended / "config.toml").read_text() == (whole / "config.toml").read_text()


@pytest.mark.slow
def test_the_python_api_extends_a_run_as_the_command_line_does(runs):
    import fedmtl

    whole, api = runs / "whole", runs / "api"
    pd.testing.assert_frame_equal(pd.read_csv(whole / "metrics.csv"), pd.read_csv(api / "metrics.csv"),
                                  check_exact=True)
    assert (api / "config.toml").read_text() == (whole / "config.toml").read_text()
    assert json.loads((api / "summary.json").read_text())["provenance"]["resumed_after_round"] == 2
    with pytest.raises(ValueError, match="run.rounds = 2: the run has 3 rounds; a resume can extend a run, not"):
        fedmtl.resume(api, rounds=2)
    with pytest.raises(ValueError, match="run.rounds = '4': expected an integer"):
        fedmtl.resume(api, rounds="4")
    assert fedmtl.resume(api, rounds=3).folder == api  # finished: returned as it is, nothing runs


@pytest.mark.slow
def test_an_extension_refuses_fewer_rounds_and_other_keys(runs):
    extended = str(runs / "extended")
    result = CliRunner().invoke(cli, ["run", "--resume", extended, "--set", "run.rounds=2"])
    assert result.exit_code == 2 and "can extend a run, not shorten it" in result.output
    result = CliRunner().invoke(cli, ["run", "--resume", extended, "--set", "client.lr=0.1"])
    assert result.exit_code == 2 and "--resume takes no --set but run.rounds=N" in result.output
    result = CliRunner().invoke(cli, ["run", "--resume", extended, "--set", "run.rounds=3"])
    assert result.exit_code == 0 and "already finished all 3 rounds" in result.output


def test_a_checkpoint_of_fewer_rounds_resumes_a_longer_config_only():
    before = {"run.rounds": 2, "client.lr": 0.05}
    assert extended_to(before, {"run.rounds": 5, "client.lr": 0.05}) == {"run.rounds": 5, "client.lr": 0.05}
    assert extended_to(before, {"run.rounds": 1, "client.lr": 0.05}) == before
    assert extended_to(before, {"run.rounds": 5, "client.lr": 0.1})["client.lr"] == 0.05


def test_heads_written_before_an_extension_are_the_extended_runs(tmp_path):
    """A run stopped during its extension resumes: the heads of its first rounds were written
    under the config with fewer rounds."""
    short, long = load_config(SMOKE), load_config(SMOKE, ["run.rounds=5"])
    DiskHeadStore(tmp_path, RunIdentity("r", config_fingerprint(short))).save(0, {"w": torch.ones(1)}, 2)
    store = DiskHeadStore(tmp_path, RunIdentity("r", config_fingerprint(long)))
    assert [p.kind for p in check_heads(store, {0: 2}, 3)] == ["other-config"]
    assert check_heads(store, {0: 2}, 3, also=shorter_runs(long)) == []
    other = load_config(SMOKE, ["run.rounds=5", "client.lr=0.1"])
    assert not shorter_runs(other)(config_fingerprint(short))


def test_resume_problems_allow_more_rounds_than_the_checkpoints(tmp_path):
    from fedmtl.results import checkpoint_identity, write_run_id

    short, long = load_config(SMOKE), load_config(SMOKE, ["run.rounds=4"])
    run_id = write_run_id(tmp_path)
    (tmp_path / "metrics.csv").write_text("round,client,task,split,metric,value\n")  # two skipped rounds
    (tmp_path / "rounds.csv").write_text("round,elapsed_s,aggregated,evaluated\n1,0.1,0,0\n2,0.2,0,0\n")
    checkpoint = {"round": 2, **checkpoint_identity(run_id, short)}
    assert resume_problems(tmp_path, long, checkpoint) == []
    shorter = load_config(SMOKE, ["run.rounds=1"])
    problems = resume_problems(tmp_path, shorter, checkpoint)
    assert [p.message for p in problems] == [
        "checkpoint round-2.pt is of round 2, beyond run.rounds = 1 of config.toml; a run cannot be shortened",
        "config.toml differs from the run's: run.rounds = 1 (was 2)"]
    assert not problems[0].forced  # --force cannot resume a run past its own end


@pytest.mark.parametrize(("sets", "rounds", "said"), [
    (["run.evaluate-every=2", "done=2"], 5, None),  # stopped before round 3: it never ran, nothing stays
    (["run.evaluate-every=1", "server.fraction-evaluate=0.5"], 5, None),  # every round evaluated either way
    (["run.evaluate-every=2"], 6, None),  # round 4 is on the schedule of a 6-round run too
    (["run.evaluate-every=2"], 5, "round 3 was evaluated as the run's last (run.evaluate-every = 2); its evaluation "
                                  "stays in the results, where a run of 5 rounds from the start has none"),
    (["run.evaluate-every=2", "server.fraction-evaluate=0.5"], 5, "where a run of 5 rounds from the start has none, "
                                                                   "and the clients sampled after it may differ"),
])
def test_an_extension_says_when_it_differs_from_a_run_of_that_many_rounds(tmp_path, sets, rounds, said):
    from fedmtl.results import extend_run

    done = 2 if "done=2" in sets else None  # the round of the checkpoint it resumes from
    sets = [s for s in sets if s != "done=2"]
    before = 4 if "run.evaluate-every=2" in sets and said is None and done is None else 3
    cfg = load_config(SMOKE, [*sets, f"run.rounds={before}"])
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    extended, note = extend_run(tmp_path, cfg, rounds, done)
    assert extended.run.rounds == rounds and load_config(tmp_path / "config.toml").run.rounds == rounds
    assert note is None if said is None else said in note, note


def test_an_extension_changes_only_the_rounds_line_of_config_toml(tmp_path):
    """The rest of config.toml stays as it was written: a plugin named by a relative path (the
    folder moves with it) stayed relative, comments and order too (it was rewritten whole,
    every path made absolute)."""
    from fedmtl.results import extend_run

    cfg = load_config(None, ["run.rounds=3"])
    text = cfg.to_toml().replace("[run]\n", "[run]\n# mine\n", 1)
    text = text.replace("plugins = []", 'plugins = ["../plug/rule.py"]')
    assert 'plugins = ["../plug/rule.py"]' in text
    (tmp_path / "config.toml").write_text(text)
    extended, _ = extend_run(tmp_path, cfg, 5)
    assert extended.run.rounds == 5
    assert (tmp_path / "config.toml").read_text() == text.replace("\nrounds = 3\n", "\nrounds = 5\n", 1)
    (tmp_path / "config.toml").write_text("[run]\nrounds = [3]\n")  # no line of its own: written whole
    extend_run(tmp_path, cfg, 6)
    assert load_config(tmp_path / "config.toml").run.rounds == 6

"""What a newcomer reading the docs runs and reads: the Python API's signatures as docs/python.md
writes them, the run folder's files as docs/runs.md lists them, the header and the messages a
run prints, and the command a benchmark page records. In-process, no simulation."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import fedmtl
from fedmtl.config import ConfigError
from fedmtl.docs import ROOT
from fedmtl.progress import header_lines


@pytest.mark.parametrize("name", ["run", "sweep", "load_runs", "make_config"])
def test_python_md_writes_each_functions_whole_signature(name):
    text = " ".join((ROOT / "docs" / "python.md").read_text().split())
    match = re.search(rf"`fedmtl\.{name}\(([^)]*)\)", text)
    assert match, f"docs/python.md: no signature of fedmtl.{name}"
    written = [part.split("=")[0].strip() for part in match.group(1).split(",") if part.strip()]
    assert written == list(inspect.signature(getattr(fedmtl, name)).parameters)


def test_runs_md_lists_every_file_of_the_run_folder():
    """The files fedmtl.results says a run folder holds are rows of docs/runs.md's table."""
    table = (ROOT / "docs" / "runs.md").read_text()
    for name in ("config.toml", "run-id", "metrics.csv", "placement.csv", "rounds.csv", "participation.csv",
                 "summary.json"):
        assert f"| `{name}` |" in table, name


def test_an_engine_error_names_its_key_once():
    with pytest.raises(ConfigError) as error:
        fedmtl.make_config("configs/smoke.toml", ["engine.backend=inprocess", "engine.address=auto"])
    assert "engine.backend = 'inprocess' runs the clients in this process" in str(error.value)
    assert "engine.engine" not in str(error.value)


@pytest.mark.parametrize(("cpus", "words"), [(1, "1 CPU per client"), (2, "2 CPUs per client")])
def test_the_header_counts_cpus_per_client(cpus, words):
    cfg = fedmtl.make_config("configs/smoke.toml", ["engine.backend=inprocess", f"engine.client-num-cpus={cpus}"])
    engine = next(line for line in header_lines(cfg, Path("runs/x"), "configs/smoke.toml") if line.startswith("engine"))
    assert engine.endswith(f"; {words}")


def test_round_profile_records_the_backends_it_ran(tmp_path, monkeypatch):
    """The page's command reproduces it: `--backends inprocess` when only that backend ran."""
    from benchmarks import round_profile

    monkeypatch.setattr(round_profile, "ROOT", tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    figures = {"s_per_round": 0.3, "push_to_first_call_ms": 5.0, "client_ms_per_message": 30.0,
               "idle_between_clients_ms": 0.0, "server_ms_per_round": 2.0, "main_process_cores": 1.5, "rounds": 3,
               "last_reply_to_aggregation_ms": 7.0}
    cfg = fedmtl.make_config("configs/smoke.toml", ["run.rounds=4"])
    page = tmp_path / "benchmarks" / "results" / "round_profile.md"
    round_profile.write({("fedmtl", "inprocess"): figures}, cfg, ["fedmtl"])
    assert "`python benchmarks/round_profile.py --rounds 4 --backends inprocess`" in page.read_text()
    round_profile.write({("fedmtl", "ray"): figures, ("fedmtl", "inprocess"): figures}, cfg, ["fedmtl"])
    assert "`python benchmarks/round_profile.py --rounds 4`" in page.read_text()


def test_every_list_of_overrides_in_the_docs_is_a_valid_config():
    """docs/python.md's example `["server.weighting=qffl", "server.params={alpha=2}"]` was
    refused: qffl has no parameter alpha (found by a newcomer pass)."""
    import ast

    found = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = " ".join(doc.read_text().split())
        for match in re.finditer(r'`(\["[a-z-]+\.[^`]*\])`', text):
            overrides = ast.literal_eval(match.group(1).replace('", "', '","'))
            if not all(isinstance(o, str) and re.match(r"[a-z-]+\.[a-z.-]+=", o) for o in overrides):
                continue
            found += 1
            try:
                fedmtl.make_config(None, overrides)
            except ConfigError as exc:
                pytest.fail(f"{doc.name}: {overrides}: {exc}")
    assert found >= 1

"""What the report and ``fedmtl plot`` read is checked before anything is written, and a report
that fails leaves the folder as it was: run tables cut short or holding text where numbers
belong are refused naming the file, a report is written whole or not at all, seeds without a
value are counted in the cell that leaves them out, and names from runs (folders, run names)
cannot change the report's text, its page or its figures. Run folders are written here by the
recorder (no simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedmtl import report
from fedmtl.cli import cli
from fedmtl.data import dataset_tasks
from fedmtl.html_report import _notes, script_json
from fedmtl.plots import plot_run
from fedmtl.report import make_report, read_run
from fedmtl.results import RunRecorder
from fedmtl.validation import load_config


@pytest.fixture(autouse=True)
def no_run_figures(monkeypatch):
    monkeypatch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])


def fake_run(folder: Path, seed: int, accuracy: dict[int, dict[str, float]], name: str = "fedmtl") -> Path:
    """A finished run folder of two rounds with these accuracies per client and task."""
    cfg = load_config(None, [f"run.seed={seed}", f"data.num-clients={len(accuracy)}", f"run.name={name}"])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    final = None
    for r in (1, 2):
        per_client = {c: {t: {"accuracy": v * r / 2, "loss": 1.0} for t, v in tasks.items()}
                      for c, tasks in accuracy.items()}
        final = recorder.record_evaluation(r, per_client, dict.fromkeys(accuracy, 20))
        recorder.log_round({"round": r, "aggregated": len(accuracy)}, final)
    recorder.record_participation([(c, 2, 2, 2) for c in accuracy])
    recorder.finish(final)
    return folder


ACCURACY = {c: {"left": 0.5 + 0.1 * c, "right": 0.4 + 0.05 * c} for c in range(4)}


def cut_short(path: Path) -> None:
    """Cut the file in the middle of its last row's last number."""
    data = path.read_bytes()
    path.write_bytes(data[:-3])


def text_in_round_2(path: Path) -> None:
    """Put text in place of a statistic of round 2."""
    rounds = pd.read_csv(path, dtype=str, keep_default_na=False)
    rounds.loc[rounds["round"] == "2", "left.accuracy.worst10"] = "oops"
    rounds.to_csv(path, index=False)


@pytest.mark.parametrize(("file", "damage", "said"), [
    ("rounds.csv", cut_short, "it ends in the middle of a row: the file was cut short"),
    ("metrics.csv", cut_short, "it ends in the middle of a row: the file was cut short"),
    ("participation.csv", cut_short, "it ends in the middle of a row: the file was cut short"),
    ("rounds.csv", text_in_round_2, "column 'left.accuracy.worst10' holds 'oops' in round 2 where numbers belong"),
])
def test_a_run_table_cut_short_or_with_text_is_refused_naming_the_file(tmp_path, file, damage, said):
    """A cut ``rounds.csv`` drew round 2's Jain index as 0.9 (its digits cut off) and dropped the
    round's other points; a cut ``metrics.csv`` drew a client's accuracy from a shortened number."""
    run = fake_run(tmp_path / "run", 0, ACCURACY)
    for parquet in run.glob("*.parquet"):  # the copies made from the tables as written
        parquet.unlink()
    damage(run / file)
    with pytest.raises(ValueError, match="cannot be read") as refused:
        read_run(run)
    assert f"'{run / file}' cannot be read ({said}" in str(refused.value)
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(tmp_path / "report")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "report").exists()  # refused before anything was written
    if file != "participation.csv":  # the run's own figures do not read it
        with pytest.raises(ValueError, match=f"'{run / file}' cannot be read"):
            plot_run(run)


def test_a_report_that_fails_leaves_the_earlier_report_as_it_was(tmp_path, monkeypatch):
    """A report stopped part-way (here: by its last figure) left the new report.csv and figures
    beside the earlier report.md and report.html, which spoke of other runs."""
    first = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "report"
    make_report([first], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"report.md", "report.csv", "report.html", "client_cdf.png"} <= set(before)

    second = fake_run(tmp_path / "b", 1, {c: {t: v / 2 for t, v in tasks.items()} for c, tasks in ACCURACY.items()})
    drawn = report.report_figures

    def fails_at_the_end(configurations, folder, *args, **kwargs):
        drawn(configurations, folder, *args, **kwargs)
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(report, "report_figures", fails_at_the_end)
    with pytest.raises(RuntimeError, match="the disk filled up"):
        make_report([second], out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in out.iterdir() if p.is_dir()] == []  # no staging folder left

    with pytest.raises(RuntimeError):  # new folders: none is left, parents included
        make_report([second], tmp_path / "new" / "a" / "b")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError):  # an empty folder stays empty: no report marker that would let
        make_report([second], tmp_path / "empty")  # a later report replace someone else's files there
    assert list((tmp_path / "empty").iterdir()) == []

    monkeypatch.setattr(report, "report_figures", drawn)
    written = make_report([second], out)  # a report that succeeds replaces the earlier one whole
    assert "from `" + str(second) + "`" in (out / "report.md").read_text()
    assert [f.name for f in written["figures"]] and all(f.parent == out and f.is_file() for f in written["figures"])
    assert (out / "report.csv").read_bytes() != before["report.csv"]


def test_a_failed_report_leaves_a_report_that_finished_meanwhile_in_its_folder(tmp_path, monkeypatch):
    """A report that failed in a folder it had made deleted the folder, with the report another
    process had finished there meanwhile."""
    run = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "shared"
    locked = report._one_report_at_a_time

    def another_report_finishes_first(folder):  # before this one takes the folder's lock
        monkeypatch.setattr(report, "_one_report_at_a_time", locked)
        make_report([run], out)  # the other process's report, into the same new folder
        monkeypatch.setattr(report, "report_figures", this_one_fails)
        return locked(folder)

    def this_one_fails(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "_one_report_at_a_time", another_report_finishes_first)
    with pytest.raises(KeyboardInterrupt):
        make_report([run], out)
    assert {"report.md", "report.csv", "report.html"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(report.STAGING_PREFIX)]


def test_a_report_into_a_folder_another_report_is_writing_is_refused(tmp_path):
    """Two reports into one folder at once interleaved their files (no lock): the second is now
    refused in one line, before it writes anything, and the folder is the first's."""
    from fedmtl.folder_lock import holding

    run = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "report"
    make_report([run], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with holding(out, marker=report.REPORT_MARKER, user="a report into it"):  # the other report, under way
        with pytest.raises(ValueError, match=r"^'.*report' is in use by another fedmtl process \(a report into it\)"
                           r"[^\n]*$"):
            make_report([run], out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(report.STAGING_PREFIX)]
    make_report([run], out)  # and once it has ended, a report goes in


def test_a_killed_report_s_staging_folder_is_removed_by_a_later_report(tmp_path):
    """A report killed outright (kill -9) leaves its hidden staging folder: the next report into
    the folder removes it (it holds the folder's lock: no other report is under way there)."""
    run = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "report"
    make_report([run], out)
    killed = out / f"{report.STAGING_PREFIX}killed"
    killed.mkdir()
    (killed / "report.csv").write_text("partial")
    make_report([run], out)
    assert not killed.exists() and (out / "report.md").is_file()


def test_a_seed_without_a_value_is_counted_in_the_cell_that_leaves_it_out(tmp_path):
    """With every accuracy 0, Jain's index and the Gini coefficient have no value (NaN): the
    configuration's 2 seeds showed a bare 0.988, seed 1's value alone."""
    fake_run(tmp_path / "runs" / "seed-0", 0, {c: {"left": 0.0, "right": 0.0} for c in range(4)})
    fake_run(tmp_path / "runs" / "seed-1", 1, ACCURACY)
    written = make_report([tmp_path / "runs"], tmp_path / "report")
    tidy = pd.read_csv(tmp_path / "report" / "report.csv").set_index("statistic")
    assert tidy.loc["left.jain", "n"] == 1 and tidy.loc["left.jain", "missing"] == 1
    assert tidy.loc["left.jain", "seeds"] == 2 and "1 of 2 seeds without a value" in tidy.loc["left.jain", "interval"]
    assert tidy.loc["left.mean", "missing"] == 0  # a mean of zeros is a value
    jain = f"{tidy.loc['left.jain', 'mean']:.3f} (1 of 2 seeds)"
    assert jain in written["table"]


def test_names_from_runs_cannot_add_lines_to_the_report(tmp_path):
    """A folder named with line breaks added a table and a heading of its own to report.md and
    report.html."""
    forged = "r\n| fake | table |\n|---|---|\n| 99.9 | 0.0 |\n# Injected heading"
    run = fake_run(tmp_path / forged, 0, ACCURACY)
    make_report([run], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "# Injected heading" not in text.splitlines() and "| 99.9 | 0.0 |" not in text.splitlines()
    assert "r\\n| fake | table |\\n" in text  # shown, escaped, on the line that names it
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Injected heading</h2>" not in page and "<td>99.9</td>" not in page


def test_a_run_name_cannot_end_the_page_data_or_reach_a_figure_as_maths(tmp_path):
    """``x<!--<script>y`` as a run name swallowed the page's per-client view; ``$`` in a name
    stopped the report's figures with a mathtext parse error."""
    runs = [fake_run(tmp_path / "runs" / "a", 0, ACCURACY, name="x<!--<script>y"),
            fake_run(tmp_path / "runs" / "b", 0, ACCURACY, name="price $x^$ cost")]
    make_report(runs, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    start = page.index('<script type="application/json" id="client-data">') + len(
        '<script type="application/json" id="client-data">')
    payload = page[start:page.index("</script>", start)]
    assert "<" not in payload and ">" not in payload
    assert "x<!--<script>y" in json.loads(payload)["configurations"][0]
    assert script_json({"a": "</script><!--&"}) == '{"a": "\\u003c/script\\u003e\\u003c!--\\u0026"}'


def test_each_configuration_s_heatmap_notes_come_from_its_own_runs():
    """The notes came from the first 4 runs of every configuration, labelled by seed only: one
    configuration's participation was shown on another's heatmap."""
    def record(configuration: str, seed: int, rounds: int) -> dict:
        return {"configuration": configuration, "seed": seed, "rounds_trained": rounds, "last_round": rounds or None,
                "train_examples": 10 if rounds else None, "test_examples": 5}

    records = {0: [record("all", 1, 2), record("all", 2, 2), record("half", 1, 0), record("half", 2, 1)]}
    assert _notes(records, "half")[0] == ("seed 1: trained 0 rounds, – train / 5 test (never trained) examples<br>"
                                          "seed 2: trained 1 rounds (last 1), 10 train / 5 test examples")
    assert "trained 2 rounds" in _notes(records, "all")[0] and "never" not in _notes(records, "all")[0]
    assert _notes(records, "other") == {}


@pytest.mark.parametrize(("damage", "said"), [
    (lambda path: path.unlink(), "is missing, yet summary.json records the run's participation"),
    (lambda path: path.write_text(path.read_text().replace("\n3,2,2,2", "\n3,0,,0")),
     "gives participation trained = 3, but summary.json records 4: it was changed since the run wrote it"),
])
def test_a_participation_table_deleted_or_edited_since_the_run_is_refused(tmp_path, damage, said):
    """A finished run whose participation.csv was deleted was reported as one that 'did not record
    participation', and an edited one counted as the run's."""
    run = fake_run(tmp_path / "run", 0, ACCURACY)
    for copy in run.glob("participation.parquet"):  # the CSV is the table read when the copy is stale
        copy.unlink()
    make_report([run], tmp_path / "fine")
    damage(run / "participation.csv")
    with pytest.raises(ValueError) as caught:
        make_report([run], tmp_path / "report")
    assert str(caught.value) == f"'{run / 'participation.csv'}' {said}: {report.UNUSABLE_HINT}"
    assert not (tmp_path / "report").exists()


def test_a_run_that_recorded_no_participation_is_reported_without_it(tmp_path):
    """A run of an older fedmtl (no participation.csv, none in summary.json) is still reported."""
    import json

    run = fake_run(tmp_path / "run", 0, ACCURACY)
    summary = json.loads((run / "summary.json").read_text())
    del summary["participation"]
    (run / "summary.json").write_text(json.dumps(summary))
    for name in ("participation.csv", "participation.parquet"):
        (run / name).unlink(missing_ok=True)
    written = make_report([run], tmp_path / "report")
    assert "## Participation" not in written["report"].read_text()


def test_a_full_disk_names_the_report_s_file_not_its_hidden_copy(tmp_path, monkeypatch):
    """A report on a full disk said 'cannot write DIR/.report-7ww6zyt3/client_cdf.png': a file
    of a hidden folder the user never sees, gone by then."""
    import errno

    run = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "report"

    def disk_full(configurations, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "client_cdf.png"))

    monkeypatch.setattr(report, "report_figures", disk_full)
    with pytest.raises(OSError) as caught:
        make_report([run], out)
    assert caught.value.filename == str(out / "client_cdf.png")
    assert not out.exists()


def test_a_read_only_folder_or_a_full_disk_names_a_file_of_the_report(tmp_path, monkeypatch):
    """A read-only --out named the hidden staging folder that could not be made; a full disk
    while writing report.md, report.csv or report.html (written with write_text or pandas) named
    no file at all ('cannot write: No space left on device')."""
    import errno
    import os

    from fedmtl import atomic

    run = fake_run(tmp_path / "a", 0, ACCURACY)
    out = tmp_path / "report"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(str(out), ".fedmtl-report-staging-x"))

    monkeypatch.setattr(report.tempfile, "mkdtemp", read_only)
    with pytest.raises(OSError) as caught:
        make_report([run], out)
    assert caught.value.filename == str(out) and not out.exists()
    monkeypatch.undo()
    real = atomic.os.fdopen

    def full_when_writing_the_page(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".report.html."):
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    monkeypatch.setattr(atomic.os, "fdopen", full_when_writing_the_page)
    with pytest.raises(OSError) as caught:
        make_report([run], out)
    assert caught.value.filename == str(out / "report.html")


def test_runs_whose_clients_an_older_fedmtl_built_otherwise_are_named(tmp_path):
    """Runs of Synthetic with dirichlet finished before the pooled rows were shuffled (no
    data_layout in summary.json) trained on other clients than a run of the same config today:
    a sweep extended with new grid values reused them beside new ones without a word."""
    cfg = load_config(None, ["data.dataset=synthetic", "model.backbone=mlp", "data.partitioner=dirichlet",
                             "data.num-clients=3", "data.params={num-tasks=1}"])
    tasks = dataset_tasks(cfg.data)
    folders = []
    for name in ("old", "new"):
        recorder = RunRecorder(tmp_path / name, cfg, tasks)
        final = None
        for r in (1, 2):
            per_client = {c: {t.name: {"accuracy": 0.5 + 0.1 * c, "loss": 1.0} for t in tasks} for c in range(3)}
            final = recorder.record_evaluation(r, per_client, dict.fromkeys(range(3), 20))
            recorder.log_round({"round": r, "aggregated": 3}, final)
        recorder.finish(final)
        folders.append(tmp_path / name)
    summary = json.loads((folders[0] / "summary.json").read_text())
    del summary["data_layout"]  # written by an older fedmtl
    (folders[0] / "summary.json").write_text(json.dumps(summary))
    written = make_report(folders, tmp_path / "report")
    (line,) = written["older_layout"]
    assert line.startswith(f"`{folders[0]}`: the pooled rows of a dataset with natural clients are shuffled")
    assert "## Data layout" in written["report"].read_text()
    alone = make_report([folders[1]], tmp_path / "report-new")
    assert alone["older_layout"] == [] and "## Data layout" not in alone["report"].read_text()


def test_a_broken_installed_plugin_does_not_keep_a_run_s_own_plugins_out_of_its_report(tmp_path, monkeypatch):
    """The report imports each run's run.plugins (a plugin task kind says which way its metric is
    better); an installed package's entry point that fails to import stopped them all."""
    from fedmtl import plugins
    from fedmtl.plugins import PluginError
    from fedmtl.report import _load_run_plugins
    from fedmtl.tasks import TASK_KINDS
    from tests.plugin_support import restored_registries

    def broken() -> list[str]:
        raise PluginError("entry point 'x = broken.pkg' of package 'broken' (group fedmtl.plugins): cannot import it")

    monkeypatch.setattr(plugins, "load_entry_points", broken)
    kind = tmp_path / "kind.py"
    kind.write_text("from fedmtl.tasks import TASK_KINDS\nfrom fedmtl.tasks import MultiClass\n\n"
                    "@TASK_KINDS.register('report-kind')\nclass ReportKind(MultiClass):\n"
                    "    metrics = {'hits': True}\n")
    registries = restored_registries()
    next(registries)
    try:
        _load_run_plugins({"run.plugins": [str(kind)]})
        assert "report-kind" in TASK_KINDS
    finally:
        next(registries, None)

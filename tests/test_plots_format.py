"""Figures: whole-number round and client axes, shared y-axes, the client × task heatmap, the
fairness-over-rounds and group-fairness figures, the formats (PNG, PDF, SVG) and one client
highlighted; the ``plot`` and ``report`` commands' options. Run folders are written by the
recorder itself, without Ray."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from typer.testing import CliRunner

from fedmtl import plots
from fedmtl.data import dataset_tasks
from fedmtl.report import find_run_dirs, group_configurations, read_run
from fedmtl.results import RunRecorder
from fedmtl.validation import load_config
from tests.helpers import PNG_MAGIC

CLIENTS, ROUNDS = 12, 4


def _group_metrics(client: int, server_round: int) -> dict[str, float]:
    """A binary task's group metrics of one client (two groups of 'colour', 10 examples each)."""
    p0, p1 = 0.5 + 0.02 * client, 0.3 + 0.05 * server_round
    return {"count-colour-0": 10.0, "count-colour-1": 10.0, "accuracy-colour-0": 0.7, "accuracy-colour-1": 0.6,
            "positive-rate-colour-0": p0, "positive-rate-colour-1": p1, "positives-colour-0": 5.0,
            "positives-colour-1": 5.0, "accuracy-gap-colour": 0.1, "demographic-parity-diff-colour": abs(p0 - p1)}


def fabricated_run(folder: Path, seed: int, weighting: str, views: bool, groups: bool) -> Path:
    """A run folder written by the recorder: 12 clients, tasks 'left' and 'right', 4 evaluated
    rounds; clients 0 and 1 never trained; with ``views`` a global model 0.2 lower; with
    ``groups`` group metrics on task 'left'."""
    cfg = load_config(None, [f"data.num-clients={CLIENTS}", f"run.seed={seed}", f"client.weighting={weighting}",
                             f"run.rounds={ROUNDS}"])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    final = None
    for server_round in range(1, ROUNDS + 1):
        per_client = {}
        for c in range(CLIENTS):
            base = 0.3 + 0.04 * c + 0.03 * server_round + 0.01 * seed
            tasks = {"left": {"accuracy": base, "loss": 1.0}}
            if c % 3:  # every third client holds task 'left' only
                tasks["right"] = {"accuracy": base - 0.05, "loss": 1.0}
            if groups:
                tasks["left"].update(_group_metrics(c, server_round))
            per_client[c] = tasks
        view = {c: {t: {"accuracy": v["accuracy"] - 0.2} for t, v in tasks.items()}
                for c, tasks in per_client.items()} if views else None
        final = recorder.record_evaluation(server_round, per_client, dict.fromkeys(range(CLIENTS), 20), view)
        recorder.log_round({"round": server_round}, final)
    recorder.record_participation([(c, 0 if c < 2 else ROUNDS, None if c < 2 else ROUNDS, 0 if c < 2 else ROUNDS)
                                   for c in range(CLIENTS)])
    recorder.finish(final)
    return folder


def fabricated_runs(root: Path) -> Path:
    """Two configurations × two seeds under ``root``: 'mean' with a global view and group
    metrics, 'rlw' with neither."""
    with pytest.MonkeyPatch.context() as patch:  # the figures of each run are drawn by the tests
        patch.setattr(plots, "plot_run", lambda *args, **kwargs: [])
        for seed in (0, 1):
            fabricated_run(root / "mean" / f"seed-{seed}", seed, "mean", views=True, groups=True)
            fabricated_run(root / "rlw" / f"seed-{seed}", seed, "rlw", views=False, groups=False)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return fabricated_runs(tmp_path_factory.mktemp("figures") / "runs")


@pytest.fixture
def drawn(monkeypatch):
    """Every figure drawn while the test runs, by file stem (saved nowhere)."""
    figures = {}

    def keep(fig, path, dpi=plots.DEFAULT_DPI):
        figures[Path(path).stem] = fig
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def configurations(runs: Path):
    return group_configurations([read_run(p) for p in find_run_dirs([runs])])


def _whole_ticks(ax, axis: str) -> list[float]:
    low, high = sorted(getattr(ax, f"get_{axis}lim")())
    ticks = [t for t in getattr(ax, f"get_{axis}ticks")() if low - 1e-9 <= t <= high + 1e-9]
    assert ticks, ax.get_title()
    return ticks


# -- axes -----------------------------------------------------------------------------------
def test_round_and_client_axes_have_whole_number_ticks(runs, tmp_path, drawn):
    plots.plot_run(runs / "mean" / "seed-0")
    plots.report_figures(configurations(runs), tmp_path)
    checked = 0
    for name, fig in drawn.items():
        for ax in fig.axes:
            for axis in ("x", "y"):
                label = getattr(ax, f"get_{axis}label")()
                if label not in ("server round", "client id"):
                    continue
                ticks = _whole_ticks(ax, axis)
                assert all(float(t).is_integer() for t in ticks), (name, label, ticks)
                if name != "client_task_heatmap":  # (the heatmap's rows are labelled one by one)
                    locator = getattr(ax, f"{axis}axis").get_major_locator()
                    assert isinstance(locator, MaxNLocator) and locator._integer, (name, label)
                checked += 1
    assert {"accuracy", "clients", "fairness_rounds", "group_fairness", "round_curves",
            "client_task_heatmap"} <= set(drawn)
    assert checked >= 10
    heatmap = drawn["client_task_heatmap"].axes[0]
    assert [t.get_text() for t in heatmap.get_yticklabels()] == [str(c) for c in range(CLIENTS)]


def test_task_panels_of_one_metric_share_their_y_axis(runs, tmp_path, drawn):
    plots.plot_run(runs / "mean" / "seed-0")
    plots.report_figures(configurations(runs), tmp_path)
    for name in ("accuracy", "clients", "round_curves", "client_cdf", "fairness_accuracy"):
        left, right = drawn[name].axes[:2]
        assert left.get_shared_y_axes().joined(left, right), name
        assert left.get_ylim() == right.get_ylim(), name
    grid = drawn["fairness_rounds"].axes  # rows: worst-10%, Jain, gap; columns: left, right, overall
    assert grid[0].get_shared_y_axes().joined(grid[0], grid[1]) and not grid[0].get_shared_y_axes().joined(
        grid[0], grid[3])


# -- the heatmap ----------------------------------------------------------------------------
def test_the_heatmap_is_scaled_to_its_data_averages_the_seeds_and_writes_the_values(runs, tmp_path, drawn):
    confs = configurations(runs)
    plots.plot_client_task_heatmap(confs, tmp_path / "h.png")
    fig = drawn["h"]
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    means = []
    for c in confs:
        final = pd.concat([r.final for r in c.runs])
        means += list(final.groupby(["client", "task"])["value"].mean() * 100)
    norm = panels[0].images[0].norm
    assert norm.vmin == pytest.approx(min(means)) and norm.vmax == pytest.approx(max(means))
    assert 0 < norm.vmin and norm.vmax < 100  # not the fixed 0-100 scale
    cells = CLIENTS + sum(1 for c in range(CLIENTS) if c % 3)  # 'left' for all, 'right' for 8 of 12
    for ax, c in zip(panels, confs, strict=True):
        assert len(ax.texts) == cells
        assert "mean of 2 seeds" in ax.get_title().replace("\n", " ")
        table = plots.client_task_table(c, ["left", "right"]) * 100
        assert ax.texts[0].get_text() == f"{table.iloc[0, 0]:.0f}"
    # the title sits above every panel and its title
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    title = fig._suptitle.get_window_extent(renderer)
    for ax in panels:
        assert title.y0 >= ax.get_tightbbox(renderer).y1 - 0.5


def test_a_cell_averaging_fewer_seeds_is_marked_and_the_titles_say_so(runs, tmp_path, drawn):
    """The titles said "mean of 2 seeds" where a cell averaged one: a seed without the client's
    final metric for the task (its federation or sampling left it out)."""
    import dataclasses

    from fedmtl.html_report import heatmap_figure
    from fedmtl.report import Configuration

    whole = configurations(runs)[0]
    first, second = whole.runs
    kept = second.final[~((second.final["client"] == 4) & (second.final["task"] == "left"))]
    partial = Configuration(whole.label, [first, dataclasses.replace(second, final=kept)])
    tasks = ["left", "right"]
    seeds = plots.client_task_seeds(partial, tasks)
    assert seeds.loc[4, "left"] == 1 and seeds.loc[4, "right"] == 2 and np.isnan(seeds.loc[0, "right"])
    assert plots.seeds_note(whole, plots.client_task_seeds(whole, tasks)) == "mean of 2 seeds"
    assert plots.seeds_note(partial, seeds) == "mean of 1–2 seeds a cell"
    plots.plot_client_task_heatmap([partial], tmp_path / "h.png")
    ax = next(ax for ax in drawn["h"].axes if ax.images)
    assert "mean of 1–2 seeds a cell; *: fewer" in ax.get_title().replace("\n", " ")
    alone = first.final.set_index(["client", "task"])["value"][(4, "left")] * 100
    assert [t.get_text() for t in ax.texts if t.get_text().endswith("*")] == [f"{alone:.0f}*"]
    figure = heatmap_figure([partial], dict.fromkeys(tasks, "accuracy"), {})
    assert "(mean of 1–2 seeds a cell)" in figure.layout.title.text
    hover = figure.data[0].customdata
    assert hover[4][0] == "mean of 1 of 2 seeds" and hover[4][1] == "" and hover[5][0] == ""


def test_many_clients_leave_the_cells_blank(runs, tmp_path, drawn, monkeypatch):
    monkeypatch.setattr(plots, "VALUES_UP_TO", 5)
    plots.plot_client_task_heatmap(configurations(runs), tmp_path / "h.png")
    assert not any(ax.texts for ax in drawn["h"].axes)


# -- fairness over rounds and group fairness ------------------------------------------------
def test_fairness_over_rounds_draws_rounds_csv(runs, drawn):
    plots.plot_run(runs / "mean" / "seed-0")
    rounds = pd.read_csv(runs / "mean" / "seed-0" / "rounds.csv")
    ax = drawn["fairness_rounds"].axes[0]  # task 'left', worst-10%
    personal, view = ax.lines[:2]
    assert list(personal.get_xdata()) == list(range(1, ROUNDS + 1))
    assert np.allclose(personal.get_ydata(), rounds["left.accuracy.worst10"] * 100)
    assert np.allclose(view.get_ydata(), rounds["global_left.accuracy.worst10"] * 100)
    jain = drawn["fairness_rounds"].axes[3]
    assert np.allclose(jain.lines[0].get_ydata(), rounds["left.accuracy.jain"])
    group = drawn["group_fairness"].axes[0]
    pooled = rounds["left.demographic-parity-diff-colour.pooled"]
    assert any(np.allclose(line.get_ydata(), pooled) for line in group.lines)


def test_group_fairness_is_drawn_only_when_recorded(runs, tmp_path):
    assert "group_fairness.png" not in {p.name for p in plots.plot_run(runs / "rlw" / "seed-0")}
    rlw = [c for c in configurations(runs) if "rlw" in c.label]
    assert plots.plot_group_fairness(rlw, tmp_path / "g.png") is None
    written = {p.name for p in plots.report_figures(configurations(runs), tmp_path)}
    assert written == {f"{n}.png" for n in [*plots.REPORT_FIGURES, *plots.OPTIONAL_REPORT_FIGURES]}


# -- formats --------------------------------------------------------------------------------
def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">I", data[16:20])[0]


def test_figures_are_written_as_png_pdf_or_svg(runs, tmp_path):
    run = runs / "mean" / "seed-0"
    for fmt in plots.FORMATS:
        written = plots.plot_run(run, fmt)
        assert {p.suffix for p in written} == {f".{fmt}"} and len(written) == len(plots.RUN_FIGURES)
    plots_dir = run / "plots"
    assert (plots_dir / "accuracy.pdf").read_bytes().startswith(b"%PDF-")
    assert (plots_dir / "accuracy.pdf").read_bytes().rstrip().endswith(b"%%EOF")
    root = ET.parse(plots_dir / "accuracy.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    first = (plots_dir / "clients.pdf").read_bytes()
    plots.plot_run(run, "pdf")
    assert (plots_dir / "clients.pdf").read_bytes() == first  # no creation date: the same file again
    first_svg = (plots_dir / "accuracy.svg").read_bytes()
    plots.plot_run(run, "svg")  # element ids from a fixed salt, not a random one: the same file again
    assert (plots_dir / "accuracy.svg").read_bytes() == first_svg
    small = _png_width(plots.plot_run(run, "png", dpi=75)[0])
    large = _png_width(plots.plot_run(run, "png", dpi=150)[0])
    assert large == pytest.approx(2 * small, rel=0.03)
    svgs = plots.report_figures(configurations(runs), tmp_path, "svg")
    assert all(ET.parse(p).getroot().tag.endswith("svg") for p in svgs)
    with pytest.raises(ValueError, match="--format 'jpg' is not one of png, pdf, svg"):
        plots.plot_run(run, "jpg")
    with pytest.raises(ValueError, match="--dpi 0"):
        plots.report_figures(configurations(runs), tmp_path, "png", 0)
    with pytest.raises(ValueError, match="--dpi 100000 must be a whole number from 1 to 1200"):
        plots.plot_run(run, "png", dpi=100_000)  # was a MemoryError from the drawing library


# -- one client -----------------------------------------------------------------------------
def _labels(fig) -> set[str]:
    out = set()
    for ax in fig.axes:
        legend = ax.get_legend()
        out |= {t.get_text() for t in legend.get_texts()} if legend else set()
        out |= {t.get_text() for t in ax.texts}
    for legend in fig.legends:
        out |= {t.get_text() for t in legend.get_texts()}
    return out


def test_one_client_is_marked_in_every_figure_that_shows_clients(runs, tmp_path, drawn):
    run = runs / "mean" / "seed-0"
    plots.plot_run(run, highlight=4)
    for name in ("accuracy", "final_distribution", "clients"):
        assert "client 4" in _labels(drawn[name]), name
    stars = [line for line in drawn["accuracy"].axes[0].lines if line.get_label() == "client 4"]
    rows = pd.read_csv(run / "metrics.csv").query("client == 4 and task == 'left' and metric == 'accuracy' "
                                                  "and split == 'test'")
    assert np.allclose(stars[0].get_ydata(), rows["value"] * 100)
    plots.report_figures(configurations(runs), tmp_path, highlight=4)
    for name in ("round_curves", "client_cdf"):
        assert "client 4" in _labels(drawn[name]), name
    heatmap = drawn["client_task_heatmap"]
    boxes = [p for ax in heatmap.axes for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[0] == 1]
    assert len(boxes) == 2 and all(b.get_y() == pytest.approx(3.5) for b in boxes)  # row 4 of clients 0..11
    assert "client 4" in heatmap._suptitle.get_text()
    with pytest.raises(ValueError, match="--highlight-client 99: no evaluated client 99"):
        plots.plot_run(run, highlight=99)
    with pytest.raises(ValueError, match="--highlight-client 99"):
        plots.report_figures(configurations(runs), tmp_path, highlight=99)


# -- the commands ---------------------------------------------------------------------------
def test_the_plot_and_report_commands_take_format_dpi_and_highlight(runs, tmp_path):
    from fedmtl.cli import FIGURE_FORMATS, cli

    assert FIGURE_FORMATS == plots.FORMATS and plots.DEFAULT_DPI >= 150
    runner = CliRunner()
    run = runs / "rlw" / "seed-1"
    done = runner.invoke(cli, ["plot", str(run), "--format", "svg", "--highlight-client", "2"])
    assert done.exit_code == 0, done.output
    assert (run / "plots" / "clients.svg").is_file() and "clients.svg" in done.output
    bad = runner.invoke(cli, ["plot", str(run), "--format", "jpg"])
    assert bad.exit_code == 2 and "jpg" in bad.output
    bad = runner.invoke(cli, ["plot", str(run), "--dpi", str(plots.MAX_DPI + 1)])
    assert bad.exit_code == 2 and f"1<=x<={plots.MAX_DPI}" in bad.output
    bad = runner.invoke(cli, ["plot", str(run), "--highlight-client", "77"])
    assert bad.exit_code == 2 and "no evaluated client 77" in bad.output
    out = tmp_path / "report"
    done = runner.invoke(cli, ["report", str(runs), "--out", str(out), "--format", "pdf", "--dpi", "90"])
    assert done.exit_code == 0, done.output
    assert all((out / f"{n}.pdf").read_bytes().startswith(b"%PDF-") for n in plots.REPORT_FIGURES)
    assert not list(out.glob("*.png")) and (out / "report.html").is_file()
    assert "client_cdf.pdf" in (out / "report.md").read_text()

"""The run's figures are drawn in a thread while the engine stops (``fedmtl.background``):
``simulate`` returns only once they are written, and an error drawing them is the run's error."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedmtl.background import BackgroundWork

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


def test_join_waits_for_every_thread_and_raises_the_first_error() -> None:
    work, done = BackgroundWork(), []

    def slow() -> None:
        time.sleep(0.2)
        done.append("slow")

    def broken() -> None:
        raise OSError("disk full")

    work.start("slow", slow)
    work.start("broken", broken)
    with pytest.raises(OSError, match="disk full"):
        work.join()
    assert done == ["slow"]
    work.join()  # an error is raised once


def test_wait_raises_nothing_and_threads_run_off_the_caller() -> None:
    work, names = BackgroundWork(), []
    work.start("fedmtl-test", lambda: names.append(threading.current_thread().name))
    work.start("fedmtl-broken", lambda: 1 / 0)
    work.wait()
    assert names == ["fedmtl-test"]
    with pytest.raises(ZeroDivisionError):
        work.join()


def _simulate(out: Path) -> Path:
    from fedmtl.launch.simulation import simulate
    from fedmtl.results import create_run_dir
    from fedmtl.validation import load_config

    cfg = load_config(SMOKE, ["engine.backend=inprocess", "run.rounds=1"])
    return simulate(cfg, create_run_dir(cfg, out), quiet=True)


@pytest.mark.slow
def test_simulate_returns_after_the_figures_drawn_in_another_thread(tmp_path, monkeypatch) -> None:
    import fedmtl.plots

    drawn: list[str] = []
    real = fedmtl.plots.plot_run

    def slow_plot_run(run_dir):  # noqa: ANN001, ANN202 - plot_run's signature
        time.sleep(1.0)  # longer than the run's tail: simulate must wait
        drawn.append(threading.current_thread().name)
        return real(run_dir)

    monkeypatch.setattr(fedmtl.plots, "plot_run", slow_plot_run)
    run_dir = _simulate(tmp_path / "run")
    assert drawn == ["fedmtl-figures"]
    assert (run_dir / "plots" / "accuracy.png").is_file()
    assert (run_dir / "summary.json").is_file()


@pytest.mark.slow
def test_an_error_drawing_the_figures_is_the_runs_error(tmp_path, monkeypatch) -> None:
    import fedmtl.plots

    def broken(run_dir):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fedmtl.plots, "plot_run", broken)
    with pytest.raises(OSError, match="No space left on device"):
        _simulate(tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").is_file()  # the results were written before


def test_take_errors_hands_them_over_once() -> None:
    work = BackgroundWork()
    work.start("broken", lambda: 1 / 0)
    work.wait()
    errors = work.take_errors()
    assert [type(e) for e in errors] == [ZeroDivisionError]
    assert work.take_errors() == []
    work.join()  # nothing left to raise


def test_a_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    """save_figure renders first and writes atomically: a failed render leaves no file, and an
    older figure of the same name stays as it was."""
    from matplotlib.figure import Figure

    import fedmtl.plots as plots

    path = tmp_path / "accuracy.png"
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    plots.save_figure(fig, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def broken_savefig(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(OSError, match="No space left"):
        plots.save_figure(fig, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png"]  # no temporary left

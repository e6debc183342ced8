"""No hidden global state: importing fedmtl changes no process-wide setting, the figures are
drawn without pyplot, and ``simulate`` leaves logging, the environment and torch's threads
as it found them.

Each check runs in a fresh interpreter (``python -c``) so that what pytest and the other
tests did to this process does not matter; :func:`snapshot` and :func:`differences` are
imported there from this file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


# -- snapshots of process-wide state --------------------------------------------------------
def _logger_state(logger: Any) -> dict[str, Any]:
    return {
        "level": logger.level,
        "propagate": logger.propagate,
        "disabled": logger.disabled,
        "handlers": [f"{type(h).__name__}@{id(h)} level={h.level} filters={[repr(f) for f in h.filters]}"
                     + "".join(f" {a}={getattr(h, a)!r}" for a in ("timestamps", "colored", "json") if hasattr(h, a))
                     for h in logger.handlers],
        "filters": [repr(f) for f in logger.filters],
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def snapshot(loggers: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Process-wide settings that importing or running fedmtl must leave alone.

    ``loggers``: the logger names to record (``""`` the root logger); default every logger
    that exists. Reads matplotlib's backend without resolving it (no pyplot import).
    """
    import logging
    import os
    import random
    import signal
    import socket
    import threading
    import warnings

    state: dict[str, Any] = {}
    names = loggers if loggers is not None else ["", *sorted(
        n for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger))]
    state["logging"] = {name: _logger_state(logging.getLogger(name)) for name in names}
    state["logging.disable"] = logging.root.manager.disable
    state["logging.logger_class"] = repr(logging.getLoggerClass())
    state["environ"] = dict(os.environ)
    state["cwd"] = os.getcwd()
    state["sys.path"] = list(sys.path)
    state["sys.meta_path"] = [repr(type(f)) if not isinstance(f, type) else repr(f) for f in sys.meta_path]
    state["sys.path_hooks"] = [repr(h) for h in sys.path_hooks]
    state["sys.excepthook"] = repr(sys.excepthook)
    state["sys.switchinterval"] = sys.getswitchinterval()
    state["threading.excepthook"] = repr(threading.excepthook)
    state["signals"] = {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)}
    state["socket.timeout"] = socket.getdefaulttimeout()
    state["warnings.filters"] = [repr(f) for f in warnings.filters]
    state["random"] = _digest(random.getstate())
    if "numpy" in sys.modules:
        import numpy as np

        state["numpy.random"] = _digest(np.random.get_state()[1].tolist())
        state["numpy.seterr"] = np.geterr()
        state["numpy.printoptions"] = repr(np.get_printoptions())
    if "torch" in sys.modules:
        import torch

        state["torch.threads"] = torch.get_num_threads()
        state["torch.interop_threads"] = torch.get_num_interop_threads()
        state["torch.default_dtype"] = str(torch.get_default_dtype())
        state["torch.deterministic"] = torch.are_deterministic_algorithms_enabled()
        state["torch.deterministic.warn_only"] = torch.is_deterministic_algorithms_warn_only_enabled()
        state["torch.cudnn.deterministic"] = bool(torch.backends.cudnn.deterministic)
        state["torch.cudnn.benchmark"] = bool(torch.backends.cudnn.benchmark)
        # what a run.deterministic = false would turn off (None until the module is imported)
        state["fedmtl.determinism._before_ours"] = repr(getattr(sys.modules.get("fedmtl.determinism"),
                                                                "_before_ours", None))
        state["torch.initial_seed"] = torch.initial_seed()
        state["torch.rng"] = _digest(torch.get_rng_state().tolist())
        state["torch.grad_enabled"] = torch.is_grad_enabled()
    if "matplotlib" in sys.modules:
        import matplotlib

        params = matplotlib.rcParams
        backend = params._get_backend_or_none() if hasattr(params, "_get_backend_or_none") else None
        state["matplotlib.backend"] = backend or "(not resolved yet)"
        # dict.items: reading rcParams["backend"] would resolve it (and import pyplot)
        state["matplotlib.rcParams"] = {k: repr(v) for k, v in dict.items(params) if k != "backend"}
        state["matplotlib.pyplot imported"] = "matplotlib.pyplot" in sys.modules
    return state


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two :func:`snapshot` s, one line per difference. A logger that
    did not exist before may appear, unconfigured (NOTSET, no handlers or filters,
    propagating)."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) == new.get(sub):
                    continue
                if key == "logging" and sub not in old and new[sub] == {
                        "level": 0, "propagate": True, "disabled": False, "handlers": [], "filters": []}:
                    continue  # logging.getLogger(name) at import: a new, unconfigured logger
                out.append(f"{key}[{sub!r}]: {old.get(sub, '(absent)')!r} -> {new.get(sub, '(absent)')!r}")
        else:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def _python(code: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT,
                          env={**__import__("os").environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _result(stdout: str) -> dict[str, Any]:
    """The JSON line the child printed last."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# -- 1. importing fedmtl -------------------------------------------------------------------
def _fedmtl_modules() -> str:
    """Code listing every fedmtl module (the package, fedmtl.server and fedmtl.clients, which
    live in the repository's server/ and clients/ folders) as ``MODULES``, without importing
    any of them."""
    return """
        import importlib.util, pkgutil
        MODULES = ["fedmtl"]
        for package in ("fedmtl", "fedmtl.server", "fedmtl.clients"):
            spec = importlib.util.find_spec(package)
            if package != "fedmtl":
                MODULES.append(package)
            for info in pkgutil.walk_packages(spec.submodule_search_locations, package + "."):
                if info.name != "fedmtl.__main__" and info.name not in MODULES:  # __main__ runs the CLI
                    MODULES.append(info.name)
    """


def test_importing_fedmtl_changes_no_global_state():
    # first which third-party modules fedmtl imports, so that the second interpreter can
    # import them all before its "before" snapshot: what they do on import is theirs
    third_party = _result(_python(_fedmtl_modules() + """
        import importlib, json, sys
        already = set(sys.modules)
        for name in MODULES:
            importlib.import_module(name)
        print(json.dumps({"modules": MODULES, "third_party": [
            m for m in sys.modules if m not in already and m != "fedmtl" and not m.startswith("fedmtl.")]}))
    """))
    assert {"fedmtl.server.app", "fedmtl.clients.app", "fedmtl.report", "fedmtl.plots",
            "fedmtl.launch.simulation", "fedmtl.data.describe"} <= set(third_party["modules"])

    out = _result(_python(_fedmtl_modules() + f"""
        import importlib, json, sys
        for name in {third_party["third_party"]!r}:
            if name not in sys.modules:
                try:
                    importlib.import_module(name)
                except Exception:
                    pass  # a private or platform-specific module: its package is imported anyway
        from tests.test_global_state import differences, snapshot

        before = snapshot()
        for name in MODULES:
            importlib.import_module(name)
        after = snapshot()
        print(json.dumps({{"imported": len(MODULES), "differences": differences(before, after)}}))
    """))
    assert out["imported"] == len(third_party["modules"])
    assert out["differences"] == [], "importing fedmtl changed:\n" + "\n".join(out["differences"])


# -- 2. the figures --------------------------------------------------------------------------
def _fake_run(run_dir: Path, seed: int, weighting: str) -> None:
    """A finished run folder (config, metrics, summary) of 6 clients and 2 tasks over 3 rounds,
    written without running anything."""
    import numpy as np

    from fedmtl.fairness import summarize
    from fedmtl.results import RoundStats, RunRecorder

    try:
        from fedmtl.validation import load_config
    except ImportError:  # moved out of fedmtl.config
        from fedmtl.validation import load_config
    cfg = load_config(ROOT / "configs/smoke.toml", [f"run.seed={seed}", f"server.weighting={weighting}",
                                                    "data.num-clients=6", "run.rounds=3"])
    run_dir.mkdir(parents=True)
    recorder = RunRecorder(run_dir, cfg, tasks=[])
    rng = np.random.default_rng(seed)
    per_task: dict[str, list[float]] = {}
    for rnd in (1, 2, 3):
        for client in range(6):
            for task in ("left", "right"):
                value = float(np.clip(0.3 + 0.2 * rnd + rng.normal(0, 0.05), 0, 1))
                recorder.log_metrics([(rnd, client, task, "test", "accuracy", value),
                                      (rnd, client, task, "test", "loss", 1 - value)])
                if rnd == 3:
                    per_task.setdefault(task, []).append(value)
    final = RoundStats(3, {t: summarize(np.array(v)) for t, v in per_task.items()},
                       {"left": "accuracy", "right": "accuracy"})
    recorder.finish(final)


def test_figures_are_valid_pngs_drawn_without_pyplot_or_a_backend_switch(tmp_path):
    runs = [tmp_path / f"{w}-{s}" for w in ("fedavg", "qffl") for s in (0, 1)]
    for run in runs:
        _fake_run(run, int(run.name[-1]), run.name.split("-")[0])
    out = _result(_python(f"""
        import json, sys
        from fedmtl.plots import plot_run  # importing is checked above
        from fedmtl.report import make_report
        from tests.test_global_state import differences, snapshot

        before = snapshot()
        figures = [str(p) for p in plot_run({str(runs[0])!r})]
        figures += [str(p) for p in make_report({[str(r) for r in runs]!r}, {str(tmp_path / "report")!r})["figures"]]
        print(json.dumps({{"figures": figures, "differences": differences(before, snapshot()),
                          "pyplot": "matplotlib.pyplot" in sys.modules}}))
    """))
    assert not out["pyplot"], "plot_run or make_report imported matplotlib.pyplot"
    assert out["differences"] == [], "drawing the figures changed:\n" + "\n".join(out["differences"])
    from tests.helpers import is_png

    assert len(out["figures"]) == 8  # the run's 3 (no rounds.csv here) and the report's 5
    for path in out["figures"]:
        assert is_png(Path(path)), path


def test_federation_figure_leaves_matplotlib_alone(tmp_path):
    # a caller with pyplot imported (as a notebook has): check that the figure is no pyplot
    # figure and that the backend and rcParams stay as they were
    out = _result(_python(f"""
        import json, sys
        import matplotlib.pyplot
        from fedmtl.validation import load_config
        from fedmtl.data import load_federation
        from fedmtl.data.describe import plot_federation
        from tests.test_global_state import differences, snapshot

        cfg = load_config({str(ROOT / "configs/smoke.toml")!r}, ["data.num-clients=3"])
        fed = load_federation(cfg.data, 0)
        before = snapshot(loggers=())
        path = plot_federation(fed, {str(tmp_path / "fed.png")!r})
        after = snapshot(loggers=())
        figures = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
        print(json.dumps({{"path": str(path), "differences": differences(before, after), "figures": figures}}))
    """))
    from tests.helpers import is_png

    assert out["differences"] == [], "\n".join(out["differences"])
    assert out["figures"] == []  # no figure left open in pyplot's figure manager
    assert is_png(Path(out["path"]))


# -- 3. simulate, twice ------------------------------------------------------------------------
@pytest.mark.slow
def test_simulate_on_ray_then_in_process_leaves_logging_environment_and_threads_alone(tmp_path):
    out = _result(_python(f"""
        import json, sys
        # what they do on import is theirs (flwr_datasets imports pyplot; the server builds the
        # federation's data with it to bound what clients report)
        import flwr.simulation, flwr_datasets.partitioner, matplotlib, ray, torch
        from flwr.server.superlink.fleet.vce import vce_api
        import fedmtl.clients.app, fedmtl.server.app, fedmtl.server.latency
        from fedmtl.launch.simulation import PRESERVED_LOGGERS, simulate
        from fedmtl.results import create_run_dir
        from fedmtl.validation import load_config
        from tests.test_global_state import differences, snapshot

        cfg = load_config({str(ROOT / "configs/smoke.toml")!r}, ["run.rounds=1", "engine.num-cpus=2"])

        def state():
            s = snapshot(loggers=PRESERVED_LOGGERS)
            del s["random"]  # Ray draws from Python's random module (ports, names): no setting
            s["flwr dispatcher"] = repr(vce_api.add_messages_to_queue)
            return s

        before = state()
        simulate(cfg, create_run_dir(cfg, {str(tmp_path / "first")!r}), quiet=True)
        between = state()
        # sets its own switch interval and (run.deterministic) torch's kernels, then puts them back
        here = cfg.with_values(engine={{"backend": "inprocess"}}, run={{"deterministic": True}})
        simulate(here, create_run_dir(here, {str(tmp_path / "second")!r}), quiet=True)
        after = state()
        print(json.dumps({{"first": differences(before, between), "second": differences(before, after)}}))
    """, timeout=600))
    assert out["first"] == [], "the first simulate changed:\n" + "\n".join(out["first"])
    assert out["second"] == [], "two simulate calls changed:\n" + "\n".join(out["second"])
    first, second = (tmp_path / name / "metrics.csv" for name in ("first", "second"))
    assert first.read_text() == second.read_text()
    assert len(first.read_text().splitlines()) > 1

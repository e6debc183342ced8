"""The report compares honestly: the reference, intervals, paired differences, the overall
column and placement, on small run folders written here by the recorder (no simulation)."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmtl import report
from fedmtl.data import dataset_tasks
from fedmtl.fairness import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    row_statistics,
    summarize,
    t_interval,
    t_quantile,
)
from fedmtl.report import (
    choose_reference,
    find_run_dirs,
    group_configurations,
    make_report,
    read_run,
    summarize_configurations,
)
from fedmtl.results import RunRecorder
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
T975 = {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078, 4: 2.7764451051977934,
        9: 2.262157162798205, 29: 2.045229642132703}
"""t_{0.975, df} (from scipy.stats.t.ppf), for when scipy is not installed."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t from scipy when installed, else from the table above."""
    try:
        from scipy import stats
    except ImportError:
        return T975[df]
    return float(stats.t.ppf(0.975, df))


# -- the numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29])
def test_t_quantile_matches_the_published_value(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], rel=1e-12)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], rel=1e-12)


def test_t_quantile_matches_scipy_everywhere():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 40), 57, 120, 1000]:
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.01):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10), (p, df)


def test_t_interval_by_hand():
    values = [71.0, 74.0, 72.5]
    mean, low, high = t_interval(values)
    half = t975(2) * np.std(values, ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(72.5) and (low, high) == pytest.approx((72.5 - half, 72.5 + half))
    assert t_interval([3.0])[0] == 3.0 and math.isnan(t_interval([3.0])[1])  # one value: no interval


def test_bootstrap_interval_is_the_percentile_interval_of_seeded_resamples():
    values = np.array([0.3, 0.9, 0.5, 0.45, 0.8, 0.1, 0.65])
    rows = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    expected = np.quantile(values[rows].mean(axis=1), [0.025, 0.975])
    low, high = bootstrap_interval(lambda idx: values[idx].mean(), len(values))
    assert (low[0], high[0]) == pytest.approx(tuple(expected), abs=1e-12)
    batched = bootstrap_interval(lambda idx: values[idx].mean(axis=1), len(values), batched=True)
    assert (batched[0][0], batched[1][0]) == (low[0], high[0])  # the same resamples either way
    assert all(math.isnan(x[0]) for x in bootstrap_interval(lambda idx: values[idx].mean(), 1))


@pytest.mark.parametrize("higher", [True, False])
def test_row_statistics_equal_the_summary_of_each_row(higher):
    rng = np.random.default_rng(3)
    values = rng.random((40, 13))
    values[rng.random(values.shape) < 0.3] = np.nan
    stats = row_statistics(values, higher)
    for b, row in enumerate(values):
        expected = summarize(row[~np.isnan(row)], higher_is_better=higher)
        for name in ("mean", "worst10", "jain", "gini"):
            assert stats[name][b] == pytest.approx(expected[name], rel=1e-12, nan_ok=True), name


# -- run folders ------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def no_figures():
    """The tables are the point here: no run figures, no report figures (tested elsewhere)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])
        patch.setattr(report, "report_figures", lambda *args, **kwargs: [], raising=False)
        yield


def fake_run(folder: Path, seed: int, weighting: str, accuracy: dict[int, dict[str, float]],
             hosts: tuple[str, ...] = ()) -> Path:
    """A finished run folder with these final accuracies per client and task (one evaluated round),
    its replies computed on ``hosts`` (one placement row per client, round robin)."""
    cfg = load_config(None, [f"run.seed={seed}", f"client.weighting={weighting}", f"data.num-clients={len(accuracy)}"])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    per_client = {c: {t: {"accuracy": v, "loss": 1.0} for t, v in tasks.items()} for c, tasks in accuracy.items()}
    final = recorder.record_evaluation(1, per_client, dict.fromkeys(accuracy, 20))
    recorder.log_round({"round": 1}, final)
    if hosts:
        recorder.log_placement([(1, c, "train", hosts[c % len(hosts)], f"node{c}", "cpu") for c in accuracy])
    recorder.finish(final)
    return folder


CLIENTS = 6


def accuracies(seed: int, shift: float, rng: np.random.Generator) -> dict[int, dict[str, float]]:
    """Client accuracies: a large seed effect shared by all configurations, a configuration shift
    and a little noise; client 5 does not hold task 'right'."""
    out = {}
    for c in range(CLIENTS):
        base = 0.5 + 0.06 * c + 0.08 * seed + shift
        out[c] = {"left": base + 0.002 * rng.standard_normal(), "right": base - 0.05 + 0.002 * rng.standard_normal()}
    del out[CLIENTS - 1]["right"]
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep folder whose sweep.json lists 'mean' before 'fairgrad' (alphabetically after),
    3 seeds each; 'fairgrad' is 3 points better on every client and seed."""
    folder = tmp_path_factory.mktemp("compare") / "study"
    rng = np.random.default_rng(0)
    listed = []
    for weighting, shift in (("mean", 0.0), ("fairgrad", 0.03)):
        for seed in (0, 1, 2):
            name = f"weighting={weighting}/seed-{seed}"
            fake_run(folder / name, seed, weighting, accuracies(seed, shift, rng))
            listed.append({"values": {"client.weighting": weighting}, "seed": seed, "folder": name, "status": "done"})
    (folder / "sweep.json").write_text(json.dumps({"grid": {"client.weighting": ["mean", "fairgrad"]},
                                                   "seeds": [0, 1, 2], "runs": listed}))
    return folder


def configurations(*paths: Path):
    return group_configurations([read_run(p) for p in find_run_dirs(list(paths))])


def tidy_of(*paths: Path, reference: str | None = None) -> pd.DataFrame:
    found = configurations(*paths)
    return summarize_configurations(found, choose_reference(found, reference)).set_index(["configuration", "statistic"])


def label(tidy: pd.DataFrame, part: str) -> str:
    return next(c for c in tidy.index.get_level_values(0).unique() if part in c)


def summaries(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{pattern}/summary.json"))]


def test_runs_come_in_sweep_order_and_the_first_is_the_reference(sweep, tmp_path):
    found = configurations(sweep)
    assert "weighting=mean" in found[0].label and "weighting=fairgrad" in found[1].label
    assert choose_reference(found, None) is found[0]
    assert choose_reference(found, "fairgrad") is found[1]
    with pytest.raises(ValueError, match="matches 0 configurations; give one of"):
        choose_reference(found, "qffl")
    # command-line order: the paths in the order given
    swapped = configurations(sweep / "weighting=fairgrad", sweep / "weighting=mean")
    assert "weighting=fairgrad" in swapped[0].label
    # a folder without sweep.json: its sub-folders by name
    plain = tmp_path / "plain"
    for name, weighting in (("b-first", "mean"), ("a-second", "fairgrad")):
        fake_run(plain / name, 0, weighting, accuracies(0, 0.0, np.random.default_rng(1)))
    assert "fairgrad" in configurations(plain)[0].label  # a-second sorts first


def test_every_mean_has_a_t_interval_over_seeds(sweep):
    tidy = tidy_of(sweep)
    mean = label(tidy, "weighting=mean")
    values = [100 * s["final"]["left"]["mean"] for s in summaries(sweep, "weighting=mean/seed-*")]
    row = tidy.loc[(mean, "left.mean")]
    half = t975(2) * np.std(values, ddof=1) / math.sqrt(3)
    assert row["mean"] == pytest.approx(np.mean(values))
    assert (row["low"], row["high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert row["std"] == pytest.approx(np.std(values, ddof=1)) and row["interval"] == "t, 3 seeds"
    overall = [100 * s["overall"]["mean"] for s in summaries(sweep, "weighting=mean/seed-*")]
    assert tidy.loc[(mean, "overall.mean"), "mean"] == pytest.approx(np.mean(overall))
    jain = [s["final"]["right"]["jain"] for s in summaries(sweep, "weighting=mean/seed-*")]
    assert tidy.loc[(mean, "right.jain"), "high"] == pytest.approx(
        np.mean(jain) + t975(2) * np.std(jain, ddof=1) / math.sqrt(3))


def test_an_interval_of_few_seeds_is_cut_to_what_the_statistic_can_be(tmp_path):
    """Two seeds far apart: the t interval of the mean accuracy (t975 with 1 degree of freedom
    is 12.7) reached beyond 100 % and below 0, Jain's index beyond 1."""
    for seed, level in ((0, 0.35), (1, 0.95)):
        fake_run(tmp_path / f"seed-{seed}", seed, "mean", {c: {"left": level, "right": 0.2 + 0.6 * seed * (c % 2)}
                                                           for c in range(4)})
    tidy = tidy_of(tmp_path)
    row = tidy.loc[("fedmtl", "left.mean")]
    raw_half = t975(1) * np.std([35.0, 95.0], ddof=1) / math.sqrt(2)
    assert row["mean"] == pytest.approx(65.0) and 65.0 + raw_half > 100 and 65.0 - raw_half < 0
    assert (row["low"], row["high"]) == (0.0, 100.0) and row["interval"] == "t, 2 seeds, cut to [0, 100]"
    jain = tidy.loc[("fedmtl", "right.jain")]
    assert 0 <= jain["low"] <= jain["high"] <= 1
    assert report.statistic_range("global_left.worst10", {"left": "accuracy"}, None) == (0.0, 100.0)
    assert report.statistic_range("left.mean", {"left": "mse"}, None)[0] == 0.0
    assert report.statistic_range("delta_m", {"left": "accuracy"}, None) is None


def test_every_bounded_statistic_of_the_report_is_cut_and_marked(tmp_path):
    """The trained clients' worst-10%, the participation counts and the group gaps are cut as
    the table's statistics are (they once were not: a worst-10% accuracy of 17.2 [-13.3, 47.7]),
    and a cut cell of report.md carries the mark the report explains."""
    accuracy = {"left": "accuracy"}
    assert report.statistic_range("left.trained_worst10", accuracy, None) == (0.0, 100.0)
    for key in ("never_trained", "rounds_trained.min", "rounds_trained.median", "rounds_trained.max",
                "left.worst10_never_trained"):
        assert report.statistic_range(key, accuracy, None) == (0.0, math.inf), key
    wide = report.seed_estimate([30.0, 2.0])  # t975 with 1 degree of freedom: far below 0
    assert wide.low < 0
    for key, low, high, said in (("left.trained_worst10", 0.0, min(wide.high, 100.0), "cut to [0, 100]"),
                                 ("never_trained", 0.0, wide.high, "cut to ≥ 0")):
        cut = report.within_range(wide, report.statistic_range(key, accuracy, None))
        assert (cut.low, cut.high, cut.mean) == (low, high, wide.mean) and cut.method == f"t, 2 seeds, {said}", key
        assert cut.cell(1).endswith(f"]{report.CUT_MARK}")
    assert not wide.cell(1).endswith(report.CUT_MARK)  # an interval left as it is carries no mark
    # group gaps over seeds: a max − min over groups lies in [0, 1]
    runs = [report.RunResult(tmp_path / f"seed-{i}", {}, {"group": {"left": {"accuracy-gap-colour.pooled": gap}}},
                             pd.DataFrame(), pd.DataFrame()) for i, gap in enumerate((0.3, 0.01))]
    gaps = report.group_estimates(report.Configuration("c", runs), "left", ["accuracy-gap-colour.pooled"])
    gap = gaps["accuracy-gap-colour.pooled"]
    assert gap.low == 0.0 and gap.high <= 1.0 and gap.method == "t, 2 seeds, cut to [0, 1]"
    assert report.seed_estimate([0.3, 0.01]).low < 0  # it was cut


def test_differences_are_paired_by_seed(sweep):
    tidy = tidy_of(sweep)
    mean, fair = label(tidy, "weighting=mean"), label(tidy, "weighting=fairgrad")
    a = [s["final"] for s in summaries(sweep, "weighting=fairgrad/seed-*")]
    b = [s["final"] for s in summaries(sweep, "weighting=mean/seed-*")]
    diffs = [100 * (x["left"]["worst10"] - y["left"]["worst10"]) for x, y in zip(a, b, strict=True)]
    row = tidy.loc[(fair, "left.worst10.delta")]
    half = t975(2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert row["mean"] == pytest.approx(np.mean(diffs))
    assert (row["low"], row["high"]) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    assert row["interval"] == "paired t, 3 seeds"
    # the seed effect cancels: the paired interval is far narrower than the seeds' spread
    assert row["high"] - row["low"] < 0.3 * (tidy.loc[(fair, "left.worst10"), "high"]
                                             - tidy.loc[(fair, "left.worst10"), "low"])
    assert row["low"] > 0  # 3 points better, resolved
    # Δm% of each seed against the reference's run of that seed (higher is better: sign flipped)
    dm = [-50 * sum((x[t]["mean"] - y[t]["mean"]) / y[t]["mean"] for t in ("left", "right"))
          for x, y in zip(a, b, strict=True)]
    assert tidy.loc[(fair, "delta_m"), "mean"] == pytest.approx(np.mean(dm))
    assert tidy.loc[(fair, "delta_m"), "high"] == pytest.approx(
        np.mean(dm) + t975(2) * np.std(dm, ddof=1) / math.sqrt(3))
    # the reference has no difference with itself
    assert tidy.loc[(mean, "delta_m")].isna()["mean"] and tidy.loc[(mean, "delta_m"), "interval"] == "reference"


def test_one_seed_gets_a_bootstrap_over_clients_and_a_paired_bootstrap(tmp_path):
    rng = np.random.default_rng(5)
    fake_run(tmp_path / "mean", 7, "mean", accuracies(0, 0.0, rng))
    fake_run(tmp_path / "fairgrad", 7, "fairgrad", accuracies(0, 0.02, rng))
    tidy = tidy_of(tmp_path / "mean", tmp_path / "fairgrad")
    fair = label(tidy, "fairgrad")
    finals = {name: read_run(tmp_path / name).final for name in ("mean", "fairgrad")}
    left = {name: f[f.task == "left"].sort_values("client")["value"].to_numpy() * 100 for name, f in finals.items()}
    rows = np.random.default_rng(BOOTSTRAP_SEED).integers(0, CLIENTS, size=(BOOTSTRAP_RESAMPLES, CLIENTS))
    expected = np.quantile(left["fairgrad"][rows].mean(axis=1), [0.025, 0.975])
    row = tidy.loc[(fair, "left.mean")]
    assert row["mean"] == pytest.approx(left["fairgrad"].mean())
    assert (row["low"], row["high"]) == pytest.approx(tuple(expected))
    assert row["interval"] == f"bootstrap, {CLIENTS} clients"
    paired = np.quantile((left["fairgrad"] - left["mean"])[rows].mean(axis=1), [0.025, 0.975])
    delta = tidy.loc[(fair, "left.mean.delta")]
    assert delta["mean"] == pytest.approx((left["fairgrad"] - left["mean"]).mean())
    assert (delta["low"], delta["high"]) == pytest.approx(tuple(paired))
    assert delta["interval"] == f"paired bootstrap, {CLIENTS} clients (seed 7)"
    # the overall panel: each client's mean over the tasks it holds (client 5 holds 'left' only)
    overall = read_run(tmp_path / "fairgrad").final.groupby("client")["value"].mean().to_numpy() * 100
    expected = np.quantile(overall[rows].mean(axis=1), [0.025, 0.975])
    assert tuple(tidy.loc[(fair, "overall.mean"), ["low", "high"]]) == pytest.approx(tuple(expected))


def test_each_row_names_the_interval_of_its_own_tasks(tmp_path):
    """A configuration without the report's first task still has intervals, and says which."""
    rng = np.random.default_rng(3)
    fake_run(tmp_path / "digits", 0, "mean", accuracies(0, 0.0, rng))
    cfg = load_config(ROOT / "configs/arrests.toml", [])
    recorder = RunRecorder(tmp_path / "arrests", cfg, dataset_tasks(cfg.data))
    per_client = {c: {"released": {"accuracy": 0.6 + 0.01 * c, "loss": 1.0},
                      "checks": {"accuracy": 0.3 + 0.02 * c, "loss": 1.0}} for c in range(CLIENTS)}
    final = recorder.record_evaluation(1, per_client, dict.fromkeys(per_client, 20))
    recorder.log_round({"round": 1}, final)
    recorder.finish(final)
    found = configurations(tmp_path / "digits", tmp_path / "arrests")
    tidy = summarize_configurations(found, choose_reference(found, None))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2]
            for line in report.markdown_table(found, tidy).splitlines()[2:]}
    assert set(rows.values()) == {f"bootstrap, {CLIENTS} clients"}, rows


def test_runs_without_a_common_seed_are_compared_unpaired_without_an_interval(tmp_path):
    rng = np.random.default_rng(2)
    fake_run(tmp_path / "mean", 0, "mean", accuracies(0, 0.0, rng))
    fake_run(tmp_path / "fairgrad", 1, "fairgrad", accuracies(1, 0.0, rng))
    tidy = tidy_of(tmp_path / "mean", tmp_path / "fairgrad")
    row = tidy.loc[(label(tidy, "fairgrad"), "left.mean.delta")]
    assert row["interval"] == "unpaired: no common seed" and math.isnan(row["low"]) and not math.isnan(row["mean"])


def test_the_report_names_its_reference_and_shows_no_delta_for_it(sweep, tmp_path):
    written = make_report([sweep], tmp_path / "report")
    text = written["report"].read_text()
    assert "Reference: `" in text and "weighting=mean" in text.split("Reference: `", 1)[1].split("`", 1)[0]
    main = text.split("## Against the reference", 1)[0]
    rows = [line for line in main.splitlines() if line.startswith("| ") and "weighting=" in line]
    assert "weighting=mean" in rows[0] and "weighting=fairgrad" in rows[1]
    assert rows[0].endswith("| – (reference) |")  # no Δ for the reference
    assert "t, 3 seeds" in rows[0] and " [" in rows[1].rsplit(" | ", 1)[1]  # Δm% with its interval
    assert "overall accuracy (%)" in main
    header = next(line for line in main.splitlines() if line.startswith("| configuration"))
    assert header.count("|") - 1 == 3 + 4 * 2 + 2 + 1  # label, seeds, interval; 2 tasks; overall; Δm%
    against = text.split("## Against the reference", 1)[1].split("##", 1)[0]
    assert "paired t, 3 seeds" in against and "weighting=mean |" not in against
    assert "## Placement" not in text  # no run recorded where it was computed
    tidy = pd.read_csv(tmp_path / "report" / "report.csv")
    assert {"mean", "low", "high", "std", "n", "interval", "seeds"} <= set(tidy.columns)
    named = make_report([sweep], tmp_path / "named", reference="fairgrad")["report"].read_text()
    assert "(named with --reference)" in named
    row = next(line for line in named.splitlines() if line.startswith("| ") and "weighting=fairgrad" in line)
    assert row.endswith("| – (reference) |")


def test_placement_is_shown_only_when_more_than_one_host_computed(tmp_path):
    rng = np.random.default_rng(4)
    fake_run(tmp_path / "one" / "a", 0, "mean", accuracies(0, 0.0, rng), hosts=("here",))
    fake_run(tmp_path / "two" / "a", 0, "mean", accuracies(0, 0.0, rng), hosts=("here", "there"))
    alone = make_report([tmp_path / "one"], tmp_path / "r1")["report"].read_text()
    assert "## Placement" not in alone
    both = make_report([tmp_path / "two"], tmp_path / "r2")["report"].read_text()
    placed = both.split("## Placement", 1)[1].split("##", 1)[0]
    assert "`here/node0/cpu`" in placed and "`there/node1/cpu`" in placed


def test_the_cli_takes_the_reference_and_refuses_an_unknown_one(sweep, tmp_path):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    refused = CliRunner().invoke(cli, ["report", str(sweep), "--out", str(tmp_path / "r"), "--reference", "qffl"])
    assert refused.exit_code == 2 and "--reference 'qffl' matches 0 configurations" in refused.output


def test_one_seed_with_different_evaluated_clients_compares_the_runs_own_statistics(tmp_path):
    """Two runs of one seed that evaluated different clients: the difference is that of the
    main table's values (each run over all its clients), never one of a subset whose sign can
    differ; the interval resamples each run's clients apart."""
    rng = np.random.default_rng(8)
    mine = accuracies(0, 0.02, rng)
    del mine[0], mine[1]  # evaluated 4 of the 6 clients: its two weakest left out
    fake_run(tmp_path / "mean", 7, "mean", accuracies(0, 0.0, rng))
    fake_run(tmp_path / "fairgrad", 7, "fairgrad", mine)
    tidy = tidy_of(tmp_path / "mean", tmp_path / "fairgrad")
    fair, ref = label(tidy, "fairgrad"), label(tidy, "mean")
    left = {name: read_run(tmp_path / name).final.query("task == 'left'").sort_values("client")["value"].to_numpy()
            * 100 for name in ("mean", "fairgrad")}
    delta = tidy.loc[(fair, "left.mean.delta")]
    table = tidy.loc[(fair, "left.mean"), "mean"] - tidy.loc[(ref, "left.mean"), "mean"]
    assert delta["mean"] == pytest.approx(table) == pytest.approx(left["fairgrad"].mean() - left["mean"].mean())
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    rows_a = generator.integers(0, 4, size=(BOOTSTRAP_RESAMPLES, 4))
    rows_b = generator.integers(0, CLIENTS, size=(BOOTSTRAP_RESAMPLES, CLIENTS))
    expected = np.quantile(left["fairgrad"][rows_a].mean(axis=1) - left["mean"][rows_b].mean(axis=1), [0.025, 0.975])
    assert (delta["low"], delta["high"]) == pytest.approx(tuple(expected))
    assert delta["interval"] == "bootstrap, each run's clients apart (4 and 6 evaluated; seed 7)"
    means = {name: {t: tidy.loc[(label(tidy, name), f"{t}.mean"), "mean"] for t in ("left", "right")}
             for name in ("mean", "fairgrad")}
    expected_dm = -100 * np.mean([(means["fairgrad"][t] - means["mean"][t]) / means["mean"][t] for t in means["mean"]])
    assert tidy.loc[(fair, "delta_m"), "mean"] == pytest.approx(expected_dm)


def test_a_run_repeated_with_the_same_seed_counts_once_and_is_named(tmp_path):
    rng = np.random.default_rng(9)
    fake_run(tmp_path / "runs" / "mean", 0, "mean", accuracies(0, 0.0, rng))
    twice = accuracies(0, 0.02, rng)
    fake_run(tmp_path / "runs" / "fairgrad-a", 0, "fairgrad", twice)
    fake_run(tmp_path / "runs" / "fairgrad-b", 0, "fairgrad", twice)  # `make run` made twice: one seed
    tidy = tidy_of(tmp_path / "runs", reference="mean")
    fair = label(tidy, "fairgrad")
    assert tidy.loc[(fair, "left.mean"), "interval"] == f"bootstrap, {CLIENTS} clients"
    assert tidy.loc[(fair, "left.mean"), "seeds"] == 1
    assert tidy.loc[(fair, "left.mean.delta"), "interval"] == f"paired bootstrap, {CLIENTS} clients (seed 0)"
    assert tidy.loc[(fair, "left.mean.delta"), "low"] < tidy.loc[(fair, "left.mean.delta"), "high"]
    written = make_report([tmp_path / "runs"], tmp_path / "report", reference="mean")
    assert len(written["repeats"]) == 1 and "its final results are the same" in written["repeats"][0]
    assert "fairgrad-b" in written["repeats"][0] and "fairgrad-a" in written["repeats"][0]
    text = written["report"].read_text()
    assert "2 runs in 2 configurations" in text and "## Repeated runs" in text
    # a repeat whose results differ did not reproduce: said so
    other = dict(twice)
    other[0] = {t: v - 0.1 for t, v in other[0].items()}
    fake_run(tmp_path / "runs" / "fairgrad-c", 0, "fairgrad", other)
    written = make_report([tmp_path / "runs"], tmp_path / "report", reference="mean")
    assert any("DIFFER: the run did not reproduce" in line and "fairgrad-c" in line for line in written["repeats"])


@pytest.mark.parametrize("damage", ["", "{not json", "[1, 2]"])
def test_a_damaged_summary_is_named_in_one_line(tmp_path, damage):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    rng = np.random.default_rng(4)
    fake_run(tmp_path / "runs" / "good", 0, "mean", accuracies(0, 0.0, rng))
    bad = fake_run(tmp_path / "runs" / "bad", 0, "fairgrad", accuracies(0, 0.0, rng))
    (bad / "summary.json").write_text(damage)
    with pytest.raises(ValueError, match=f"'{bad / 'summary.json'}' cannot be read"):
        make_report([tmp_path / "runs"], tmp_path / "report")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "runs")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: '{bad / 'summary.json'}' cannot be read (")


@pytest.mark.parametrize(("damage", "said"), [
    (lambda s: s["final"]["left"].update(mean=5.0), "has final.left.mean = 5.0, where the final round's rows"),
    (lambda s: s["final"]["left"].update(jain=True), "has final.left.jain = True, not a number"),
    (lambda s: s["final"]["left"].update(gini="0.1"), "has final.left.gini = '0.1', not a number"),
    (lambda s: s["final"]["left"].update(mean=float("nan")), "has final.left.mean = nan, where"),
    (lambda s: s["final"].update(left=3), "has no metric name for task 'left' under final"),
    (lambda s: s["final"]["left"].pop("metric"), "has no metric name for task 'left' under final"),
])
def test_a_summary_that_is_not_its_runs_rows_is_refused_naming_the_file(tmp_path, damage, said):
    """The table reads summary.json, the per-client columns metrics.csv: a summary edited or
    damaged (accuracy 500 %, Jain true, a seed silently dropped as NaN) was printed as a result,
    or raised a TypeError."""
    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(3)})
    report.read_run(run)  # as written: it reads
    summary = json.loads((run / "summary.json").read_text())
    damage(summary)
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError) as refused:
        report.read_run(run)
    text = str(refused.value)
    assert text.startswith(f"'{run / 'summary.json'}' {said}") and "\n" not in text, text


@pytest.mark.parametrize(("value", "said"), [("-0.5", "of -0.5, outside [0, 1]"), ("5.0", "of 5, outside [0, 1]"),
                                             ("99999999999999999999999", "cannot be read")])
def test_impossible_client_values_are_refused_naming_metrics_csv(tmp_path, value, said):
    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(3)})
    metrics = (run / "metrics.csv").read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(metrics) if line.startswith("1,0,left,test,accuracy,"))
    if said == "cannot be read":  # a client id too large for any integer column
        metrics[index] = metrics[index].replace("1,0,", f"1,{value},", 1)
    else:
        metrics[index] = f"1,0,left,test,accuracy,{value}\n"
    (run / "metrics.csv").write_text("".join(metrics))
    for parquet in run.glob("*.parquet"):
        parquet.unlink()
    with pytest.raises(ValueError) as refused:
        report.read_run(run)
    assert str(refused.value).startswith(f"'{run / 'metrics.csv'}' ") and said in str(refused.value), refused.value


def test_runs_of_two_datasets_are_not_compared(tmp_path):
    """A MultiMNIST run and a Synthetic run were paired by client id (a 'paired bootstrap' Δ of
    unrelated clients)."""
    one = fake_run(tmp_path / "a", 0, "mean", {c: {"left": 0.5, "right": 0.4} for c in range(2)})
    other = fake_run(tmp_path / "b", 1, "mean", {c: {"left": 0.6, "right": 0.4} for c in range(2)})
    config = other / "config.toml"
    config.write_text(config.read_text().replace('dataset = "multimnist"', 'dataset = "synthetic"', 1))
    said = (r"^the runs are of 2 datasets \(multimnist in '.*/a'; synthetic in '.*/b'\): a report compares "
            r"runs of one dataset; give it the folders of one$")
    with pytest.raises(ValueError, match=said):
        report.check_one_dataset([report.read_run(one), report.read_run(other)])
    report.check_one_dataset([report.read_run(one)])


def test_a_report_keeps_files_of_its_names_that_no_report_wrote(tmp_path):
    """--out naming a folder of the user's holding a report.csv: it was replaced without a word."""
    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(2)})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.csv").write_text("mine\n")
    with pytest.raises(ValueError, match=r"holds report.csv, not written by a fedmtl report, which a report would"):
        report.make_report([run], mine)
    assert (mine / "report.csv").read_text() == "mine\n" and sorted(p.name for p in mine.iterdir()) == ["report.csv"]
    # a report stopped part-way (its marker, report.csv, no report.md) is replaced by the next one
    ours = tmp_path / "ours"
    report.make_report([run], ours)
    (ours / "report.md").unlink()
    report.make_report([run], ours)
    assert (ours / "report.md").is_file()


def test_a_report_keeps_a_report_md_of_the_users_and_replaces_one_an_earlier_fedmtl_wrote(tmp_path):
    """Any report.md counted as an earlier report's: a user's own notes (and report.csv) in
    --out were replaced, with 'note: replaced the earlier report'."""
    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(2)})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("# my notes\n")
    (mine / "report.csv").write_text("mine\n")
    said = (rf"^'{mine}' holds report.md, report.csv, not written by a fedmtl report, which a report would "
            r"replace; choose another --out \(or move those files away\)$")
    with pytest.raises(ValueError, match=said):
        report.make_report([run], mine)
    assert (mine / "report.md").read_text() == "# my notes\n" and (mine / "report.csv").read_text() == "mine\n"
    assert sorted(p.name for p in mine.iterdir()) == ["report.csv", "report.md"]
    # a report by a fedmtl that wrote no marker: its report.md's title beside its report.csv
    older = tmp_path / "older"
    report.make_report([run], older)
    (older / report.REPORT_MARKER).unlink()
    assert report.make_report([run], older)["replaced"]
    assert (older / "report.md").read_text().startswith(report.REPORT_TITLE + "\n")


@pytest.mark.parametrize("seed", ['"zero"', "true", "1.5"])
def test_a_seed_that_is_not_a_whole_number_is_refused_by_the_report_and_load_runs(tmp_path, seed):
    """``int("zero")`` in the report's grouping was a ValueError naming no file, and
    ``fedmtl.load_runs`` handed the string on as the run's seed."""
    import fedmtl

    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(3)})
    assert len(fedmtl.load_runs(run))  # as written: it reads
    config = (run / "config.toml").read_text()
    assert "\nseed = 0\n" in config
    (run / "config.toml").write_text(config.replace("\nseed = 0\n", f"\nseed = {seed}\n"))
    said = f"'{run / 'config.toml'}' has run.seed = {tomllib.loads(f'x = {seed}')['x']!r}, not a whole number"
    for read in (report.read_run, fedmtl.load_runs):
        with pytest.raises(ValueError) as refused:
            read(run)
        assert str(refused.value).startswith(said) and "\n" not in str(refused.value), refused.value


@pytest.mark.parametrize(("value", "said"), [("inf", "of inf"), ("-0.25", "of -0.25"), ("nan", "of nan")])
def test_an_impossible_value_in_an_earlier_round_is_refused_naming_its_round(tmp_path, value, said):
    """Only the final round's values were checked: a round-1 accuracy of inf went into the
    report's curves and figures without a word."""
    cfg = load_config(None, ["data.num-clients=3"])
    run = tmp_path / "run"
    recorder = RunRecorder(run, cfg, dataset_tasks(cfg.data))
    per_client = {c: {t: {"accuracy": 0.5 + 0.1 * c, "loss": 1.0} for t in ("left", "right")} for c in range(3)}
    for r in (1, 2):
        final = recorder.record_evaluation(r, per_client, dict.fromkeys(range(3), 20))
        recorder.log_round({"round": r}, final)
    recorder.finish(final)
    report.read_run(run)  # as written: it reads
    metrics = (run / "metrics.csv").read_text().replace("1,2,right,test,accuracy,0.7\n",
                                                         f"1,2,right,test,accuracy,{value}\n")
    assert metrics != (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(metrics)
    for parquet in run.glob("*.parquet"):
        parquet.unlink()
    with pytest.raises(ValueError) as refused:
        report.read_run(run)
    assert str(refused.value).startswith(f"'{run / 'metrics.csv'}' has a round-1 right accuracy {said}, "
                                         "outside [0, 1]: "), refused.value


def test_a_run_given_under_two_spellings_counts_once(tmp_path, monkeypatch):
    """``load_runs(["runs/x", "/abs/runs/x"])`` returned every row twice (found by a newcomer
    pass); the report paired the run with itself."""
    import fedmtl

    run = fake_run(tmp_path / "runs" / "x", 0, "mean", {c: {"left": 0.5 + 0.1 * c, "right": 0.4} for c in range(3)})
    monkeypatch.chdir(tmp_path)
    once = fedmtl.load_runs(run)
    assert report.find_run_dirs(["runs/x", run, "runs/../runs/x", "runs"]) == [Path("runs/x")]
    assert len(fedmtl.load_runs(["runs/x", str(run)])) == len(once)

"""The terminal display says what it measures: the federated final table is the personalized
(`test`) view with the replies counted per round; the centralized baseline's is the pooled-data
model on each client's test split, with no replies (it has none). In-process, no Ray."""

from __future__ import annotations

from pathlib import Path

from fedmtl.results import create_run_dir
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_centralized_baseline_prints_what_it_measures_and_no_replies(tmp_path, capsys):
    from fedmtl.training.centralized import run_centralized

    cfg = load_config(ROOT / "configs/synthetic.toml", ["run.mode=centralized", "run.rounds=1", "data.num-clients=2"])
    run_centralized(cfg, create_run_dir(cfg, tmp_path / "run"), quiet=False)
    out = capsys.readouterr().out
    assert "Pooled-data model: test metrics on each client's test split (round 1)" in out
    assert "Personalized" not in out
    assert "replies" not in out
    assert "round 1/1" in out


def test_a_federated_round_line_counts_replies_and_the_table_is_the_personalized_view(capsys):
    from fedmtl.progress import Progress
    from fedmtl.results import RoundStats

    stats = RoundStats(round=2, stats={"left": {"mean": 0.5, "wmean": 0.5, "std": 0.1, "worst": 0.4,
                                                "worst10": 0.4, "best": 0.6, "jain": 0.96}},
                       metric={"left": "accuracy"})
    progress = Progress(3)
    progress.round(stats, 1.0, {"aggregated": 4, "failures": 1})
    progress.final_table(stats)
    out = capsys.readouterr().out
    assert "replies 4 (1 failed)" in out
    assert "Personalized test metrics across clients (round 2)" in out

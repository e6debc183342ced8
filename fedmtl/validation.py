"""Loading configs, with every check: the schema, then the registries, then the rules across sections.

:mod:`fedmtl.config` is the schema alone (types, ranges, unknown keys) and knows no
registry. This module sits above it and above the registries, and is where a config is
checked in full, in three steps:

1. **Schema** (:func:`fedmtl.config.parse_schema`), after turning keys that moved into
   ``[data.params]`` into a one-line error naming their new place, and filling in
   ``model.heads`` or ``personalization.method`` when a config sets only the other
   (:func:`heads_from_method`).
2. **Names and parameters**: dataset, partitioner, task sets, backbone, weightings (and
   where they may run) with their parameters, kinds of corruption; the dataset's own
   ``[data.params]``, checked by its ``Params`` model and filled in with its defaults, so a
   resolved config records exactly what ran; likewise the personalization method's
   ``[personalization.params]``.
3. **Across sections**: input shape vs backbone, natural clients, partition task, feature
   skew, global heads, where heads live vs virtual SuperNodes, centralized mode, the
   personalization method vs the heads and its own checks.

Everybody loads configs through :func:`load_config`, :func:`build_config` or
:func:`config_from_flat`; :func:`check_config` re-checks a config changed in code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedmtl.aggregation import WEIGHTINGS, Aggregator, WeightingParamsError, validate_params
from fedmtl.aggregation.plans import needs_task_parts
from fedmtl.config import (
    FOLLOWING_KEYS,
    ConfigError,
    ExperimentConfig,
    PersonalizationSection,
    apply_override,
    parse_override,
    parse_schema,
    read_values,
    unflatten,
    virtual_supernodes,
)
from fedmtl.data import DATASETS, PARTITIONERS, TASK_SETS, dataset_callback, dataset_input_shape, dataset_tasks
from fedmtl.data.federation import check_natural_clients
from fedmtl.faults import CORRUPTIONS
from fedmtl.models import BACKBONES, build_model
from fedmtl.one_line import described, one_line, raised_at
from fedmtl.parquet import parquet_error
from fedmtl.plugins import load_plugins, plugin_entries, resolve_plugin_files
from fedmtl.registry import Registry, did_you_mean
from fedmtl.shipped import resolve_config
from fedmtl.trackers import tracker_errors
from fedmtl.training.methods import GLOBAL, METHODS, PERSONAL, MethodParamsError

IMAGE_RANK = 3
"""Rank of image inputs, ``(channels, height, width)``."""


# -- loaders ------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a TOML config file (or the defaults), apply ``--set`` overrides, check it all.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; ``None`` starts from the defaults. Relative ``.py`` files of
        ``run.plugins`` are resolved against its folder when the file sets them, against the
        working directory when ``overrides`` do (or without a file).
    overrides : list[str], optional
        ``"section.key=value"`` strings applied on top, in order (``data.params.canvas=40``
        sets one entry of a parameter table).

    Returns
    -------
    ExperimentConfig
        The resolved config: ``data.params`` lists every option of the dataset.

    Raises
    ------
    ConfigError
        One line per bad key or value, naming it and what is allowed.
    """
    path = resolve_config(path) if path is not None else None  # a shipped config by name (fedmtl.shipped)
    folder = Path(path).parent if path is not None and Path(path).is_file() else None
    values = read_values(path)
    from_file = plugin_entries(values)
    for text in overrides or []:
        apply_override(values, *parse_override(text))
    if plugin_entries(values) != from_file:
        folder = None  # run.plugins set by --set: relative to the working directory, where it was typed
    return build_config(resolve_plugin_files(values, folder), recorded=path is not None and recorded_config(path))


def recorded_config(path: str | Path) -> bool:
    """``path`` is a run folder's own ``config.toml`` (beside the folder's marker): the config a
    run recorded, which the checks added since (:data:`NEW_RUN_CHECKS`) do not refuse."""
    from fedmtl.folder_lock import MARKER

    path = Path(path)
    return path.name == "config.toml" and (path.parent / MARKER).is_file()


def config_from_flat(flat: dict[str, Any]) -> ExperimentConfig:
    """Check a flat Flower run config (``"section.key"`` keys, tables as JSON text) in full.

    ``model.heads`` and ``personalization.method`` left ``""`` (their defaults in pyproject,
    :data:`fedmtl.config.FOLLOWING_KEYS`) are unset: the one a run sets decides the other, as
    in a config file.
    """
    return build_config(unflatten({k: v for k, v in flat.items() if not (k in FOLLOWING_KEYS and v == "")}))


def build_config(values: dict[str, Any], recorded: bool = False) -> ExperimentConfig:
    """Check a nested ``{section: {key: value}}`` dict in full and resolve it (``recorded``: a
    config a run recorded, see :func:`check_config`).

    Raises
    ------
    ConfigError
        For a plugin that does not import (:class:`fedmtl.plugins.PluginError`), a key that
        moved (naming its new place), then for the schema, then for names, parameters and the
        rules across sections.
    """
    load_plugins(plugin_entries(values))  # before any registered name is checked
    moved = moved_key_errors(values)
    if moved:
        raise ConfigError("\n".join(moved))
    values = heads_from_method(values)
    try:
        cfg = parse_schema(values)
    except ConfigError as exc:  # report the unknown names too, in the same pass
        raise ConfigError("\n".join([str(exc), *raw_name_errors(values)])) from None
    return check_config(cfg, recorded)


def check_config(cfg: ExperimentConfig, recorded: bool = False) -> ExperimentConfig:
    """Run the checks beyond the schema on ``cfg``; return it with ``data.params``,
    ``personalization.params`` and the rules' parameters resolved (every default filled in).
    A config a run recorded (``recorded``: its folder's ``config.toml``) skips
    :data:`NEW_RUN_CHECKS`, added since runs were recorded: their folders still load and resume.

    Raises
    ------
    ConfigError
        Every unknown name and bad parameter (one per line), or the first broken rule
        across sections.
    """
    errors = name_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    cfg = resolve_rule_params(resolve_method_params(resolve_data_params(cfg)))
    for check in CROSS_CHECKS + (() if recorded else NEW_RUN_CHECKS):
        try:
            check(cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


# -- keys that moved ----------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except TypeError:
        return repr(value)


def moved_key_errors(values: dict[str, Any]) -> list[str]:
    """One line per ``[data]`` key that moved into ``[data.params]``, naming its new place."""
    data = values.get("data")
    if not isinstance(data, dict):
        return []
    lines = []
    for old, value in data.items():
        for dataset, entry in DATASETS.items():
            if old in entry.moved:
                new = entry.moved[old]
                lines.append(
                    f"data.{old} moved: write it as data.params.{new} ([data.params] {new} = "
                    f"{_toml_value(value)}), an option of dataset '{dataset}'"
                )
                break
    return lines


# -- model.heads and personalization.method ---------------------------------------------
def heads_from_method(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the one of ``model.heads`` and ``personalization.method`` it leaves unset
    filled in from the other: a method alone gets the heads it allows first (``"none"``,
    ``"fedprox"``, ``"finetune"``, ``"ditto"``: global; the others: personal), and
    ``model.heads = "global"`` alone means ``personalization.method = "none"`` (as before the
    section existed). With both set, :func:`check_personalization` checks that they agree.
    """
    model, section = values.get("model", {}), values.get("personalization", {})
    if not isinstance(model, dict) or not isinstance(section, dict):
        return values  # the schema names the bad section
    method = section.get("method")
    if "heads" not in model and isinstance(method, str) and method in METHODS:
        return {**values, "model": {**model, "heads": METHODS.get(method).heads[0]}}
    if "method" not in section and model.get("heads") == GLOBAL:
        return {**values, "personalization": {**section, "method": "none"}}
    return values


# -- names and parameters -----------------------------------------------------------------
def _named(key: str, value: Any, message: str) -> str:
    return f"{key} = {value!r}: {message}"


def _registered(key: str, value: str, registry: Registry[Any]) -> list[str]:
    return [] if value in registry else [_named(key, value, registry.unknown_message(value))]


REGISTERED: tuple[tuple[str, str, Registry[Any]], ...] = (
    ("data", "dataset", DATASETS),
    ("data", "partitioner", PARTITIONERS),
    ("data", "task-sets", TASK_SETS),
    ("model", "backbone", BACKBONES),
    ("personalization", "method", METHODS),
)
"""Keys that name an entry of a registry."""

WEIGHTING_KEYS = (("client", "weighting", "params"), ("server", "weighting", "params"),
                  ("server", "task-weighting", "task-params"))
"""Keys that name a weighting, with the key of its parameters."""


def weighting_name_errors(side: str, key: str, name: str) -> list[str]:
    """Errors of weighting ``name`` set at ``side.key``: unknown, or not allowed on ``side``."""
    if name not in WEIGHTINGS:
        return [_named(f"{side}.{key}", name, WEIGHTINGS.unknown_message(name))]
    scope = WEIGHTINGS.get(name).scope
    if scope not in (side, "both"):
        where = "the server only, not across tasks" if scope == "server" else "clients only, not on the server"
        return [_named(f"{side}.{key}", name, f"weighting '{name}' runs on {where}")]
    return []


def weighting_params_errors(side: str, name: str, params: dict[str, Any], params_key: str) -> list[str]:
    """Errors of the parameters ``side.params_key`` of the known weighting ``name``."""
    try:
        validate_params(WEIGHTINGS.get(name), params)
    except WeightingParamsError as exc:
        return [f"{side}.{params_key}: {line}" for line in str(exc).splitlines()]
    return []


def corruption_errors(kinds: str) -> list[str]:
    """Errors of ``faults.corrupt-kinds``: empty, or naming an unknown kind."""
    names = [n.strip() for n in kinds.split(",") if n.strip()]
    if not names:
        return [_named("faults.corrupt-kinds", kinds, f"name at least one of: {', '.join(CORRUPTIONS)}")]
    return [
        _named("faults.corrupt-kinds", kinds,
               f"unknown corruption '{name}'{did_you_mean(name, list(CORRUPTIONS))}; "
               f"allowed: {', '.join(CORRUPTIONS)}")
        for name in names if name not in CORRUPTIONS
    ]


def _text(values: dict[str, Any], section: str, key: str) -> str | None:
    content = values.get(section)
    value = content.get(key) if isinstance(content, dict) else None
    return value if isinstance(value, str) else None


def raw_name_errors(values: dict[str, Any]) -> list[str]:
    """Errors of the names in nested ``values`` (schema-checked or not): unknown registered
    names, weightings where they may not run, unknown kinds of corruption. Keys that are
    missing or not strings are left to the schema."""
    errors = []
    for section, key, registry in REGISTERED:
        if (name := _text(values, section, key)) is not None:
            errors += _registered(f"{section}.{key}", name, registry)
    for side, key, _ in WEIGHTING_KEYS:
        if (name := _text(values, side, key)) is not None:
            errors += weighting_name_errors(side, key, name)
    if (kinds := _text(values, "faults", "corrupt-kinds")) is not None:
        errors += corruption_errors(kinds)
    return errors


def name_errors(cfg: ExperimentConfig) -> list[str]:
    """Every registered name of ``cfg`` that is unknown or misplaced, and bad weighting parameters."""
    nested = cfg.to_nested()
    errors = raw_name_errors(nested)
    for side, key, params_key in WEIGHTING_KEYS:
        name = nested[side][key]
        if not weighting_name_errors(side, key, name):
            errors += weighting_params_errors(side, name, nested[side][params_key], params_key)
    method = cfg.personalization.method
    if method in METHODS:
        try:
            METHODS.get(method).parse_params(dict(cfg.personalization.params))
        except MethodParamsError as exc:
            errors += [f"personalization.params: {line}" for line in str(exc).splitlines()]
    errors += tracker_errors(cfg.run.trackers)
    if (error := parquet_error(cfg.run.parquet)) is not None:
        errors.append(error)
    return errors


def _param_error(err: dict[str, Any], dataset: str, allowed: list[str]) -> str:
    loc = [str(part) for part in err["loc"]]
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return (
            f"data.params.{loc[-1]}: unknown option of dataset '{dataset}'{did_you_mean(loc[-1], allowed)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    if not loc:  # a check across options; the message names the option
        return f"data.params.{message}"
    return _named(f"data.params.{'.'.join(loc)}", err.get("input"), message)


def resolve_data_params(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``data.params`` checked by its dataset and every default filled in.

    Raises
    ------
    ConfigError
        One line per bad option, naming ``data.params.<key>``.
    """
    dataset = cfg.data.dataset
    model = DATASETS.get(dataset).params
    try:
        params = model.model_validate(dict(cfg.data.params))
    except ValidationError as exc:
        allowed = [info.alias or name for name, info in model.model_fields.items()]
        raise ConfigError("\n".join(_param_error(e, dataset, allowed) for e in exc.errors())) from None
    data = cfg.data.model_copy(update={"params": params.model_dump(by_alias=True)})
    return cfg.model_copy(update={"data": data})


def resolve_method_params(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``personalization.params`` checked by its method and every default filled in
    (the method's name and options are known: :func:`name_errors` ran)."""
    params = METHODS.get(cfg.personalization.method).parse_params(dict(cfg.personalization.params))
    section = cfg.personalization.model_copy(update={"params": params.model_dump(by_alias=True)})
    return cfg.model_copy(update={"personalization": section})


def _recordable(value: Any) -> bool:
    """Whether a config's parameter table can hold ``value`` (a finite number, a bool or a string;
    not ``None``, a table or a list)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int | str)


def rule_params_with_defaults(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of the known rule ``name`` (valid) with every parameter, in the rule's order,
    under its config name (``warm-start``, also when given as ``warm_start``): a value given as
    given, one left unset with its default. A default the table cannot hold (``None``: "unset",
    a table) stays out, so the rule reads it as before."""
    instance = validate_params(WEIGHTINGS.get(name), params)
    out: dict[str, Any] = {}
    for field_name, info in type(instance).model_fields.items():
        key = info.alias or field_name
        given = [k for k in (key, field_name) if k in params]
        if given:
            out[key] = params[given[0]]
        elif _recordable(value := getattr(instance, field_name)):
            out[key] = value
    return out


def resolve_rule_params(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``client.params``, ``server.params`` and ``server.task-params`` listing every
    parameter of their rule (:func:`rule_params_with_defaults`), so ``config.toml`` records the
    values that ran (the names and parameters are valid: :func:`name_errors` ran)."""
    client = cfg.client.model_copy(update={"params": rule_params_with_defaults(cfg.client.weighting,
                                                                               dict(cfg.client.params))})
    server = cfg.server.model_copy(update={
        "params": rule_params_with_defaults(cfg.server.weighting, dict(cfg.server.params)),
        "task_params": rule_params_with_defaults(cfg.server.task_weighting, dict(cfg.server.task_params)),
    })
    return cfg.model_copy(update={"client": client, "server": server})


PARAM_TABLES: tuple[tuple[str, str, str], ...] = (
    ("client", "weighting", "params"),
    ("server", "weighting", "params"),
    ("server", "task-weighting", "task-params"),
    ("data", "dataset", "params"),
    ("personalization", "method", "params"),
)
"""``(section, name key, table key)`` of every table that a resolved config fills in with the
defaults of the name it belongs to (:func:`check_config`)."""


def _params_model(section: str, name: str) -> Any:
    """The pydantic model of the parameters of ``name`` (a known rule, dataset or method)."""
    if section == "data":
        return DATASETS.get(name).params
    if section == "personalization":
        return METHODS.get(name).Params
    return WEIGHTINGS.get(name).Params


def _param_defaults(model: Any) -> dict[str, tuple[str, Any]]:
    """``{config key: (field name, default)}`` of the fields of ``model`` that have a default."""
    return {info.alias or name: (name, info.get_default(call_default_factory=True))
            for name, info in model.model_fields.items() if not info.is_required()}


def _same_value(value: Any, default: Any) -> bool:
    """``value`` (as a config records it) is ``default`` (a tuple and a list alike)."""
    if isinstance(value, list | tuple) and isinstance(default, list | tuple):
        return list(value) == list(default)
    return bool(value == default)


def _kept_params(table: dict[str, Any], model: Any, given: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of the resolved ``table`` that were set: those in ``given`` (under their config or
    field name), or with ``given`` ``None``, those whose value is not the default."""
    defaults = _param_defaults(model)
    kept = {}
    for key, value in table.items():
        field_name, default = defaults.get(key, (key, None))
        if given is not None:
            if key in given or field_name in given:
                kept[key] = value
        elif key not in defaults or not _same_value(value, default):
            kept[key] = value
    return kept


def unresolved_values(cfg: ExperimentConfig, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nested values of the resolved ``cfg`` without what :func:`check_config` filled in: the
    parameters a rule, dataset or method took by default (:data:`PARAM_TABLES`) and the one of
    ``model.heads`` and ``personalization.method`` that follows from the other
    (:func:`heads_from_method`). A file of them resolves to ``cfg`` again, and to the defaults of
    another rule, dataset or method when a sweep's grid replaces the name.

    Parameters
    ----------
    cfg : ExperimentConfig
        A resolved config.
    given : dict, optional
        The nested values ``cfg`` was built from: what they set is kept, nothing else of those
        keys. ``None``: the parameters equal to their defaults and the heads that follow from the
        method are dropped (as are both, when they are the defaults).
    """
    nested = cfg.to_nested()
    for section, name_key, table_key in PARAM_TABLES:
        model = _params_model(section, nested[section][name_key])
        set_here = None if given is None else _given_table(given, section, table_key)
        nested[section][table_key] = _kept_params(nested[section][table_key], model, set_here)
    for key in FOLLOWING_KEYS:
        section, name = key.split(".")
        if given is not None and _given_value(given, section, name) is None:
            del nested[section][name]
    if given is None:
        method, heads = nested["personalization"]["method"], nested["model"]["heads"]
        if (method, heads) == (PersonalizationSection().method, PERSONAL):  # both unset
            del nested["personalization"]["method"]
        if heads == METHODS.get(method).heads[0]:
            del nested["model"]["heads"]
    return nested


def _given_value(given: dict[str, Any], section: str, key: str) -> Any:
    """What ``given`` sets for ``section.key``, under the key's name or its Python spelling
    (``task-params`` or ``task_params``, as :func:`build_config` takes both); ``None``: unset."""
    values = given.get(section, {})
    if not isinstance(values, dict):
        return None
    return values.get(key, values.get(key.replace("-", "_")))


def _given_table(given: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    """The parameter table ``given`` sets for ``section.key`` (:func:`_given_value`), as a dict
    (its JSON text in Flower's flat form read); ``{}`` when unset."""
    table = _given_value(given, section, key)
    if isinstance(table, str):
        with contextlib.suppress(ValueError):
            table = json.loads(table)
    return dict(table) if isinstance(table, dict) else {}


# -- rules across sections ----------------------------------------------------------------
def _inputs(rank: int) -> str:
    return "image inputs" if rank == IMAGE_RANK else f"inputs of rank {rank}"


def _federates(cfg: ExperimentConfig, backbone: str) -> bool:
    """Whether ``cfg`` with ``backbone`` passes :func:`check_something_federated` (a suggested
    backbone must not lead to the next refusal)."""
    try:
        check_something_federated(cfg.with_values(model={"backbone": backbone}))
    except ValueError:
        return False
    return True


def check_backbone_input(cfg: ExperimentConfig) -> None:
    """The backbone takes the dataset's inputs (its ``input_rank``)."""
    shape = dataset_input_shape(cfg.data)
    rank = getattr(BACKBONES.get(cfg.model.backbone), "input_rank", None)
    if rank is None or rank == len(shape):
        return
    fitting = [name for name, backbone in BACKBONES.items()
               if getattr(backbone, "input_rank", None) in (None, len(shape))]
    fitting = [f"'{name}'" for name in ([n for n in fitting if _federates(cfg, n)] or fitting)]
    raise ValueError(
        f"model.backbone = '{cfg.model.backbone}' needs {_inputs(rank)}, but dataset '{cfg.data.dataset}' "
        f"has inputs of shape {shape}; use backbone = {' or '.join(fitting)}"
    )


def check_natural_partition(cfg: ExperimentConfig) -> None:
    """``data.partitioner = 'natural'`` needs a dataset with natural clients, as many as
    ``data.num-clients`` when their number is fixed."""
    if cfg.data.partitioner != "natural":
        return
    natural = DATASETS.get(cfg.data.dataset).natural_clients
    if natural is None:
        raise ValueError(
            f"data.partitioner = 'natural': dataset '{cfg.data.dataset}' has no natural "
            "clients; choose another partitioner"
        )
    count = dataset_callback(cfg.data, "natural_clients", lambda: natural(cfg.data))
    if count is not None:
        check_natural_clients(cfg.data.dataset, count, cfg.data.num_clients)


def check_partition_task(cfg: ExperimentConfig) -> None:
    """``data.partition-task`` is a task of the dataset, one it can partition on."""
    task = cfg.data.partition_task
    if not task:
        return
    names = [t.name for t in dataset_tasks(cfg.data)]
    if task not in names:
        raise ValueError(
            f"data.partition-task = '{task}' is not a task of dataset "
            f"'{cfg.data.dataset}'{did_you_mean(task, names)}; tasks: {', '.join(names)}"
        )
    entry = DATASETS.get(cfg.data.dataset)
    if entry.partition_tasks is not None and task not in entry.partition_tasks:
        allowed = " or ".join(f"'{t}'" for t in entry.partition_tasks)
        raise ValueError(f"data.partition-task: {entry.partition_reason}; use '' or {allowed}")


def check_task_counts(cfg: ExperimentConfig) -> None:
    """Counts that must fit the dataset's tasks: ``data.tasks-per-client`` (task sets 'random'
    and 'mixed') at most its tasks, and ``data.classes-per-client`` (the 'pathological'
    partitioner) at most the classes of the task it partitions on."""
    tasks = dataset_tasks(cfg.data)
    if cfg.data.task_sets in ("random", "mixed") and cfg.data.tasks_per_client > len(tasks):
        raise ValueError(
            f"data.tasks-per-client = {cfg.data.tasks_per_client}: dataset '{cfg.data.dataset}' has "
            f"{len(tasks)} task(s) ({', '.join(t.name for t in tasks)}); at most {len(tasks)}")
    if cfg.data.partitioner != "pathological":
        return
    task = next((t for t in tasks if t.name == (cfg.data.partition_task or tasks[0].name)), None)
    if task is None or task.kind == "regression":
        return
    classes = 2 if task.kind == "binary" else task.num_classes
    if cfg.data.classes_per_client > classes:
        raise ValueError(
            f"data.classes-per-client = {cfg.data.classes_per_client}: the pathological partition is by task "
            f"'{task.name}', which has {classes} classes; at most {classes}")


def check_task_weighting_used(cfg: ExperimentConfig) -> None:
    """A ``server.task-weighting`` other than the default is refused under a plan without a task
    level: the run would combine without it, and its header and results would not say so."""
    from fedmtl.aggregation.plans import uses_task_weighting

    server = cfg.server
    if cfg.run.mode == "centralized":  # no server rule runs
        return
    if server.task_weighting != "mean" and not uses_task_weighting(server.plan):
        raise ValueError(
            f"server.task-weighting = '{server.task_weighting}' is used by the two-level plans only "
            f"('clients-then-tasks', 'tasks-then-clients'); server.plan = '{server.plan}' would ignore it: "
            "choose a two-level plan, or leave server.task-weighting unset")


def check_feature_skew(cfg: ExperimentConfig) -> None:
    """Rotation needs image inputs."""
    if cfg.data.feature_skew != "rotation":
        return
    shape = dataset_input_shape(cfg.data)
    if len(shape) != IMAGE_RANK:
        raise ValueError(
            f"data.feature-skew = 'rotation' needs image inputs, but dataset "
            f"'{cfg.data.dataset}' has inputs of shape {shape}; use 'noise'"
        )


def check_global_heads(cfg: ExperimentConfig) -> None:
    """Global heads need every client to hold every task, and the 'clients' plan."""
    if cfg.model.heads != GLOBAL:
        return
    method = cfg.personalization.method
    heads = "model.heads = 'global'" + (f" (personalization.method = '{method}')" if method != "none" else "")
    if cfg.data.task_sets != "all":
        hint = "; or model.heads = 'personal'" if PERSONAL in METHODS.get(method).heads else ""
        raise ValueError(
            f"{heads} needs every client to hold every task "
            f"(data.task-sets = 'all'), not {cfg.data.task_sets!r}{hint}"
        )
    if cfg.server.plan != "clients":
        raise ValueError(
            f"{heads} federates whole models: it needs server.plan = "
            f"'clients', not {cfg.server.plan!r}"
        )


def meta_backbone(cfg: ExperimentConfig) -> Any:
    """The backbone as fedmtl builds it, ``cls(input_shape, out_dim=model.width)``, on torch's
    meta device (nothing is allocated), or on the CPU when it cannot be built on the meta
    device (a plugin's class using NumPy on its tensors); ``None`` when its sizes are beyond
    what torch can count (:func:`check_model_memory` then says so).

    Raises
    ------
    ValueError
        The class cannot be built so (a plugin's backbone, docs/extending.md), naming the error.
    """
    import torch

    name, shape, width = cfg.model.backbone, tuple(dataset_input_shape(cfg.data)), cfg.model.width
    cls = BACKBONES.get(name)
    try:
        with torch.device("meta"):
            return cls(shape, out_dim=width)
    except (RuntimeError, OverflowError):
        return None
    except Exception:  # noqa: BLE001 - e.g. NumPy on a meta tensor: the CPU tells
        pass
    try:
        return cls(shape, out_dim=width)  # on the CPU: a plugin's class that needs real tensors to build
    except Exception as exc:  # noqa: BLE001 - a plugin's class failing in any way is one line
        raise ValueError(f"model.backbone = {name!r} cannot be built as {name}(input_shape={shape}, "
                         f"out_dim={width}): {described(exc)} (docs/extending.md: backbones)") from None


def check_backbone_builds(cfg: ExperimentConfig) -> None:
    """The backbone builds (:func:`meta_backbone`) and says the size of the representation it
    returns in a positive integer attribute ``out_dim``."""
    backbone = meta_backbone(cfg)
    out = getattr(backbone, "out_dim", None) if backbone is not None else 1
    if not isinstance(out, int) or isinstance(out, bool) or out < 1:
        raise ValueError(f"model.backbone = {cfg.model.backbone!r} has out_dim = {out!r}; a backbone says the size "
                         "of the representation it returns in a positive integer attribute out_dim "
                         "(docs/extending.md: backbones)")
    if BACKBONES.is_own(cfg.model.backbone):  # fedmtl's own are tested to return (batch, out_dim)
        return
    returned = meta_output_shape(backbone, tuple(dataset_input_shape(cfg.data)))
    if returned is not None and returned != (2, out):
        raise ValueError(f"model.backbone = {cfg.model.backbone!r} returns a representation of shape {returned} for "
                         f"a batch of 2, where its out_dim = {out} says (2, {out}); the heads take out_dim inputs "
                         "(docs/extending.md: backbones)")


def meta_output_shape(backbone: Any, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of what ``backbone`` returns for a batch of 2 inputs, computed on torch's meta
    device (no data, no arithmetic); ``None`` when that cannot be told there (a backbone built
    on the CPU, or one whose forward needs real numbers)."""
    import torch

    if backbone is None or not all(p.is_meta for p in backbone.parameters()):
        return None
    environment = dict(os.environ)  # some meta kernels (relu's) import torch's compiler, which sets a variable
    try:
        with torch.no_grad():
            out = backbone(torch.empty((2, *input_shape), device="meta"))
    except Exception:  # noqa: BLE001 - a forward the meta device cannot run: the run tells
        return None
    finally:
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update(environment)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def check_something_federated(cfg: ExperimentConfig) -> None:
    """A federated run federates some parameters: a backbone without any (``"identity"``) needs
    global heads."""
    if cfg.run.mode != "federated" or cfg.model.heads == GLOBAL:
        return
    backbone = meta_backbone(cfg)
    if backbone is not None and not any(True for _ in backbone.parameters()):
        raise ValueError(
            f"model.backbone = '{cfg.model.backbone}' has no parameters: with model.heads = "
            f"'{cfg.model.heads}' nothing would be federated; use model.heads = 'global'"
        )


def check_personalization(cfg: ExperimentConfig) -> None:
    """The method allows ``model.heads``, has a meaning in the run's mode, and passes its own checks."""
    name, heads = cfg.personalization.method, cfg.model.heads
    method = METHODS.get(name)
    if heads not in method.heads:
        what = "federates the heads with the backbone" if method.heads == (GLOBAL,) else "keeps the heads personal"
        raise ValueError(
            f"personalization.method = '{name}' {what}: it needs model.heads = '{method.heads[0]}', not "
            f"'{heads}' (leave model.heads unset to follow the method)"
        )
    if cfg.run.mode == "centralized" and name not in ("fedper", "none"):
        raise ValueError(
            f"run.mode = 'centralized' trains one pooled model: personalization.method = '{name}' has no meaning "
            "there; use run.mode = 'federated'"
        )
    params = method.parse_params(dict(cfg.personalization.params))
    if METHODS.is_own(name):  # fedmtl's own: a ValueError naming the keys, else a bug with its traceback
        method.check(cfg, params)
        return
    try:
        method.check(cfg, params)
    except ValueError:  # a plugin's check refusing the config, in its own words
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's check failing in any other way is one line
        raise ValueError(f"personalization.method = '{name}': its check(cfg, params) failed: {described(error)} "
                         f"({raised_at(error)}; docs/extending.md: personalization methods)") from None


def check_plugin_rules_build(cfg: ExperimentConfig) -> None:
    """Every rule of ``cfg`` that fedmtl did not register (a plugin's) builds with its parameters
    and names state it has and can copy (:meth:`fedmtl.aggregation.rule.Rule.state_dict`):
    before the run starts, not at its first checkpoint. fedmtl's own rules are tested to."""
    from fedmtl.aggregation import make_rule
    from fedmtl.aggregation.plans import LEVEL_KEYS, fresh_copy, grouped_level, uses_task_weighting
    from fedmtl.aggregation.rule import RuleContext

    slots = [("client.weighting", cfg.client.weighting, cfg.client.params),
             ("server.weighting", cfg.server.weighting, cfg.server.params)]
    if uses_task_weighting(cfg.server.plan):
        slots.append(("server.task-weighting", cfg.server.task_weighting, cfg.server.task_params))
    level = grouped_level(cfg.server.plan)
    grouped = f"server.{LEVEL_KEYS[level]}" if level else None  # one instance per group (fedmtl.aggregation.plans)
    for key, name, params in slots:
        if WEIGHTINGS.is_own(name):
            continue
        try:
            rule = make_rule(name, RuleContext(client_lr=cfg.client.lr), **dict(params))
            rule.state_dict()  # a state attribute it lacks or cannot copy: named now, not at the first checkpoint
            if key == grouped and fresh_copy(rule).params != rule.params:
                raise ValueError("an instance built again from its parameters (one per group of the plan) has other "
                                 "parameters; its Params must give back what it was given")
        except Exception as exc:  # noqa: BLE001 - a plugin's rule: whatever it raises, in one line
            raise ValueError(f"{key} = {name!r} does not build: {type(exc).__name__}: {one_line(exc, 300)}") from None


def check_client_rule(cfg: ExperimentConfig) -> None:
    """A rule that needs parameter rows (every aggregator) cannot run on representation
    gradients, and an aggregator on a client needs row parts when the server splits updates into
    task parts."""
    rule = WEIGHTINGS.get(cfg.client.weighting)
    if cfg.client.gradients == "representation" and rule.needs_parameter_rows():
        what = "an aggregator (not a weighted sum of the task gradients)" if issubclass(rule, Aggregator) else (
            "a weighting with per-parameter state")
        raise ValueError(
            f"client.weighting = '{rule.name}' is {what}: it needs backbone-parameter rows, "
            f"client.gradients = 'backbone' or 'auto', not 'representation'"
        )
    if not issubclass(rule, Aggregator):
        return
    if needs_task_parts(cfg.server.plan) and not rule.per_row:
        raise ValueError(
            f"client.weighting = '{rule.name}' gives no per-task parts of its direction, but server.plan = "
            f"'{cfg.server.plan}' needs them; use server.plan = 'clients' or a weighting on the client"
        )


def check_head_store(cfg: ExperimentConfig) -> None:
    """Heads in a SuperNode's memory need one SuperNode per client."""
    nodes = virtual_supernodes(cfg)
    if cfg.client.head_store == "context" and nodes < cfg.data.num_clients:
        raise ValueError(
            f"client.head-store = 'context' keeps heads in a SuperNode's memory, but "
            f"{nodes} virtual SuperNodes play {cfg.data.num_clients} clients "
            "(engine.supernodes); use client.head-store = 'disk' or engine.supernodes = data.num-clients"
        )


def check_in_process_stragglers(cfg: ExperimentConfig) -> None:
    """In-process clients running one at a time (``engine.max-concurrent-clients = 1``, or one
    CPU): a straggler's wait would hold up every client after it, which is not the straggler a
    study means. With several at once a straggler holds one worker thread, as it holds one
    Ray actor."""
    if cfg.engine.backend == "inprocess" and cfg.faults.straggler > 0 and cfg.engine.clients_at_once(1) == 1:
        raise ValueError(
            f"faults.straggler = {cfg.faults.straggler:g} needs clients that run side by side, but "
            "this in-process engine runs one at a time (a straggler's wait would hold up every client "
            "after it); raise engine.max-concurrent-clients or use engine.backend = 'ray'"
        )


def check_centralized(cfg: ExperimentConfig) -> None:
    """The centralized baseline pools every client's labels: all tasks everywhere."""
    if cfg.run.mode == "centralized" and cfg.data.task_sets != "all":
        raise ValueError(
            f"run.mode = 'centralized' pools every client's labels and needs "
            f"data.task-sets = 'all', not {cfg.data.task_sets!r}"
        )


def most_replies_per_round(cfg: ExperimentConfig) -> int:
    """The most valid training replies one round can gather: the clients sampled (at least
    ``server.min-train-clients``, at most ``data.num-clients``), plus, with
    ``server.on-too-few = "retry"``, those each retry samples among the clients not yet heard."""
    server, clients = cfg.server, cfg.data.num_clients

    def sampled(pool: int) -> int:
        return min(pool, max(server.min_train_clients, math.ceil(server.fraction_train * pool)))

    total = sampled(clients)
    if server.on_too_few == "retry":
        for _ in range(server.max_retries):
            if total >= clients:
                break
            total += sampled(clients - total)
    return total


def check_min_replies(cfg: ExperimentConfig) -> None:
    """``server.min-replies`` can be met: no more than the clients a round can hear from."""
    most = most_replies_per_round(cfg)
    if cfg.server.min_replies > most:
        raise ValueError(
            f"server.min-replies = {cfg.server.min_replies} can never be met: a round samples at most {most} "
            f"client(s) (server.fraction-train = {cfg.server.fraction_train:g} of data.num-clients = "
            f"{cfg.data.num_clients}, at least server.min-train-clients = {cfg.server.min_train_clients}, "
            f"server.on-too-few = {cfg.server.on_too_few!r}); lower server.min-replies or sample more clients"
        )


MEMORY_FACTOR = 4
"""Copies of the parameters a run holds at least (model, gradients, optimizer state, the
server's update) for :func:`check_model_memory`."""


def available_memory() -> int | None:
    """Bytes of memory available to a new process (psutil, else ``/proc/meminfo``, else
    ``os.sysconf``); ``None`` when none can say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def model_bytes(cfg: ExperimentConfig) -> int | None:
    """Bytes of the model's parameters, counted on torch's meta device (nothing allocated);
    ``None`` for a plugin's backbone that builds only on the CPU (:func:`meta_backbone`)."""
    import torch

    try:
        with torch.device("meta"):
            model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    except (RuntimeError, OverflowError) as exc:  # sizes beyond what torch can count
        why = one_line(exc)
        raise ValueError(f"model.backbone = {cfg.model.backbone!r} with model.width = {cfg.model.width} and "
                         f"model.head-hidden = {cfg.model.head_hidden} cannot be built: {why}"
                         "; lower model.width or model.head-hidden") from None
    except Exception:  # noqa: BLE001 - check_backbone_builds has built it on the CPU
        return None
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_model_memory(cfg: ExperimentConfig) -> None:
    """The model fits in memory: its parameters × :data:`MEMORY_FACTOR` at most the memory
    available now."""
    available, counted = available_memory(), model_bytes(cfg)
    if available is None or counted is None:
        return
    need = counted * MEMORY_FACTOR
    if need > available:
        raise ValueError(
            f"model.backbone = {cfg.model.backbone!r} with model.width = {cfg.model.width} and "
            f"model.head-hidden = {cfg.model.head_hidden} needs about {need / 2**30:.3g} GiB "
            f"({MEMORY_FACTOR} × its parameters) but {available / 2**30:.3g} GiB of memory are available; "
            "lower model.width or model.head-hidden"
        )


TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""What a task name is made of: it names its head, its targets and the columns of the results
(``<task>.<metric>.<statistic>``), so no dot, space or comma."""


def check_task_names(dataset: str, names: list[object]) -> None:
    """A dataset's task names: each a :data:`TASK_NAME`, none twice, none
    :data:`fedmtl.results.OVERALL` (the results' name for the statistics across tasks).

    Raises
    ------
    ValueError
        Naming the dataset and the task.
    """
    from fedmtl.results import CLIENT_LEVEL, GLOBAL_PREFIX, OVERALL, TRAINED_PREFIX

    for i, name in enumerate(names):
        if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
            raise ValueError(f"data.dataset = {dataset!r}: task name {name!r} must be letters, digits, '_' or '-' "
                             "(it names the task's columns in the results)")
        if name == OVERALL:
            raise ValueError(f"data.dataset = {dataset!r}: a task may not be named '{OVERALL}': the results use that "
                             "name for the statistics across tasks")
        if name == CLIENT_LEVEL:
            raise ValueError(f"data.dataset = {dataset!r}: a task may not be named '{CLIENT_LEVEL}': metrics.csv "
                             "uses that name for a client's own rows (its example counts, its weight)")
        prefix = next((p for p in (GLOBAL_PREFIX, TRAINED_PREFIX) if name.startswith(p)), None)
        if prefix is not None:
            raise ValueError(f"data.dataset = {dataset!r}: task name {name!r} may not start with '{prefix}': "
                             f"rounds.csv names the columns of a task's {prefix.rstrip('_')} view so "
                             f"('{prefix}{name[len(prefix):]}.accuracy.mean' is task '{name[len(prefix):]}''s)")
        if name in names[:i]:
            raise ValueError(f"data.dataset = {dataset!r}: two tasks are named {name!r}: each task needs its own name")


def check_dataset_reads(cfg: ExperimentConfig) -> None:
    """The dataset can say its input shape and tasks (a local copy is complete, its
    options name what it has), and each task's kind declares the metrics it measures."""
    from fedmtl.tasks import TASK_KINDS

    dataset_input_shape(cfg.data)
    tasks = dataset_tasks(cfg.data)
    check_task_names(cfg.data.dataset, [task.name for task in tasks])
    for task in tasks:
        if task.kind not in TASK_KINDS:
            raise ValueError(f"data.dataset = {cfg.data.dataset!r}: task '{task.name}': "
                             + TASK_KINDS.unknown_message(task.kind))
        metrics = getattr(TASK_KINDS.get(task.kind), "metrics", None)
        if not isinstance(metrics, dict) or not metrics or not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in metrics.items()):
            raise ValueError(f"data.dataset = {cfg.data.dataset!r}: task '{task.name}' is of kind '{task.kind}', "
                             f"whose metrics = {metrics!r} is not a non-empty {{name: higher_is_better}} dict "
                             "naming what its metric_sums returns (docs/extending.md)")


CROSS_CHECKS: tuple[Callable[[ExperimentConfig], None], ...] = (
    check_dataset_reads,
    check_backbone_input,
    check_backbone_builds,
    check_natural_partition,
    check_partition_task,
    check_feature_skew,
    check_personalization,
    check_global_heads,
    check_something_federated,
    check_client_rule,
    check_plugin_rules_build,
    check_head_store,
    check_in_process_stragglers,
    check_centralized,
    check_min_replies,
    check_model_memory,
)
"""The rules across sections, in the order they run; each raises ``ValueError``."""

NEW_RUN_CHECKS: tuple[Callable[[ExperimentConfig], None], ...] = (check_task_counts, check_task_weighting_used)
"""Rules added on 2026-12-02 that a recorded run may break (it ran ignoring the option): a new
run's config must pass them, a run folder's ``config.toml`` need not (it still loads, resumes
and reports)."""

"""Generated parts of the docs: config tables and the weighting reference.

``python -m fedmtl.docs`` rewrites the blocks between ``<!-- BEGIN GENERATED ... -->`` and
``<!-- END GENERATED ... -->`` in ``README.md``, ``docs/config.md`` and ``docs/aggregation.md``
(config tables, registered names, the rules, the personalization table, a sample config error);
``tests/test_docs_lists.py`` fails when they are stale.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedmtl.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def _type_name(info: FieldInfo) -> str:
    return _annotation_name(info.annotation)


def _annotation_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):  # e.g. bool | Literal["auto"]
        return " \\| ".join(_annotation_name(a) for a in typing.get_args(annotation))
    if origin is dict:
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    return f"`{json.dumps(value)}`" if not isinstance(value, dict) else "`{}`"


def _key_table(model: type[BaseModel]) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field, info in model.model_fields.items():
        key = info.alias or field
        out.append(f"| `{key}` | {_type_name(info)} | {_default(info)} | {info.description}{_bounds(info)} |")
    return out


def dataset_params_tables() -> list[str]:
    """One Markdown table of ``[data.params]`` options per registered dataset."""
    from fedmtl.data import DATASETS

    out = [
        "### `[data.params]` of each dataset", "",
        "Options of one dataset, in the table `[data.params]` (in Flower's flat run config, its "
        "JSON text, e.g. `data.params = '{\"pairs-per-digit\": 1}'`; with `--set`, one key: "
        "`--set data.params.canvas=40`). The dataset checks them; `fedmtl validate` and a run "
        "folder's `config.toml` list them all, defaults filled in.", "",
    ]
    for name, entry in DATASETS.items():
        out += [f"#### `{name}`", "", *_key_table(entry.params), ""]
        if entry.moved:
            moved = ", ".join(f"`data.{old}` → `{new}`" for old, new in entry.moved.items())
            out += [f"Formerly in `[data]`: {moved}.", ""]
    return out


def method_tables() -> list[str]:
    """The personalization methods: one table of all, then each one's description and options."""
    from fedmtl.training.methods import METHODS

    out = [
        "### Personalization methods", "",
        "| method | trains | keeps personal | views | `model.heads` | costs | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cls in METHODS.items():
        views = ", ".join(f"`{v}`" for v in cls.views)
        heads = " or ".join(f"`{h}`" for h in cls.heads)
        out.append(f"| [`{name}`](#{name}) | {cls.trains} | {cls.keeps} | {views} | {heads} | {cls.costs} "
                   f"| {cls.paper} |")
    out.append("")
    for name, cls in METHODS.items():
        summary, details = _clean_doc(cls)
        out += [f"#### `{name}`", "", summary, ""]
        if details:
            out += [" ".join(paragraph.split()) + "\n" for paragraph in details.split("\n\n")]
        if cls.Params.model_fields:
            out += ["Options (`[personalization.params]`):", "", *_key_table(cls.Params), ""]
    return out


def config_tables() -> str:
    """One Markdown table per config section (and per dataset for ``[data.params]``, per
    personalization method for ``[personalization.params]``)."""
    out = []
    for name, section in SECTIONS.items():
        doc = inspect.cleandoc((section.__doc__ or "").split(":", 1)[-1]).replace("``", "`")
        out += [f"## `[{name}]`", "", " ".join(doc.split()), "", *_key_table(section), ""]
        if name == "data":
            out += dataset_params_tables()
        if name == "personalization":
            out += method_tables()
    return "\n".join(out)


def _clean_doc(cls: type) -> tuple[str, str]:
    doc = inspect.cleandoc(cls.__doc__ or "").replace("``", "`")
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def _keys(scope: str) -> str:
    keys = {"client": ["client.weighting"], "server": ["server.weighting", "server.task-weighting"]}
    if scope == "both":
        return ", ".join(f"`{k}`" for k in keys["client"] + keys["server"])
    return ", ".join(f"`{k}`" for k in keys[scope])


def weighting_reference() -> str:
    """A section per registered rule: summary, kind, where it runs, parameters, details."""
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.aggregation.properties import guaranteed

    places = {"client": "clients only", "server": "the server only", "both": "clients and the server"}
    out = ["| name | kind | runs on | reads | summary |", "|---|---|---|---|---|"]
    for name, cls in WEIGHTINGS.items():
        reads = [n for n, flag in (("rows", cls.needs_updates), ("losses", cls.needs_losses)) if flag]
        out.append(f"| [`{name}`](#{name.replace('+', '')}) | {cls.kind} | {cls.scope} | {', '.join(reads) or '-'} "
                   f"| {_clean_doc(cls)[0]} |")
    out.append("")
    for name, cls in WEIGHTINGS.items():
        summary, details = _clean_doc(cls)
        out += [f"### {name}", "", summary, ""]
        if details:
            out += [details, ""]
        facts = [f"A {cls.kind}; runs on {places[cls.scope]} ({_keys(cls.scope)} = `\"{name}\"`)."]
        if cls.needs_losses:
            facts.append("Reads each objective's loss (on the server: measured by clients before local training).")
        if cls.kind == "aggregator":
            facts.append("Not a weighted sum of rows: no per-row weights are recorded; on a client it needs "
                         "backbone-parameter rows" + (" and gives per-task parts." if getattr(cls, "per_row", False)
                                                      else ", and cannot split an update into task parts."))
        if not cls.deterministic:
            facts.append("Randomised: draws from its own seeded generator (parameter `seed`).")
        facts.append("Guarantees: " + ", ".join(guaranteed(cls)) + ".")
        out += [f"- {fact}" for fact in facts]
        params = cls.Params.model_fields
        if params:
            out += ["", "| parameter | default | meaning |", "|---|---|---|"]
            for field, info in params.items():
                out.append(f"| `{info.alias or field}` | `{info.default!r}` | {info.description}{_bounds(info)} |")
        out.append("")
    return "\n".join(out)


def property_reference() -> str:
    """The properties, their definitions, and the rule × property table with opt-outs."""
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.aggregation.properties import PROPERTIES, property_table

    out = ["| property | definition |", "|---|---|"]
    out += [f"| {name} | {text} |" for name, text in PROPERTIES.items()]
    out += ["", *property_table(dict(WEIGHTINGS.items()))]
    return "\n".join(out)


def summary(entry: Any, code: str = "`") -> str:
    """One registered entry's summary: its ``description``, else the first paragraph of its
    docstring on one line (what ``fedmtl list`` and the generated name lists print), with
    literals (````x````) marked by ``code`` (``""`` for the terminal)."""
    description = getattr(entry, "description", None)
    text = str(description) if description else inspect.cleandoc(entry.__doc__ or "").split("\n\n")[0]
    return " ".join(text.split()).replace("``", code)


def registries() -> dict[str, Any]:
    """The registries whose names the docs list, by the word ``fedmtl list`` takes."""
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.data import DATASETS, PARTITIONERS, TASK_SETS
    from fedmtl.models import BACKBONES
    from fedmtl.tasks import TASK_KINDS
    from fedmtl.training.methods import METHODS

    return {"datasets": DATASETS, "partitioners": PARTITIONERS, "task-sets": TASK_SETS, "backbones": BACKBONES,
            "tasks": TASK_KINDS, "methods": METHODS, "weightings": WEIGHTINGS}


def rule_counts() -> tuple[int, int, int]:
    """(rules, weightings, aggregators) registered."""
    from fedmtl.aggregation import WEIGHTINGS

    kinds = [cls.kind for _, cls in WEIGHTINGS.items()]
    return len(kinds), kinds.count("weighting"), kinds.count("aggregator")


def registered_names() -> str:
    """Every registry's names with their one-line summaries (docs/config.md); the rules by name only."""
    titles = {"datasets": "datasets (`data.dataset`)", "partitioners": "partitioners (`data.partitioner`)",
              "task-sets": "task sets (`data.task-sets`)", "backbones": "backbones (`model.backbone`)",
              "tasks": "task kinds", "methods": "personalization methods (`personalization.method`)"}
    out = []
    for kind, registry in registries().items():
        if kind == "weightings":
            total, weightings, aggregators = rule_counts()
            names = ", ".join(f"[`{n}`](aggregation.md#{n.replace('+', '')})" for n, _ in registry.items())
            out += [f"- **rules** (`client.weighting`, `server.weighting`, `server.task-weighting`): {total} "
                    f"({weightings} weightings, {aggregators} aggregators): {names}.", ""]
            continue
        out += [f"- **{titles[kind]}**:"]
        out += [f"  - `{name}`: {summary(entry)}" for name, entry in registry.items()]
        out.append("")
    return "\n".join(out)


def readme_names() -> str:
    """The README's one paragraph of what is registered."""
    reg = registries()
    total, weightings, aggregators = rule_counts()

    def names(kind: str) -> str:
        return ", ".join(f"`{n}`" for n, _ in reg[kind].items())

    return (f"Registered now: {total} aggregation rules ({weightings} weightings, {aggregators} aggregators; "
            f"[docs/aggregation.md](docs/aggregation.md)); datasets {names('datasets')}; partitioners "
            f"{names('partitioners')}; task sets {names('task-sets')}; backbones {names('backbones')}; "
            f"personalization methods {names('methods')}. `fedmtl list KIND` prints each with its summary.")


def readme_methods_table() -> str:
    """The README's personalization table, from each method's declared ``trains``, ``keeps``,
    ``views``, ``costs`` and ``paper``."""
    from fedmtl.training.methods import METHODS

    out = ["| method | what it trains | what it keeps personal | views | what it costs | paper |",
           "|---|---|---|---|---|---|"]
    for name, cls in METHODS.items():
        views = ", ".join(f"`{v}`" for v in cls.views)
        out.append(f"| `{name}` | {cls.trains} | {cls.keeps} | {views} | {cls.costs} | {cls.paper} |")
    return "\n".join(out)


def config_error_example() -> str:
    """The errors of a config with a misspelt key and a misspelt partitioner, as ``fedmtl run`` prints them."""
    from fedmtl.config import ConfigError
    from fedmtl.validation import load_config

    args = ["client.epoch=2", "data.partitioner=dirichlett"]
    try:
        load_config(ROOT / "configs/quickstart.toml", args)
    except ConfigError as exc:
        errors = [f"error: {line}" for line in str(exc).splitlines()]
    else:  # pragma: no cover - the example must fail
        raise AssertionError("the config error example was accepted")
    command = "$ fedmtl run configs/quickstart.toml " + " ".join(f"--set {a}" for a in args)
    return "\n".join(["```", command, *errors, "```"])


def _replace(text: str, marker: str, body: str) -> str:
    begin, end = f"<!-- BEGIN GENERATED {marker} -->\n", f"<!-- END GENERATED {marker} -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body.rstrip() + "\n" + text[stop:]


def sync_docs(root: Path = ROOT) -> list[str]:
    """Rewrite the generated blocks; return the files that changed."""
    changed = []
    targets: dict[str, list[tuple[str, Any]]] = {
        "docs/config.md": [("CONFIG ERROR", config_error_example), ("CONFIG", config_tables),
                           ("NAMES", registered_names)],
        "docs/aggregation.md": [("WEIGHTINGS", weighting_reference), ("PROPERTIES", property_reference)],
        "README.md": [("NAMES", readme_names), ("METHODS", readme_methods_table)],
    }
    for relative, blocks in targets.items():
        path = root / relative
        text = path.read_text()
        new = text
        for marker, render in blocks:
            new = _replace(new, marker, render())
        if new != text:
            path.write_text(new)
            changed.append(relative)
    return changed


if __name__ == "__main__":  # python -m fedmtl.docs
    changed = sync_docs()
    print("updated: " + ", ".join(changed) if changed else "docs already in sync")

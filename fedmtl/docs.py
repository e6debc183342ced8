"""Generated parts of the docs: config tables and the weighting reference.

``python -m fedmtl.docs`` rewrites the blocks between ``<!-- BEGIN GENERATED ... -->`` and
``<!-- END GENERATED ... -->`` in ``docs/config.md`` and ``docs/aggregation.md``; a test
fails when they are stale.
"""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedmtl.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def _type_name(info: FieldInfo) -> str:
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is dict:
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


def _replace(text: str, marker: str, body: str) -> str:
    begin, end = f"<!-- BEGIN GENERATED {marker} -->\n", f"<!-- END GENERATED {marker} -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body.rstrip() + "\n" + text[stop:]


def sync_docs(root: Path = ROOT) -> list[str]:
    """Rewrite the generated blocks; return the files that changed."""
    changed = []
    targets: dict[str, list[tuple[str, Any]]] = {
        "docs/config.md": [("CONFIG", config_tables)],
        "docs/aggregation.md": [("WEIGHTINGS", weighting_reference), ("PROPERTIES", property_reference)],
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

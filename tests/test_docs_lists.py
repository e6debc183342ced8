"""The README and docs/ say what the code does: generated blocks are current, hand-written lists
of registered names match the registries, `fedmtl list` prints whole summaries, and every
relative link points at an existing file and heading. In-process, no simulation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmtl.cli import cli
from fedmtl.docs import ROOT, registries, rule_counts, summary, sync_docs

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
NAMES = {"Ditto": "ditto", "APFL": "apfl", "fine-tuning": "finetune", "FedBABU": "fedbabu", "FedRep": "fedrep",
         "FedPer": "fedper", "FedProx": "fedprox"}
"""How the prose names personalization methods."""


def _names(kind: str) -> set[str]:
    return {name for name, _ in registries()[kind].items()}


def _text(path: Path) -> str:
    return " ".join(path.read_text().split())


def _table_names(path: Path, heading: str) -> set[str]:
    """The backticked names in the first column of the first table after ``heading``."""
    lines = path.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows, seen_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen_table = True
            rows.append(line)
        elif seen_table or line.startswith("#"):
            break
    return {m.group(1) for row in rows[2:] if (m := re.match(r"\|\s*`([^`]+)`", row))}


def test_generated_blocks_are_current(tmp_path):
    """README.md, docs/config.md and docs/aggregation.md hold what ``python -m fedmtl.docs`` writes."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert sync_docs(tmp_path) == [], "run: python -m fedmtl.docs"


def test_the_generated_lists_name_every_registered_thing():
    readme, config = _text(ROOT / "README.md"), _text(ROOT / "docs" / "config.md")
    total, weightings, aggregators = rule_counts()
    assert f"{total} aggregation rules ({weightings} weightings, {aggregators} aggregators" in readme
    for kind in ("datasets", "partitioners", "task-sets", "backbones", "methods"):
        for name in _names(kind):
            assert f"`{name}`" in readme, (kind, name)
            assert f"- `{name}`: " in config, (kind, name)
    for name in _names("weightings"):
        assert f"[`{name}`](aggregation.md#" in config, name


def test_data_md_tables_match_the_registries():
    data = ROOT / "docs" / "data.md"
    assert _table_names(data, "## Partitioners") == _names("partitioners")
    assert _table_names(data, "## Task sets") == _names("task-sets")
    text = data.read_text()
    section = text[text.index("## Datasets"):text.index("## Partitioners")]
    assert set(re.findall(r"^### `([^`]+)`", section, flags=re.M)) == _names("datasets")


def test_counts_written_in_prose_match_the_registries():
    readme = _text(ROOT / "README.md")
    match = re.search(r"fedmtl has (\d+) datasets and (\d+) personalization methods", readme)
    assert match, "README: the comparison's counts"
    assert (int(match.group(1)), int(match.group(2))) == (len(_names("datasets")), len(_names("methods")))


def test_every_list_of_two_view_methods_is_complete():
    """Each place that lists the methods with a global and a personal model lists exactly them."""
    from fedmtl.training.methods import METHODS

    two_views = {name for name, cls in METHODS.items() if "test-global" in cls.views}
    pattern = re.compile(r"(?:a global and a personal model|a personal and a global model|that have both) \(([^)]*)\)")
    found = 0
    for page in PAGES:
        for group in pattern.findall(_text(page)):
            items = [i.strip(" `") for i in re.split(r",|\band\b", group) if i.strip(" `")]
            assert {NAMES.get(i, i) for i in items} == two_views, (page.name, group)
            found += 1
    assert found >= 4


def test_config_md_says_which_methods_default_to_global_heads():
    from fedmtl.training.methods import METHODS

    text = _text(ROOT / "docs" / "config.md")
    group = re.search(r"\(global heads for ([^;]*);", text).group(1)
    named = {i.strip(" `") for i in re.split(r",|\band\b", group) if i.strip(" `")}
    assert named == {name for name, cls in METHODS.items() if cls.heads[0] == "global"}


@pytest.mark.parametrize("kind", ["partitioners", "task-sets", "backbones", "tasks"])
def test_fedmtl_list_prints_each_whole_summary(kind):
    out = CliRunner().invoke(cli, ["list", kind])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().split("\n")
    entries = list(registries()[kind].items())
    assert len(lines) == len(entries)
    for line, (name, entry) in zip(lines, entries, strict=True):
        assert line.split(None, 1) == [name, summary(entry, code="")]
        assert line.rstrip().endswith((".", ")")), line


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no links in code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_config_keys_named_in_the_docs_exist():
    """Every `section.key` (and `data.params.x`, `personalization.params.x`) written in code
    spans of the README and docs/ is a key of the schema, an option of a dataset or method, or a
    key the docs name as moved."""
    from fedmtl.config import SECTIONS
    from fedmtl.data import DATASETS
    from fedmtl.training.methods import METHODS

    keys = {name: {info.alias or field for field, info in section.model_fields.items()}
            for name, section in SECTIONS.items()}
    options = {"data": {info.alias or f for _, e in DATASETS.items() for f, info in e.params.model_fields.items()},
               "personalization": {info.alias or f for _, m in METHODS.items()
                                   for f, info in m.Params.model_fields.items()}}
    moved = {f"data.{old}" for _, entry in DATASETS.items() for old in (entry.moved or {})}
    pattern = re.compile(r"\b(" + "|".join(SECTIONS) + r")\.([a-z][a-z0-9-]*)(?:\.([a-z][a-z0-9-]*))?")
    unknown = []
    for page in PAGES:
        for span in re.findall(r"`([^`\n]+)`", page.read_text()):
            if "/" in span or ".py" in span or span.startswith("fedmtl."):  # paths and Python names
                continue
            for section, key, sub in pattern.findall(span):
                if f"{section}.{key}" in moved:
                    continue
                if key not in keys[section]:
                    unknown.append(f"{page.name}: {section}.{key}")
                elif key == "params" and sub and section in options and sub not in options[section]:
                    unknown.append(f"{page.name}: {section}.params.{sub}")
    assert not unknown, unknown


def _command_lines(page: Path) -> list[str]:
    """Each `fedmtl ...` command of the page's code blocks and code spans, continuation lines joined."""
    text = page.read_text().replace("\\\n", " ")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    out = []
    for block in blocks:
        for line in block.split("\n"):
            line = line.split("  #")[0].strip().removeprefix("$ ")
            match = re.match(r"(?:\.venv/bin/|[A-Z_]+=\S+ )*fedmtl (\S.*)", line)
            if match:
                out.append(match.group(1))
    return out


def test_fedmtl_commands_in_the_docs_use_existing_commands_and_options():
    import click
    import typer

    root = typer.main.get_command(cli)
    bad, checked = [], 0
    for page in PAGES:
        for line in _command_lines(page):
            command, words = root, line.split()
            while isinstance(command, click.Group) and words and words[0] in command.commands:
                command = command.commands[words.pop(0)]
            if isinstance(command, click.Group):
                if words and not words[0].startswith("-") and words[0] not in ("KIND", "..."):
                    bad.append(f"{page.name}: fedmtl {line} (no command {words[0]!r})")
                continue
            options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            for word in words:
                if word.startswith("--") and word.split("=")[0] not in options:
                    bad.append(f"{page.name}: fedmtl {line} ({word.split('=')[0]})")
            checked += 1
    assert not bad, bad
    assert checked > 20

"""``fedmtl list methods`` (alias ``personalization``): every registered personalization method,
its views, the ``model.heads`` it allows and its options with their defaults."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedmtl.cli import cli
from fedmtl.training.methods import METHODS


def _blocks(output: str) -> dict[str, str]:
    """The listing's block of each method: its first line starts with its name, unindented."""
    blocks: dict[str, str] = {}
    name = None
    for line in output.splitlines()[1:]:
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = ""
        blocks[name] += line + "\n"
    return blocks


@pytest.mark.parametrize("kind", ["methods", "personalization"])
def test_the_listing_names_every_method_with_its_views_heads_and_options(kind):
    result = CliRunner().invoke(cli, ["list", kind])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{len(METHODS)} personalization methods")
    blocks = _blocks(result.output)
    assert list(blocks) == [name for name, _ in METHODS.items()]
    for name, method in METHODS.items():
        block = blocks[name]
        assert f"views: {', '.join(method.views)}" in block, block
        assert all(heads in block.splitlines()[0] for heads in method.heads), block
        assert method.trains in block and method.paper in block
        for key, field in method.Params.model_fields.items():
            default = field.get_default(call_default_factory=True)
            assert f"{field.alias or key}={default!r}" in block, (name, key, block)
        if not method.Params.model_fields:
            assert "options: -" in block


def test_an_unknown_kind_names_the_methods_kind():
    result = CliRunner().invoke(cli, ["list", "metods"])
    assert result.exit_code != 0
    assert "methods" in result.output + (result.stderr or "")

"""Plugins (``run.plugins`` and the ``fedmtl.plugins`` entry points): imported before a config
is checked, by every loader, by path for files; one clear line when one does not import. The
run through the Ray engine is in tests/test_python_api.py."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedmtl import plugins
from fedmtl.config import ConfigError
from fedmtl.plugins import PluginError
from fedmtl.validation import build_config, config_from_flat, load_config
from tests.plugin_support import restored_registries, write_study

registries = pytest.fixture(restored_registries, name="registries")
ROOT = Path(__file__).resolve().parents[1]

WEIGHTING = '''
import torch
from fedmtl.aggregation import Weighting, register


@register("{name}")
class Mine(Weighting):
    """Uniform weights, registered by a plugin."""

    def compute(self, objectives):
        return torch.full((len(objectives),), 1.0 / len(objectives), dtype=torch.float64)
'''


def test_a_plugin_file_is_resolved_from_the_config_folder_and_reaches_every_loader(tmp_path, registries,
                                                                                  monkeypatch):
    config = write_study(tmp_path / "study")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(config)
    plugin = str(tmp_path / "study" / "plugins" / "my_plugin.py")
    assert cfg.run.plugins == [plugin] and cfg.server.weighting == "first-task-heavy"
    assert cfg.data.params == {"examples": 40}
    flat = cfg.to_flat()
    assert flat["run.plugins"] == json.dumps([plugin])  # Flower's values are scalars
    assert config_from_flat(flat) == cfg  # a Ray worker's or flwr run's app rebuilds it
    assert load_config(config) == cfg  # importing again is a no-op (no "registered twice")


def test_a_partitioner_that_a_plugin_dataset_does_not_apply_is_refused(tmp_path, registries):
    """The blobs dataset builds its clients itself: a run set to 'dirichlet' gave the same clients
    as 'iid', labelled 'dirichlet' in its config.toml and in every report."""
    from fedmtl.data import load_federation
    from fedmtl.data.checks import DataError

    config = write_study(tmp_path / "study")
    assert load_federation(load_config(config).data, 0).num_clients == 2  # 'iid', the default: built
    cfg = load_config(config, ["data.partitioner=dirichlet"])
    with pytest.raises(DataError, match="dataset 'blobs' builds its clients without a partitioner .* "
                                        "data.partitioner = 'dirichlet' would not be applied"):
        load_federation(cfg.data, 0)
    shipped = load_config(None, ["data.partitioner=dirichlet", "data.num-clients=4"])
    assert load_federation(shipped.data, 0).num_clients == 4  # a built-in dataset applies it


def test_the_weighting_is_unknown_without_its_plugin(tmp_path, registries):
    with pytest.raises(ConfigError, match="unknown weighting 'first-task-heavy'"):
        build_config({"server": {"weighting": "first-task-heavy"}})


def test_a_module_plugin_is_imported_by_name(tmp_path, registries, monkeypatch):
    (tmp_path / "my_rules.py").write_text(WEIGHTING.format(name="module-rule"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = build_config({"run": {"plugins": ["my_rules"]}, "server": {"weighting": "module-rule"}})
    assert cfg.server.weighting == "module-rule"
    monkeypatch.delitem(__import__("sys").modules, "my_rules")


@pytest.mark.parametrize(("entry", "body", "message"), [
    ("no_such_plugin_module", None,
     "run.plugins: cannot import module 'no_such_plugin_module': ModuleNotFoundError: No module named "
     "'no_such_plugin_module'"),
    ("broken.py", "import torch\nraise RuntimeError('the plugin is broken')\n",
     "run.plugins: cannot import file '{folder}/broken.py': RuntimeError: the plugin is broken"),
    ("missing.py", None, "run.plugins: cannot import file '{folder}/missing.py': FileNotFoundError: no file "
                         "'{folder}/missing.py'"),
    ("syntax.py", "def (:\n", "run.plugins: cannot import file '{folder}/syntax.py': SyntaxError: invalid syntax"),
    ("exits.py", "import sys\nsys.exit(0)\n",
     "run.plugins: cannot import file '{folder}/exits.py': it called sys.exit(0) while being imported"),
    ("nameless.py", "from fedmtl.training.methods import Method\nfrom fedmtl.training.methods.base import register\n"
                    "@register\nclass Mine(Method):\n    pass\n",
     "run.plugins: cannot import file '{folder}/nameless.py': ValueError: personalization method Mine sets no class "
     "attribute name = \"...\" of its own; a config names a method by it"),
])
def test_a_plugin_that_does_not_import_is_one_line(tmp_path, registries, entry, body, message):
    if body is not None:
        (tmp_path / entry).write_text(body)
    (tmp_path / "exp.toml").write_text(f'[run]\nplugins = ["{entry}"]\n')
    with pytest.raises(PluginError) as caught:
        load_config(tmp_path / "exp.toml")
    text = str(caught.value)
    assert len(text.splitlines()) == 1, text
    assert text.startswith(message.format(folder=tmp_path)), text


def test_plugins_must_be_a_list_of_names():
    with pytest.raises(ConfigError, match=r"run.plugins = 3: Input should be a valid list"):
        build_config({"run": {"plugins": 3}})
    with pytest.raises(ConfigError, match=r"run.plugins = '\[my_rules\]': must be a list of quoted names, e.g. "):
        build_config({"run": {"plugins": "[my_rules]"}})  # --set run.plugins=[my_rules]: not TOML, so text
    with pytest.raises(ConfigError, match=r"run.trackers = '\[wandb\]': must be a list of quoted names, e.g. "):
        build_config({"run": {"trackers": "[wandb]"}})


def test_plugins_and_trackers_take_names_separated_by_commas_alike():
    from fedmtl.config import names_list
    from fedmtl.plugins import plugin_entries

    both = ["tensorboard", "mlflow"]
    assert names_list("tensorboard, mlflow", "") == both == names_list('["tensorboard", "mlflow"]', "")
    # loaded as the schema reads it
    assert plugin_entries({"run": {"plugins": "a_module,b.py"}}) == ["a_module", "b.py"]
    assert build_config({"run": {"trackers": "tensorboard"}}).run.trackers == ["tensorboard"]


def one_round_with_plugin(tmp_path: Path, plugin: Path, rule: str) -> tuple[Path, Callable[..., Any]]:
    """A 1-round in-process smoke run in ``tmp_path / "run"`` with ``plugin``'s weighting ``rule``
    on the clients (by the command line, in a fresh process); return the folder and a function
    running ``fedmtl ARGS...`` there."""
    import os
    import subprocess

    run_dir, env = tmp_path / "run", {**os.environ, "HOME": str(tmp_path)}

    def fedmtl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True, timeout=300,
                              env=env, cwd=tmp_path)

    first = fedmtl("run", str(ROOT / "configs/smoke.toml"), "-q", "--out", str(run_dir), "--set", "run.rounds=1",
                   "--set", "engine.backend=inprocess", "--set", f'run.plugins=["{plugin}"]',
                   "--set", f"client.weighting={rule}")
    assert first.returncode == 0, first.stderr
    return run_dir, fedmtl


def test_a_resume_may_find_its_plugins_elsewhere(tmp_path):
    """A plugin file moved after the run: the resume says where the run names its plugins and
    how to point them to the new place; edited there, the run continues."""

    from fedmtl.results import RESUME_FREE_KEYS

    assert "run.plugins" in RESUME_FREE_KEYS
    old, new = tmp_path / "old" / "rule.py", tmp_path / "new" / "rule.py"
    old.parent.mkdir()
    old.write_text(WEIGHTING.format(name="moved-rule"))
    run_dir, fedmtl = one_round_with_plugin(tmp_path, old, "moved-rule")
    new.parent.mkdir()
    old.rename(new)
    refused = fedmtl("run", "--resume", str(run_dir), "--set", "run.rounds=2")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.strip().endswith(
        f"the run's plugins are named in {run_dir / 'config.toml'}: put the plugin back, or set run.plugins there "
        "to where it is now (it must register the same names)"), refused.stderr
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace(str(old), str(new)))
    resumed = fedmtl("run", "--resume", str(run_dir), "--set", "run.rounds=2", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2
    # a plugin that is there but fails says its own error, without the advice to point elsewhere
    new.write_text("import a_module_that_is_not_installed\n")
    failing = fedmtl("run", "--resume", str(run_dir), "--set", "run.rounds=3")
    assert failing.returncode == 2 and failing.stderr.strip().splitlines() == [
        f"error: run.plugins: cannot import file '{new}': ModuleNotFoundError: No module named "
        "'a_module_that_is_not_installed'"], failing.stderr


def test_a_resume_after_the_plugin_file_was_edited_is_refused_unless_forced(tmp_path):
    """The rounds before the checkpoint ran the plugin's old text: continuing with the new one
    would mix two rules in one run. The checkpoint records each plugin file's digest."""

    plugin = tmp_path / "rule.py"
    plugin.write_text(WEIGHTING.format(name="edited-rule"))
    run_dir, fedmtl = one_round_with_plugin(tmp_path, plugin, "edited-rule")
    before = plugins.file_digest(plugin)
    plugin.write_text(WEIGHTING.format(name="edited-rule").replace("1.0 / len(objectives)", "0.5"))
    refused = fedmtl("run", "--resume", str(run_dir), "--set", "run.rounds=2")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (f"a plugin file's text changed since checkpoint round-1.pt was written: {plugin}: "
            f"{plugins.file_digest(plugin)} (was {before})") in refused.stderr, refused.stderr
    assert "--force resumes anyway" in refused.stderr
    forced = fedmtl("run", "--resume", str(run_dir), "--set", "run.rounds=2", "--force", "-q")
    assert forced.returncode == 0, forced.stderr
    assert "the rounds after it run the plugins as they are now" in forced.stdout + forced.stderr
    # the run records what --force let go: round 1's numbers came from the plugin's old text (only
    # the new digest was recorded, in summary.json's provenance.plugins)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["provenance"]["plugins"] == {str(plugin): plugins.file_digest(plugin)}
    [record] = summary["provenance"]["forced_resumes"]
    assert record["after_round"] == 1 and record["plugins_before"] == {str(plugin): before}
    assert [o["override"] for o in record["overridden"]] == ["the rounds after it run the plugins as they are now"]
    assert [json.loads(line) for line in (run_dir / "forced-resumes.jsonl").read_text().splitlines()] == [record]


CLAIMING = WEIGHTING.replace('    """Uniform weights, registered by a plugin."""',
                             '    """Uniform weights, registered by a plugin."""\n\n    claims = {claims}')


@pytest.mark.parametrize(("claims", "said"), [
    ('("permutation-invariant", "no-such-property")',
     "rule 'claiming' claims unknown property 'no-such-property'; the known ones: well-formed, "),
    ('"permutation-invariant"', "rule 'claiming' has claims = 'permutation-invariant': give a tuple of property "
                                "names, e.g. claims = ('permutation-invariant',)"),
])
def test_a_rule_claiming_an_unknown_property_is_refused_in_one_line(tmp_path, registries, claims, said):
    """A misspelt claim was listed by `fedmtl list weightings` as a guarantee nothing checks."""
    from fedmtl.aggregation import RULES

    plugin = tmp_path / "claiming.py"
    plugin.write_text(CLAIMING.format(name="claiming", claims=claims))
    with pytest.raises(PluginError) as caught:
        plugins.import_plugin(str(plugin))
    assert len(str(caught.value).splitlines()) == 1 and said in str(caught.value), str(caught.value)
    assert "claiming" not in RULES.names()
    plugin.write_text(CLAIMING.format(name="claiming", claims='("permutation-invariant",)'))
    plugins.import_plugin(str(plugin))  # fixed, it registers
    assert "permutation-invariant" in RULES.get("claiming").claims


def _entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    point = importlib.metadata.EntryPoint(name="extra", value=value, group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_installed_entry_points_are_loaded_once_before_a_config_is_checked(tmp_path, registries, monkeypatch):
    (tmp_path / "test_ep_plugin.py").write_text(WEIGHTING.format(name="entry-point-rule"))
    _entry_points(tmp_path, monkeypatch, "test_ep_plugin")
    cfg = build_config({"server": {"weighting": "entry-point-rule"}})
    assert cfg.server.weighting == "entry-point-rule"
    assert plugins.load_entry_points() == []  # once per process


def test_an_entry_point_that_does_not_import_is_one_line(tmp_path, registries, monkeypatch):
    _entry_points(tmp_path, monkeypatch, "test_ep_plugin_missing")
    with pytest.raises(PluginError) as caught:
        build_config({})
    assert str(caught.value) == (
        "entry point 'extra = test_ep_plugin_missing' (group fedmtl.plugins): cannot import it: "
        "ModuleNotFoundError: No module named 'test_ep_plugin_missing'")
    with pytest.raises(PluginError):  # reported again, not forgotten
        build_config({})


def test_an_entry_point_that_fails_after_registering_can_be_fixed_in_the_same_process(tmp_path, registries,
                                                                                      monkeypatch):
    """Its names stayed registered: the fixed package's next load said the rule was registered twice."""
    from fedmtl.aggregation import WEIGHTINGS

    module = tmp_path / "test_ep_half.py"
    module.write_text(WEIGHTING.format(name="half-entry-rule") + 'raise RuntimeError("half imported")\n')
    _entry_points(tmp_path, monkeypatch, "test_ep_half")
    try:
        with pytest.raises(PluginError, match="RuntimeError: half imported"):
            build_config({})
        assert "half-entry-rule" not in WEIGHTINGS
        module.write_text(WEIGHTING.format(name="half-entry-rule") + "# fixed\n")  # another size: no stale .pyc
        assert build_config({"server": {"weighting": "half-entry-rule"}}).server.weighting == "half-entry-rule"
    finally:
        sys.modules.pop("test_ep_half", None)


def test_a_fresh_process_gets_the_plugins_from_the_run_config_flwr_run_sends(tmp_path, registries):
    """``flwr run`` (and ``fedmtl deploy local``) send the resolved config as a run-config file; its
    ServerApp and ClientApps, in processes that never imported the plugin, rebuild the config
    from it (``config_from_flat``) and so import the plugin by its recorded absolute path."""
    import subprocess
    import sys
    import tomllib

    from fedmtl.launch.flwr_run import resolved_run_config

    cfg = load_config(write_study(tmp_path / "study"))
    path = resolved_run_config(cfg, tmp_path)
    flat = {f"{section}.{key}": value for section, table in tomllib.loads(path.read_text()).items()
            for key, value in table.items()}
    assert flat["run.plugins"] == json.dumps(cfg.run.plugins)  # a string, as pyproject declares it
    code = ("import json, sys; from fedmtl.validation import config_from_flat; "
            "cfg = config_from_flat(json.loads(sys.stdin.read())); "
            "print(cfg.server.weighting, cfg.client.weighting, cfg.data.dataset)")
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(flat), capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**__import__("os").environ,
                                                          "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["first-task-heavy", "first-task-heavy", "blobs"]


def test_a_plugin_file_set_with_set_is_relative_to_the_working_directory(tmp_path, registries, monkeypatch):
    """The config file's folder resolves the files the file lists; --set was typed in the working
    directory, and its files are relative to it."""
    config = write_study(tmp_path / "study")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "rules.py").write_text(WEIGHTING.format(name="set-rule"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ['run.plugins=["elsewhere/rules.py", "study/plugins/my_plugin.py"]',
                               "server.weighting=set-rule"])
    assert cfg.run.plugins == [str(tmp_path / "elsewhere" / "rules.py"),
                               str(tmp_path / "study" / "plugins" / "my_plugin.py")]
    assert load_config(config, ["run.rounds=2"]).run.plugins == [str(tmp_path / "study" / "plugins" / "my_plugin.py")]


def test_a_plugin_that_registered_a_name_and_then_failed_imports_once_fixed(tmp_path, registries):
    """Its names are not left behind: in a notebook, fixing the file and loading again works."""
    plugin = tmp_path / "half.py"
    plugin.write_text(WEIGHTING.format(name="half-rule") + "\nraise NameError('oops')\n")
    (tmp_path / "exp.toml").write_text('[run]\nplugins = ["half.py"]\n[server]\nweighting = "half-rule"\n')
    with pytest.raises(PluginError, match="NameError: oops"):
        load_config(tmp_path / "exp.toml")
    plugin.write_text(WEIGHTING.format(name="half-rule"))
    assert load_config(tmp_path / "exp.toml").server.weighting == "half-rule"


def test_an_edited_plugin_file_is_imported_again_and_a_run_records_what_it_imported(tmp_path, registries):
    """In a notebook, the next config built after an edit uses the file's new text (its old
    names are dropped); an unchanged file is not imported again."""
    from fedmtl.aggregation import WEIGHTINGS

    plugin = tmp_path / "edited.py"
    plugin.write_text(WEIGHTING.format(name="old-rule") + "\nFIRST = 0.9\n")
    (tmp_path / "exp.toml").write_text('[run]\nplugins = ["edited.py"]\n')
    load_config(tmp_path / "exp.toml")
    module = sys.modules[plugins._module_name(plugin.resolve())]
    first = plugins.plugin_digests([str(plugin)])
    assert module.FIRST == 0.9 and "old-rule" in WEIGHTINGS
    assert first == {str(plugin): plugins.file_digest(plugin)}
    load_config(tmp_path / "exp.toml")
    assert sys.modules[plugins._module_name(plugin.resolve())] is module  # unchanged: not imported again

    plugin.write_text(WEIGHTING.format(name="new-rule") + "\nFIRST = 0.6\n")
    assert plugins.plugin_digests([str(plugin)]) == first  # what this process imported, until it imports again
    cfg = load_config(tmp_path / "exp.toml", ["server.weighting=new-rule"])
    assert cfg.server.weighting == "new-rule" and "old-rule" not in WEIGHTINGS
    assert sys.modules[plugins._module_name(plugin.resolve())].FIRST == 0.6
    assert plugins.plugin_digests([str(plugin)]) == {str(plugin): plugins.file_digest(plugin)} != first
    with pytest.raises(ConfigError, match="unknown weighting 'old-rule'"):
        load_config(tmp_path / "exp.toml", ["server.weighting=old-rule"])


def test_an_edit_keeps_names_a_module_the_plugin_imports_registered_and_forgets_what_was_built(tmp_path,
                                                                                                registries,
                                                                                                monkeypatch):
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.data import load_federation
    from tests.plugin_support import PLUGIN

    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "helper_rules_for_edit.py").write_text(WEIGHTING.format(name="helper-mean"))
    monkeypatch.syspath_prepend(str(helpers))
    plugin = tmp_path / "uses_helper.py"
    plugin.write_text("import helper_rules_for_edit  # noqa: F401\n" + PLUGIN)
    sets = [f"run.plugins={plugin}", "client.weighting=helper-mean", "data.dataset=blobs", "model.backbone=mlp"]
    cfg = load_config(None, sets)
    federation = load_federation(cfg.data, 0)
    assert load_federation(cfg.data, 0) is federation  # built once per process ...
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    cfg = load_config(None, sets)  # the helper module is not run again: its name stays registered
    assert "helper-mean" in WEIGHTINGS and cfg.client.weighting == "helper-mean"
    assert load_federation(cfg.data, 0) is not federation  # ... until the plugin that built it changes
    sys.modules.pop("helper_rules_for_edit", None)


def test_a_failed_edit_leaves_the_names_of_the_plugin_and_its_helper_module_as_they_were(tmp_path, registries,
                                                                                           monkeypatch):
    """Once the edited file failed to import, the names its helper module registered were gone
    until the process restarted: fixed, the file said 'unknown weighting'."""
    from fedmtl.aggregation import WEIGHTINGS

    monkeypatch.syspath_prepend(str(tmp_path / "helpers"))
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "helper_rules_for_failed_edit.py").write_text(WEIGHTING.format(name="helper-kept"))
    plugin = tmp_path / "uses_helper.py"
    plugin.write_text("import helper_rules_for_failed_edit  # noqa: F401\n" + WEIGHTING.format(name="own-kept"))
    sets = [f"run.plugins={plugin}", "server.weighting=helper-kept"]
    try:
        load_config(None, sets)
        plugin.write_text(plugin.read_text() + "\nX = (\n")
        with pytest.raises(PluginError, match="SyntaxError"):
            load_config(None, sets)
        assert {"helper-kept", "own-kept"} <= set(WEIGHTINGS.names())  # as before the attempt
        assert not WEIGHTINGS.is_own("helper-kept")  # still the helper's, not fedmtl's
        plugin.write_text(plugin.read_text().replace("\nX = (\n", "\nX = 2\n"))
        assert load_config(None, sets).server.weighting == "helper-kept"
        assert not WEIGHTINGS.is_own("helper-kept")
    finally:
        sys.modules.pop("helper_rules_for_failed_edit", None)


BACKBONE = '''
from torch import nn
from fedmtl.models import BACKBONES


@BACKBONES.register("{name}")
class Mine(nn.Module):
    """A linear backbone of one's own."""

    input_rank = 1

    def __init__(self, input_shape, {signature}):
        super().__init__()
        self.layer = nn.Linear(input_shape[0], 4)
        {attribute}

    def forward(self, x):
        return self.layer(x)
'''


@pytest.mark.parametrize(("signature", "attribute", "said"), [
    ("out_dim", "", "model.backbone = 'mine-bb' has out_dim = None; a backbone says the size of the representation "
                    "it returns in a positive integer attribute out_dim (docs/extending.md: backbones)"),
    ("out_dim", "self.out_dim = 4.0", "model.backbone = 'mine-bb' has out_dim = 4.0; a backbone says"),
    ("width", "self.out_dim = 4", "model.backbone = 'mine-bb' cannot be built as mine-bb(input_shape=(60,), "
                                  "out_dim=64): TypeError: Mine.__init__() got an unexpected keyword argument "
                                  "'out_dim' (docs/extending.md: backbones)"),
    # its layer returns 4 values, its out_dim says 64: every client failed in torch, naming no backbone
    ("out_dim", "self.out_dim = out_dim", "model.backbone = 'mine-bb' returns a representation of shape (2, 4) for "
                                          "a batch of 2, where its out_dim = 64 says (2, 64)"),
])
def test_a_plugin_backbone_that_does_not_build_as_documented_is_one_config_error(tmp_path, registries, signature,
                                                                                  attribute, said):
    (tmp_path / "bb.py").write_text(BACKBONE.format(name="mine-bb", signature=signature, attribute=attribute))
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"run.plugins={tmp_path / 'bb.py'}", "model.backbone=mine-bb", "data.dataset=synthetic",
                           "model.width=64"])
    assert said in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_plugin_backbone_that_needs_real_tensors_to_build_is_accepted(tmp_path, registries):
    """NumPy cannot read a meta tensor: such a class is built on the CPU to be checked."""
    (tmp_path / "np_bb.py").write_text(BACKBONE.format(
        name="np-bb", signature="out_dim", attribute="self.out_dim = int(self.layer.weight.detach().numpy().shape[0])"))
    cfg = load_config(None, [f"run.plugins={tmp_path / 'np_bb.py'}", "model.backbone=np-bb", "data.dataset=synthetic"])
    assert cfg.model.backbone == "np-bb"


def test_fedmtl_list_shows_a_plugin_s_names_with_plugin(tmp_path, registries, monkeypatch):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    (tmp_path / "listed.py").write_text(WEIGHTING.format(name="listed-rule"))
    monkeypatch.chdir(tmp_path)
    before = CliRunner().invoke(cli, ["list", "weightings"])
    assert before.exit_code == 0 and "listed-rule" not in before.output
    shown = CliRunner().invoke(cli, ["list", "weightings", "--plugin", "listed.py"])
    assert shown.exit_code == 0, shown.output
    assert "listed-rule" in shown.output and "Uniform weights, registered by a plugin." in shown.output
    broken = CliRunner().invoke(cli, ["list", "--plugin", "missing.py"])
    assert broken.exit_code == 2 and "--plugin: cannot import file 'missing.py'" in broken.output


@pytest.mark.parametrize(("names", "said"), [
    (("overall", "right"), "a task may not be named 'overall': the results use that name for the statistics "
                             "across tasks"),
    (("right", "right"), "two tasks are named 'right': each task needs its own name"),
    (("a.b", "right"), "task name 'a.b' must be letters, digits, '_' or '-'"),
    # found by an audit: 'all' sat among metrics.csv's client-level rows (and left the figures);
    # 'trained_a' got the columns of task 'a's trained-clients view in rounds.csv
    (("all", "right"), "a task may not be named 'all': metrics.csv uses that name for a client's own rows"),
    (("right", "trained_right"), "task name 'trained_right' may not start with 'trained_': rounds.csv names "
                                 "the columns of a task's trained view so ('trained_right.accuracy.mean' is task "
                                 "'right''s)"),
    (("global_x", "right"), "task name 'global_x' may not start with 'global_'"),
])
def test_a_dataset_whose_task_names_would_mix_up_the_results_is_refused(tmp_path, registries, names, said):
    """A task named 'overall' shared the results' columns with the statistics across tasks, and
    two tasks of one name lost one objective's rows, both without a word (found by a newcomer pass)."""
    from fedmtl.config import ConfigError

    config = write_study(tmp_path / "study")
    plugin = tmp_path / "study" / "plugins" / "my_plugin.py"
    text = plugin.read_text()
    old = 'TASKS = (TaskSpec("above", "multiclass", 2), TaskSpec("right", "multiclass", 2))'
    assert old in text
    plugin.write_text(text.replace(old, f'TASKS = (TaskSpec("{names[0]}", "multiclass", 2), '
                                        f'TaskSpec("{names[1]}", "multiclass", 2))'))
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert str(refused.value).startswith(f"data.dataset = 'blobs': {said}"), refused.value


def test_two_plugin_files_of_one_rule_name_name_the_first_file(tmp_path, registries):
    """The clash was blamed on fedmtl ("the first is fedmtl's own"): ``register`` registers on
    its caller's behalf (found by a newcomer pass)."""
    from fedmtl.config import ConfigError

    first, second = tmp_path / "first.py", tmp_path / "second.py"
    for path in (first, second):
        path.write_text(WEIGHTING.format(name="clash-rule"))
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"run.plugins=[{str(first)!r}, {str(second)!r}]"])
    assert (f"weighting 'clash-rule' is registered twice (the first is registered by plugin file {first}); "
            "give yours another name") in str(refused.value), refused.value


@pytest.mark.parametrize(("name", "claims", "said"), [
    ("odd-scope", 'None\n    scope = "everywhere"',
     "rule 'odd-scope' has scope = 'everywhere': one of 'client', 'server', 'both'"),
    ("odd-kind", 'None\n    kind = "weighing"',
     "rule 'odd-kind' has kind = 'weighing': one of 'weighting', 'aggregator'"),
    ("", "()", "register(''): a rule's name is lowercase letters, digits, '-', '+' or '_', starting with a letter"),
    ("My Rule", "()", "register('My Rule'): a rule's name is lowercase letters"),
])
def test_a_rule_with_impossible_class_attributes_is_refused_at_its_import(tmp_path, registries, name, claims, said):
    """``scope = "everywhere"`` was accepted, then `fedmtl list` crashed on it with a KeyError
    and a client.weighting got a contradictory message; ``register("")`` was accepted (found
    by a newcomer pass)."""
    plugin = tmp_path / "odd.py"
    plugin.write_text(CLAIMING.format(name=name, claims=claims).replace("    claims = None\n", ""))
    with pytest.raises(PluginError) as caught:
        plugins.import_plugin(str(plugin))
    assert len(str(caught.value).splitlines()) == 1 and said in str(caught.value), str(caught.value)


def test_a_rule_without_a_docstring_is_listed(tmp_path, registries):
    """`fedmtl list weightings --plugin` crashed with an IndexError on a rule class without a docstring."""
    from fedmtl.aggregation.registry import summary

    plugin = tmp_path / "bare.py"
    plugin.write_text(WEIGHTING.format(name="bare-rule").replace('    """Uniform weights, registered by a plugin."""\n',
                                                                  ""))
    plugins.import_plugin(str(plugin))
    from fedmtl.aggregation import RULES

    assert summary(RULES.get("bare-rule")) == "(no description: the rule's class has no docstring)"


STATEFUL = WEIGHTING.replace('    """Uniform weights, registered by a plugin."""',
                             '''    """Uniform weights, counting its calls."""

    state_attributes = ({state!r},)

    def __init__(self, context=None, **params):
        import threading

        super().__init__(context, **params)
        self.calls = 0
        self.lock = threading.Lock()''')


@pytest.mark.parametrize(("state", "said"), [
    ("callz", "server.weighting = 'stateful' does not build: RuntimeError: weighting 'stateful' names 'callz' in "
              "state_attributes but has no attribute 'callz'"),
    ("lock", "server.weighting = 'stateful' does not build: RuntimeError: weighting 'stateful': its state attribute "
             "'lock' cannot be copied for checkpoints (TypeError: cannot pickle '_thread.lock' object)"),
])
def test_a_plugin_rule_whose_state_cannot_be_checkpointed_is_refused_with_the_config(tmp_path, registries, state,
                                                                                    said):
    """A misspelt state attribute, or one holding a lock, failed with a raw AttributeError or
    TypeError after round 1 had trained, naming no rule (found by a newcomer pass)."""
    from fedmtl.config import ConfigError

    plugin = tmp_path / "stateful.py"
    plugin.write_text(STATEFUL.format(name="stateful", state=state))
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"run.plugins=[{str(plugin)!r}]", "server.weighting=stateful"])
    assert str(refused.value).startswith(said), refused.value
    plugin.write_text(STATEFUL.format(name="stateful", state="calls"))  # fixed: it builds
    assert load_config(None, [f"run.plugins=[{str(plugin)!r}]", "server.weighting=stateful"])


@pytest.mark.parametrize(("callback", "body", "said"), [
    ("tasks", 'raise KeyError("labels.csv")', "its tasks(cfg) failed: KeyError: 'labels.csv' ("),
    ("input_shape", "return (1 / 0,)", "its input_shape(cfg) failed: ZeroDivisionError: division by zero ("),
    ("tasks", 'raise ValueError("tasks lambda fails")', "its tasks(cfg) failed: ValueError: tasks lambda fails ("),
])
def test_a_plugin_dataset_whose_declaration_raises_is_one_config_error_naming_it(tmp_path, registries, callback,
                                                                                  body, said):
    """A dataset's tasks or input_shape raising a KeyError or ZeroDivisionError was a traceback
    in validate and run (and a bare KeyError from fedmtl.make_config); a ValueError was one line
    naming no dataset."""
    import fedmtl

    config = write_study(tmp_path / "study")
    plugin = tmp_path / "study" / "plugins" / "my_plugin.py"
    old = {"tasks": "tasks=lambda cfg: TASKS", "input_shape": "input_shape=lambda cfg: (8,)"}[callback]
    text = plugin.read_text()
    assert old in text
    failing = f"def failing_{callback}(cfg):\n    {body}\n\n\nDATASETS.register"
    plugin.write_text(text.replace(old, f"{callback}=failing_{callback}").replace("DATASETS.register", failing, 1))
    for load in (lambda: load_config(config), lambda: fedmtl.make_config(str(config))):
        with pytest.raises(ConfigError) as refused:
            load()
        line = str(refused.value)
        assert line.startswith(f"data.dataset = 'blobs': {said}") and "\n" not in line, line
        assert "my_plugin.py, line " in line and f"in failing_{callback}" in line, line


METHOD = '''
from fedmtl.training.methods import Method
from fedmtl.training.methods.base import register


@register
class Checked(Method):
    name = "checked"

    @classmethod
    def check(cls, cfg, params):
        {body}
'''


def test_a_plugin_method_whose_check_raises_is_one_config_error_naming_it(tmp_path, registries):
    """A method's check raising anything but a ValueError was a traceback (validate, run) and
    a bare exception from fedmtl.make_config; a ValueError stays its own line."""
    from typer.testing import CliRunner

    import fedmtl
    from fedmtl.cli import cli

    (tmp_path / "method.py").write_text(METHOD.format(body='return {}["rounds"]'))
    sets = [f"run.plugins={tmp_path / 'method.py'}", "personalization.method=checked"]
    with pytest.raises(ConfigError) as refused:
        fedmtl.make_config(None, sets)
    line = str(refused.value)
    assert line.startswith("personalization.method = 'checked': its check(cfg, params) failed: KeyError: 'rounds' (")
    assert "method.py, line " in line and ", in check; docs/extending.md: personalization methods)" in line, line
    said = CliRunner().invoke(cli, ["validate", *[a for s in sets for a in ("--set", s)]])
    assert said.exit_code == 2 and said.output.strip().splitlines() == [f"error: {line}"], said.output
    (tmp_path / "refusing.py").write_text(METHOD.format(body='raise ValueError("run.rounds = 1: give 2 or more")')
                                          .replace('"checked"', '"refusing"'))
    with pytest.raises(ConfigError, match=r"^run.rounds = 1: give 2 or more$"):
        fedmtl.make_config(None, [f"run.plugins={tmp_path / 'refusing.py'}", "personalization.method=refusing"])


PLAIN_PARAMS = '''
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmtl.aggregation import Weighting, register


class Params(BaseModel):  # pydantic's own BaseModel: extra keys are ignored by default
    {config}
    {field}: float = Field(1.0, alias="{alias}")


@register("plain-params")
class PlainParams(Weighting):
    """Uniform weights; its Params is a plain pydantic model."""

    Params = Params

    def compute(self, objectives):
        return torch.full((len(objectives),), 1.0 / len(objectives), dtype=torch.float64)
'''


@pytest.mark.parametrize(("config", "given", "refused"), [
    ("", "{temprature = 2}", "temprature"),  # a misspelt option, the model keeping extra = "ignore"
    ("", "{temperature_scale = 2}", "temperature_scale"),  # a field's own name, which pydantic ignores
    ('model_config = ConfigDict(extra="ignore")', "{temprature = 2}", "temprature"),
    (None, "{temperature-scale = 2}", None),  # its alias: accepted
    ('model_config = ConfigDict(populate_by_name=True)', "{temperature_scale = 2}", None),
    ('model_config = ConfigDict(extra="allow")', "{anything = 2}", None),  # the author allows any key
])
def test_a_plugin_rule_with_a_plain_pydantic_params_refuses_a_key_it_would_drop(tmp_path, registries, config,
                                                                                given, refused):
    """A rule's ``Params`` subclassing pydantic's ``BaseModel`` (not fedmtl's ``NoParams``)
    ignores unknown keys by default: a misspelt parameter was dropped without a word and the
    run used the default."""
    import fedmtl

    (tmp_path / "plain.py").write_text(PLAIN_PARAMS.format(config=config or "", field="temperature_scale",
                                                           alias="temperature-scale"))
    sets = [f"run.plugins={tmp_path / 'plain.py'}", "client.weighting=plain-params", f"client.params={given}"]
    if refused is None:
        fedmtl.make_config(None, sets)
        return
    with pytest.raises(ConfigError) as error:
        fedmtl.make_config(None, sets)
    assert f"weighting 'plain-params' has no parameter '{refused}'" in str(error.value), str(error.value)
    assert "its parameters: temperature-scale" in str(error.value)

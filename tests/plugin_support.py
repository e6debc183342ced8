"""A plugin of one's own (a weighting and a dataset, the walk-through of docs/extending.md) and
what tests that import plugins need."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

PLUGIN = '''
"""A weighting and a dataset of one's own (the walk-through of docs/extending.md)."""

import torch
from pydantic import Field

from fedmtl.aggregation import Objectives, Weighting, register
from fedmtl.config import Section
from fedmtl.data import DATASETS, ClientData, DatasetEntry, Federation, Split
from fedmtl.seeds import rng
from fedmtl.tasks import TaskSpec


@register("first-task-heavy")
class FirstTaskHeavy(Weighting):
    """Twice the weight on the first objective, equal weights on the others."""

    scope = "both"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        weights = torch.ones(len(objectives), dtype=torch.float64)
        weights[0] = 2.0
        return weights / weights.sum()


class BlobsParams(Section):
    """``[data.params]`` of the blobs dataset."""

    examples: int = Field(40, ge=4, description="Examples per client.")


TASKS = (TaskSpec("above", "multiclass", 2), TaskSpec("right", "multiclass", 2))


def build(cfg, seed):
    examples = BlobsParams.model_validate(dict(cfg.params)).examples

    def split(x):
        return Split(torch.from_numpy(x), {"above": torch.from_numpy((x[:, 1] > 0).astype("int64")),
                                           "right": torch.from_numpy((x[:, 0] > 0).astype("int64"))})

    def build_client(client_id):
        x = rng(seed, client_id, 7).normal(0.1 * client_id, 1.0, (examples, 8)).astype("float32")
        cut = examples // 4
        return ClientData(client_id, train=split(x[cut:]), test=split(x[:cut]))

    return Federation((8,), list(TASKS), cfg.num_clients, build_client)


DATASETS.register("blobs")(DatasetEntry(
    input_shape=lambda cfg: (8,), tasks=lambda cfg: TASKS, build=build,
    description="Gaussian blobs, two sign tasks", params=BlobsParams, moved={},
))
'''

CONFIG = '''
[run]
name = "plugin-smoke"
rounds = 2
plugins = ["plugins/my_plugin.py"]

[data]
dataset = "blobs"
num-clients = 2

[model]
backbone = "mlp"

[client]
batch-size = 64
weighting = "first-task-heavy"

[server]
fraction-train = 1.0
weighting = "first-task-heavy"
'''


def write_study(folder: Path) -> Path:
    """A plugin file and a config naming it (relative to the config file); return the config."""
    (folder / "plugins").mkdir(parents=True)
    (folder / "plugins" / "my_plugin.py").write_text(PLUGIN)
    (folder / "exp.toml").write_text(CONFIG)
    return folder / "exp.toml"


def restored_registries() -> Iterator[None]:
    """Put every registry back as it was after the test (a fixture): the plugins a test imports
    register into this process."""
    from fedmtl.aggregation import RULES
    from fedmtl.data import DATASETS, PARTITIONERS, TASK_SETS
    from fedmtl.models import BACKBONES
    from fedmtl.tasks import TASK_KINDS
    from fedmtl.training.methods import METHODS

    kept = [(r, dict(r._entries)) for r in (RULES, DATASETS, PARTITIONERS, TASK_SETS, BACKBONES, TASK_KINDS, METHODS)]
    modules = set(sys.modules)
    yield
    for registry, entries in kept:
        registry._entries.clear()
        registry._entries.update(entries)
    for name in set(sys.modules) - modules:
        if name.startswith("fedmtl_plugin_") or name.startswith("test_ep_plugin"):
            del sys.modules[name]

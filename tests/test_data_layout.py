"""A run resumed by a fedmtl that builds its config's clients otherwise is named, not mixed."""

from __future__ import annotations

from fedmtl.data.layout import DATA_LAYOUT, layout_changes
from fedmtl.results import DATA_LAYOUT_KEY, _layout_problems, checkpoint_identity
from fedmtl.validation import load_config

SYNTHETIC = ["data.dataset=synthetic", "model.backbone=mlp"]


def test_checkpoints_record_the_data_layout():
    cfg = load_config(None, [*SYNTHETIC, "data.partitioner=dirichlet"])
    assert checkpoint_identity("run", cfg)[DATA_LAYOUT_KEY] == DATA_LAYOUT == 3


def test_a_checkpoint_of_an_older_layout_is_named_for_the_configs_it_changes():
    """Since layout 2 the pooled rows of Synthetic, arrests and CelebA are shuffled before the
    label partitioners (dirichlet, pathological) cut each class into blocks: a run of such a
    config started before would resume with other client data from the checkpoint's round on.
    iid and power-law shuffle first themselves, and natural clients and MultiMNIST's base digits
    are not pooled rows: their runs resume as before."""
    for partitioner in ("dirichlet", "pathological"):
        pooled = load_config(None, [*SYNTHETIC, f"data.partitioner={partitioner}"])
        (problem,) = _layout_problems("checkpoint round-3.pt", {"round": 3}, pooled)  # no layout: 1
        assert problem.message.startswith("checkpoint round-3.pt was written by a fedmtl that built this config's "
                                          "clients otherwise (the pooled rows of a dataset with natural clients")
        assert problem.forced  # --force goes on with the clients as built now
        assert _layout_problems("c", {"round": 3, DATA_LAYOUT_KEY: 2}, pooled) == []
    names = ("natural", "iid", "power-law")
    unchanged = [load_config(None, [*SYNTHETIC, f"data.partitioner={name}"]) for name in names]
    unchanged.append(load_config(None, ["data.partitioner=dirichlet"]))  # MultiMNIST
    for cfg in unchanged:
        assert layout_changes(1, cfg.data.dataset, cfg.data.partitioner) == []
        assert _layout_problems("c", {"round": 3}, cfg) == []


def test_a_multimnist_run_on_a_canvas_pillow_resizes_otherwise_is_named_since_layout_3():
    """Layout 3 resizes MultiMNIST canvases as Pillow does: on canvases of 40 pixels (and 32,
    64, 72, 80, ...) other pixels than the pixel-centre formula of layouts 1 and 2 took, so a run
    checkpointed before would go on with other canvases; at 36 (the default) nothing changed."""
    changed = [c for c in range(28, 101)
               if layout_changes(2, "multimnist", "iid", {"canvas": c})]
    assert {32, 40, 64, 72, 80} <= set(changed) and 36 not in changed and 84 not in changed
    forty = load_config(None, ["data.params.canvas=40"])
    (problem,) = _layout_problems("checkpoint round-3.pt", {"round": 3, DATA_LAYOUT_KEY: 2}, forty)
    assert "Pillow's nearest neighbour" in problem.message and problem.forced
    assert _layout_problems("c", {"round": 3, DATA_LAYOUT_KEY: 3}, forty) == []
    assert _layout_problems("c", {"round": 3, DATA_LAYOUT_KEY: 2}, load_config(None, [])) == []

"""`fedmtl data describe`: the per-client table and the federation figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fedmtl.data import load_federation
from fedmtl.data.describe import describe_federation
from fedmtl.validation import load_config
from tests.helpers import is_png

ROOT = Path(__file__).resolve().parents[1]


def test_table_counts_examples_tasks_and_label_mix():
    cfg = load_config(None, ["data.num-clients=4", "data.params.pairs-per-digit=1", "data.task-sets=one"])
    fed = load_federation(cfg.data, 0)
    table = describe_federation(fed)
    assert table.client.tolist() == [0, 1, 2, 3]
    assert table.tasks.tolist() == ["left", "right", "left", "right"]
    for _, row in table.iterrows():
        client = fed.client(int(row.client))
        assert row.train == len(client.train) and row.test == len(client.test)
        held = client.tasks[0]
        other = "right" if held == "left" else "left"
        counts = np.bincount(client.train.targets[held].numpy())
        assert row[f"{held}.top-share"] == counts.max() / counts.sum()
        assert row[f"{held}.classes"] == (counts > 0).sum()
        assert pd.isna(row[f"{other}.classes"])  # whole numbers, blank where the task is not held


def test_the_figure_labels_clients_with_whole_numbers():
    """Client ids on the x axis were labelled 0.0, 2.5, 5.0, ... for 20 clients."""
    from fedmtl.data.describe import federation_figure

    cfg = load_config(None, ["data.num-clients=20", "data.params.pairs-per-digit=1"])
    fig = federation_figure(load_federation(cfg.data, 0))
    fig.canvas.draw()
    for axes in fig.axes[:2]:
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_cli_prints_the_table_and_writes_the_figure_and_csv(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "data", "describe", str(ROOT / "configs/arrests.toml"),
         "--plot", str(tmp_path / "fed.png"), "--csv", str(tmp_path / "fed.csv")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "arrests: 6 clients" in proc.stdout and "total: " in proc.stdout
    assert is_png(tmp_path / "fed.png")
    table = pd.read_csv(tmp_path / "fed.csv")
    assert len(table) == 6 and table.train.sum() + table.test.sum() == 5226
    # the group column names the group it measures (group 1 of 'colour' is Black: fedmtl.data.arrests)
    assert {"released.top-share", "checks.classes", "colour.share-Black"} <= set(table.columns)
    assert "(label and group columns: training split)" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "fedmtl", "data", "describe", "--set", "data.num-clients=0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "data.num-clients = 0" in bad.stderr


def test_output_paths_are_files_in_folders_made_for_them_or_one_line_errors(tmp_path):
    def describe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedmtl", "data", "describe", "smoke", *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    default = describe()  # among the runs (run.output-dir), not in the folder it is called from
    assert default.returncode == 0, default.stderr
    assert "figure: runs/federation.png" in default.stdout and is_png(tmp_path / "runs" / "federation.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    made = describe("--csv", "new/table.csv", "--plot", "new/figure")  # no suffix: .png, as written
    assert made.returncode == 0, made.stderr
    assert "figure: new/figure.png" in made.stdout and is_png(tmp_path / "new" / "figure.png")
    assert len(pd.read_csv(tmp_path / "new" / "table.csv")) == 2
    for option in ("--csv", "--plot"):
        folder = describe(option, "new")
        assert folder.returncode == 2 and "Traceback" not in folder.stderr
        assert folder.stderr.strip().splitlines()[-1].startswith(f"error: {option} new: a folder; give a file name")


def _full_disk() -> None:
    """In the child: files may not grow past 4 KiB (EFBIG, as a full disk; works as root too)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_names_the_figure_and_leaves_no_half_file(tmp_path):
    """On a full disk the figure's error said 'cannot write the output' and left half a PNG."""
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "data", "describe", "smoke", "--csv", "table.csv",
                           "--plot", "figure.png"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          preexec_fn=_full_disk)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: cannot write {Path('figure.png')}: File too large"
    assert len(pd.read_csv(tmp_path / "table.csv")) == 2  # the table fits; no figure, not half of one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_class_counts_are_whole_numbers_with_blanks_for_tasks_not_held():
    from fedmtl.data import load_federation
    from fedmtl.data.describe import describe_federation
    from fedmtl.validation import load_config

    cfg = load_config(None, ["data.num-clients=6", "data.task-sets=mixed"])
    table = describe_federation(load_federation(cfg.data, cfg.run.seed))
    for column in [c for c in table.columns if c.endswith(".classes")]:
        assert str(table[column].dtype) == "Int64"
    assert "10.00" not in table.to_string() and ".0," not in table.to_csv()


def test_the_figure_is_written_in_the_format_its_suffix_names(tmp_path):
    """After the figure was made atomic, a .pdf or .svg --plot got PNG bytes; a suffix that is
    no figure format is refused in one line."""
    def describe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedmtl", "data", "describe", "smoke", *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    for name, start in (("f.pdf", b"%PDF"), ("f.svg", b"<?xml"), ("f.png", b"\x89PNG")):
        proc = describe("--plot", name)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / name).read_bytes().startswith(start)
    bad = describe("--plot", "f.txt")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --plot f.txt: a figure is written as .png, .pdf, .svg; give one of those suffixes")



BUGGY_DATASET = '''
import torch

from fedmtl.config import Section
from fedmtl.data import DATASETS, ClientData, DatasetEntry, Federation, Split
from fedmtl.tasks import TaskSpec

TASKS = (TaskSpec("above", "multiclass", 2),)


def build(cfg, seed):
    def build_client(client_id):
        x = torch.randn(20, 8, generator=torch.Generator().manual_seed(client_id))
        labels = {"above": (x[:, 1] > 0).long()}
        return ClientData(client_id, train=Split(x, labels), test=Split(x[:4], {"above": labels["above"][:4]}))

    if cfg.num_clients > 2:
        return undefined_name
    return Federation((8,), list(TASKS), cfg.num_clients, build_client)


DATASETS.register("buggy-describe")(DatasetEntry(
    input_shape=lambda cfg: (8,), tasks=lambda cfg: TASKS, build=build,
    description="its build has a NameError", params=Section, moved={},
))
'''


def test_data_that_cannot_be_built_is_one_line_as_in_fedmtl_run(tmp_path):
    """A CelebA copy too small for the config, or a plugin dataset whose build raises, gave a
    Python traceback (fedmtl run says one line)."""
    from tests.celeba_fixture import make_celeba

    def describe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedmtl", "data", "describe", *args], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    make_celeba(tmp_path / "celeba")
    proc = describe("celeba", "--set", f"data.path={tmp_path / 'celeba'}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: data.dataset = 'celeba' cannot be built: only 3 celebrities have at least data.params.min-images = "
        "5 images; lower data.num-clients (now 100)"], proc.stderr[-3000:]
    (tmp_path / "buggy.py").write_text(BUGGY_DATASET)
    proc = describe("--set", 'run.plugins=["buggy.py"]', "--set", "data.dataset=buggy-describe",
                    "--set", "data.num-clients=3", "--set", "model.backbone=mlp")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: data.dataset = 'buggy-describe' cannot be built: NameError: name "
                               "'undefined_name' is not defined (") and "buggy.py, line " in lines[0], lines


def test_group_shares_are_shares_of_each_value_not_the_mean_of_the_codes():
    """An attribute of three values reported the mean of its codes as the share of group 1
    (codes 0, 1, 2, 2: 1.25); each value after the first now has its share (found by an audit)."""
    import torch

    from fedmtl.data.describe import describe_federation
    from fedmtl.data.federation import ClientData, Federation, Split
    from fedmtl.tasks import TaskSpec

    def split(codes: list[int], names: dict) -> Split:
        return Split(torch.zeros(len(codes), 2), {"t": torch.zeros(len(codes), dtype=torch.int64)},
                     {"g": torch.tensor(codes)}, names)

    for names, codes, expected in (({"g": ("a", "b", "c")}, [0, 1, 2, 2], {"g.share-b": 0.25, "g.share-c": 0.5}),
                                   ({"g": ("no", "yes")}, [0, 1, 1, 1], {"g.share-yes": 0.75}),
                                   ({}, [0, 1, 1, 0], {"g.share-1": 0.5}),
                                   ({}, [0, 1, 2, 2], {"g.share-1": 0.25, "g.share-2": 0.5})):  # unnamed
        fed = Federation((2,), [TaskSpec("t", "multiclass", 2)], 1,
                         lambda c, n=names, k=codes: ClientData(c, train=split(k, n), test=split(k[:1], n)))
        table = describe_federation(fed)
        assert {c: table[c][0] for c in table.columns if c.startswith("g.")} == expected


def test_an_unnamed_value_some_clients_lack_is_a_share_of_0_for_them():
    import torch

    from fedmtl.data.describe import describe_federation
    from fedmtl.data.federation import ClientData, Federation, Split
    from fedmtl.tasks import TaskSpec

    codes = {0: [0, 1, 2, 2], 1: [0, 1, 1, 1]}

    def split(values: list[int]) -> Split:
        return Split(torch.zeros(len(values), 2), {"t": torch.zeros(len(values), dtype=torch.int64)},
                     {"g": torch.tensor(values)}, {})

    fed = Federation((2,), [TaskSpec("t", "multiclass", 2)], 2,
                     lambda c: ClientData(c, train=split(codes[c]), test=split(codes[c][:1])))
    table = describe_federation(fed)
    assert table["g.share-2"].tolist() == [0.5, 0.0] and table["g.share-1"].tolist() == [0.25, 0.75]

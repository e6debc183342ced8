"""Inspect a federation: a per-client table and a figure (``fedmtl data describe``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmtl.atomic import write_bytes
from fedmtl.data.federation import Federation


def describe_federation(fed: Federation) -> pd.DataFrame:
    """One row per client: example counts, tasks held and, per task, its label mix.

    Columns: ``client``, ``train``, ``test``, ``tasks`` (comma-separated), then for every
    task of the dataset ``<task>.classes`` (distinct training labels; NaN when the client
    does not hold the task) and ``<task>.top-share`` (share of the most common training
    label), and for every group attribute ``<group>.share-<name>`` (the share of the training
    examples in group 1, named by the dataset: ``colour.share-Black``; ``<group>.share-1``
    when the dataset names no groups; an attribute of more than two values, named or seen,
    has one such column per value after the first). Regression tasks get ``<task>.mean`` instead. Every
    label and group column counts the training split.
    """
    rows = []
    for client in fed.clients():
        row: dict[str, object] = {
            "client": client.client_id,
            "train": len(client.train),
            "test": len(client.test),
            "tasks": ",".join(client.tasks),
        }
        for task in fed.tasks:
            y = client.train.targets.get(task.name)
            if task.kind == "regression":
                row[f"{task.name}.mean"] = float(y.float().mean()) if y is not None else np.nan
                continue
            if y is None or len(y) == 0:
                row[f"{task.name}.classes"] = np.nan
                row[f"{task.name}.top-share"] = np.nan
                continue
            counts = np.bincount(y.numpy().astype(np.int64))
            row[f"{task.name}.classes"] = int((counts > 0).sum())
            row[f"{task.name}.top-share"] = float(counts.max() / counts.sum())
        for group, values in client.train.groups.items():
            names = client.train.group_names.get(group, ())
            top = int(values.max()) + 1 if len(values) else 0
            for code in range(1, max(len(names), top, 2)):  # every value but the first (binary: value 1 only)
                name = str(names[code]) if len(names) > code else str(code)
                row[f"{group}.share-{name}"] = float((values == code).float().mean()) if len(values) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in [c for c in table.columns if ".share-" in c]:  # a value some clients have: 0 for the others
        table.loc[table[column].isna() & (table["train"] > 0), column] = 0.0
    for column in [c for c in table.columns if c.endswith(".classes")]:  # counts, blank where not held
        table[column] = table[column].astype("Int64")
    return table


def plot_federation(fed: Federation, path: str | Path) -> Path:
    """Examples per client (train/test) and the label mix of each client's first held task,
    written to ``path`` in the format of its suffix."""
    fig = federation_figure(fed)
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120)  # the suffix's format
    write_bytes(path, buffer.getvalue())  # whole or not at all; an error names the figure
    return path


def federation_figure(fed: Federation) -> Any:
    """The figure of :func:`plot_federation` (a ``matplotlib.figure.Figure``; client ids on the
    x axis are whole numbers)."""
    # a Figure of its own: neither pyplot nor a backend switch (no global matplotlib state)
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    clients = fed.clients()
    ids = np.array([c.client_id for c in clients])
    fig = Figure(figsize=(max(6.0, 0.35 * len(ids) + 2), 7))
    sizes, mix = fig.subplots(2, 1, sharex=True)
    train = np.array([len(c.train) for c in clients])
    test = np.array([len(c.test) for c in clients])
    sizes.bar(ids, train, label="train")
    sizes.bar(ids, test, bottom=train, label="test")
    sizes.set_ylabel("examples")
    sizes.set_title(f"{len(ids)} clients: examples per client")
    sizes.legend()
    classification = [t for t in fed.tasks if t.kind != "regression"]
    if classification:
        classes = max((t.num_classes or 2) for t in classification)
        shares = np.zeros((len(ids), classes))
        shown = []
        for i, c in enumerate(clients):
            task = next((t for t in classification if t.name in c.tasks), None)
            shown.append(task.name if task else "-")
            if task is not None:
                counts = np.bincount(c.train.targets[task.name].numpy().astype(np.int64), minlength=classes)
                shares[i, : len(counts)] = counts / max(counts.sum(), 1)
        bottom = np.zeros(len(ids))
        cmap = matplotlib.colormaps["tab10" if classes <= 10 else "tab20"]
        for k in range(classes):
            mix.bar(ids, shares[:, k], bottom=bottom, color=cmap(k % cmap.N), label=str(k))
            bottom += shares[:, k]
        mix.set_ylabel("share of training labels")
        mix.set_title("label mix of each client's first task (" + ", ".join(sorted(set(shown))) + ")")
        mix.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    mix.set_xlabel("client")
    mix.xaxis.set_major_locator(MaxNLocator(integer=True))  # client ids, not 2.5 (shared with the sizes above)
    fig.tight_layout()
    return fig

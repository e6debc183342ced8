"""Toronto marijuana-possession arrests (carData's ``Arrests``): a real tabular fairness dataset.

5,226 people arrested in Toronto for simple possession of small quantities of marijuana,
1997–2002 (Toronto Star data; Fox, "An R and S-Plus Companion to Applied Regression", 2002;
R package carData, ``Arrests``). The CSV ships inside the scikit-lego package
(``sklego/data/arrests.zip``, 19 KB), read offline; scikit-lego and its one new dependency
(narwhals) are small pure-Python wheels (about 0.6 MB together).

- **Tasks**: ``released`` (binary: released with a summons) and ``checks`` (7 classes: on how
  many police databases, 0–6, the arrestee's name appeared).
- **Sensitive attribute**: ``colour`` (Black / White), kept as the group of every example
  (its metrics name the groups ``colour-Black`` and ``colour-White``); it is an input only with
  ``data.params.include-sensitive = true``.
- **Inputs**: age (standardised), sex, employed, citizen (0/1) [, colour].
- **Clients**: with ``data.partitioner = "natural"``, by ``data.params.client-key``: ``year`` (6
  clients, one per year) or ``year-sex`` (12); ``data.num-clients`` must equal that number.
  Any other partitioner splits the pooled rows (label skew on ``data.partition-task``).
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from fedmtl.config import Section
from fedmtl.data.federation import Federation, Split, row_federation
from fedmtl.seeds import Stream
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

    from fedmtl.config import DataSection

TASKS = (TaskSpec("released", "binary"), TaskSpec("checks", "multiclass", 7))
BINARY = ("sex", "employed", "citizen")
CLIENT_KEYS = {"year": ["year"], "year-sex": ["year", "sex"]}
COLOUR = ("White", "Black")
"""The ``colour`` groups' names, by code (``colour == "Black"`` is 1, as in the inputs)."""


class Params(Section):
    """``[data.params]`` of Arrests."""

    client_key: Literal["year", "year-sex"] = Field(
        "year", description="Natural clients by 'year' (6) or 'year-sex' (12)."
    )
    include_sensitive: bool = Field(False, description="Use the sensitive attribute (colour) as an input.")


MOVED = {"client-key": "client-key", "include-sensitive": "include-sensitive"}
"""Keys of ``[data]`` before ``[data.params]`` -> their ``[data.params]`` names."""


def options(cfg: DataSection) -> Params:
    """The Arrests options of ``cfg`` (``data.params``, defaults filled in)."""
    return Params.model_validate(dict(cfg.params))


@lru_cache(maxsize=1)
def load_table() -> pd.DataFrame:
    """The 5,226 rows of ``Arrests`` from scikit-lego's bundled copy."""
    try:
        path = importlib.resources.files("sklego") / "data" / "arrests.zip"
    except ModuleNotFoundError:
        raise RuntimeError("dataset 'arrests' needs the scikit-lego package (pip install scikit-lego)") from None
    import pandas as pd  # imported on use: pandas costs ~0.4 s in every process that imports fedmtl.data

    return pd.read_csv(path)


def input_dim(cfg: DataSection) -> int:
    """Number of input features."""
    return 1 + len(BINARY) + int(options(cfg).include_sensitive)


def features(table: pd.DataFrame, include_sensitive: bool) -> np.ndarray:
    """``(n, d)`` float32 inputs: standardised age, binary indicators [, colour]."""
    age = table["age"].to_numpy(dtype=np.float64)
    columns = [(age - age.mean()) / age.std()]
    columns += [(table["sex"] == "Male").to_numpy(float)]
    columns += [(table[c] == "Yes").to_numpy(float) for c in ("employed", "citizen")]
    if include_sensitive:
        columns.append((table["colour"] == "Black").to_numpy(float))
    return np.stack(columns, axis=1).astype(np.float32)


def client_groups(table: pd.DataFrame, key: str) -> list[np.ndarray]:
    """Row indices of every natural client, in sorted key order."""
    grouped = table.groupby(CLIENT_KEYS[key], sort=True).indices
    return [np.asarray(grouped[k]) for k in sorted(grouped)]


def num_natural_clients(key: str) -> int:
    """How many clients ``data.params.client-key`` gives."""
    return len(client_groups(load_table(), key))


class ArrestsRows:
    """The table as a :class:`~fedmtl.data.federation.RowDataset`."""

    def __init__(self, cfg: DataSection) -> None:
        table, params = load_table(), options(cfg)
        self.table, self.key = table, params.client_key
        self.x = torch.from_numpy(features(table, params.include_sensitive))
        self.targets = {
            "released": (table["released"] == "Yes").to_numpy(np.int64),
            "checks": table["checks"].to_numpy(np.int64, copy=True),
        }
        self.colour = (table["colour"] == COLOUR[1]).to_numpy(np.int64)

    def natural_groups(self) -> list[np.ndarray]:
        return client_groups(self.table, self.key)

    def labels(self, task: str) -> np.ndarray:
        return self.targets[task]

    def split(self, rows: np.ndarray) -> Split:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return Split(
            self.x[index],
            {name: torch.from_numpy(values[rows]) for name, values in self.targets.items()},
            groups={"colour": torch.from_numpy(self.colour[rows])},
            group_names={"colour": COLOUR},
        )


def build(cfg: DataSection, seed: int) -> Federation:
    """Natural clients (``data.params.client-key``) or any partitioner on the pooled rows."""
    return row_federation(ArrestsRows(cfg), (input_dim(cfg),), list(TASKS), cfg, seed, salt=Stream.ARRESTS_SPLIT)

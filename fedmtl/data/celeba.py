"""CelebA from a local copy: 40 binary attribute tasks, one client per celebrity (as LEAF).

Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015. Nothing is
downloaded: ``data.path`` points at a folder in the standard layout::

    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt       # count, the 40 attribute names, then "<image> ±1 x 40"
    list_eval_partition.txt    # "<image> <0|1|2>"
    identity_CelebA.txt        # "<image> <celebrity id>"

With ``data.partitioner = "natural"``, clients are celebrities, as in LEAF (Caldas et al.,
"LEAF: A Benchmark for Federated Settings", 2018): identities with at least
``data.params.min-images`` images, in increasing id order, the first ``data.num-clients`` of
them. Other partitioners split all images (label skew on ``data.partition-task``). Each client's
images are split at random into train and test (``data.test-fraction``; LEAF's per-user sample
split), so the official ``list_eval_partition.txt`` (identity-disjoint) is checked for
completeness but not used. Tasks: every attribute (or the comma-separated
``data.params.attributes``), each binary (label 1 where the file says 1). Images are loaded per
client, on first use, as RGB resized to ``data.params.image-size`` pixels square and scaled to
[-1, 1]. Options: :class:`Params`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from fedmtl.config import Section
from fedmtl.data.federation import Federation, Split, row_federation
from fedmtl.seeds import Stream
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection

class Params(Section):
    """``[data.params]`` of CelebA."""

    image_size: int = Field(32, ge=8, le=256, description="Images resized to this square size.")
    min_images: int = Field(5, ge=2, description="Celebrities with fewer images are not clients.")
    attributes: str = Field("", description="Comma-separated attribute tasks ('' = all 40).")


MOVED = {"image-size": "image-size", "celeba-min-images": "min-images", "celeba-attributes": "attributes"}
"""Keys of ``[data]`` before ``[data.params]`` -> their ``[data.params]`` names."""


def options(cfg: DataSection) -> Params:
    """The CelebA options of ``cfg`` (``data.params``, defaults filled in)."""
    return Params.model_validate(dict(cfg.params))


REQUIRED = ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt")


class CelebAError(ValueError):
    """The CelebA folder is missing, incomplete or malformed; the message says what to fix."""


def check_layout(path: str) -> Path:
    """The CelebA root, or :class:`CelebAError` naming what is missing."""
    if not path:
        raise CelebAError("dataset 'celeba' needs data.path, the folder of a local CelebA copy")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CelebAError(f"data.path = '{path}': no such folder (a local CelebA copy is needed)")
    missing = [name for name in REQUIRED if not (root / name).exists()]
    if missing:
        raise CelebAError(
            f"data.path = '{path}' is not a complete CelebA folder: missing {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED)})"
        )
    return root


def attribute_names(path: str) -> list[str]:
    """The 40 attribute names from the header of ``list_attr_celeba.txt``."""
    with (check_layout(path) / "list_attr_celeba.txt").open() as handle:
        handle.readline()
        return handle.readline().split()


def selected_attributes(cfg: DataSection) -> list[str]:
    """The attributes used as tasks (all, or ``data.params.attributes``)."""
    names = attribute_names(cfg.path)
    attributes = options(cfg).attributes
    if not attributes.strip():
        return names
    chosen = [a.strip() for a in attributes.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in names]
    if unknown:
        raise CelebAError(f"data.params.attributes: unknown attribute(s) {', '.join(unknown)}; "
                          f"CelebA has {', '.join(names)}")
    return chosen


def tasks(cfg: DataSection) -> tuple[TaskSpec, ...]:
    """One binary task per selected attribute."""
    return tuple(TaskSpec(name, "binary") for name in selected_attributes(cfg))


def input_shape(cfg: DataSection) -> tuple[int, int, int]:
    """``(3, s, s)`` with s = ``data.params.image-size``."""
    size = options(cfg).image_size
    return (3, size, size)


@lru_cache(maxsize=2)
def read_tables(path: str) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """``(image names, ±1 attribute matrix, image -> identity)``."""
    root = check_layout(path)
    images, rows = [], []
    with (root / "list_attr_celeba.txt").open() as handle:
        handle.readline()
        width = len(handle.readline().split())
        for number, line in enumerate(handle, start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != width + 1:
                raise CelebAError(f"list_attr_celeba.txt line {number}: expected an image and {width} values")
            images.append(parts[0])
            rows.append([int(v) for v in parts[1:]])
    identities = {}
    with (root / "identity_CelebA.txt").open() as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 2:
                identities[parts[0]] = int(parts[1])
    with (root / "list_eval_partition.txt").open() as handle:
        listed = {line.split()[0] for line in handle if line.strip()}
    missing = [i for i in images if i not in identities or i not in listed]
    if missing:
        raise CelebAError(f"{len(missing)} images of list_attr_celeba.txt have no identity or partition "
                          f"entry (first: {missing[0]})")
    return images, np.asarray(rows, dtype=np.int64), identities


def celebrity_groups(cfg: DataSection) -> list[np.ndarray]:
    """Row indices of the first ``data.num-clients`` celebrities with enough images."""
    images, _, identities = read_tables(cfg.path)
    by_identity: dict[int, list[int]] = {}
    for row, image in enumerate(images):
        by_identity.setdefault(identities[image], []).append(row)
    min_images = options(cfg).min_images
    eligible = [np.asarray(rows) for _, rows in sorted(by_identity.items()) if len(rows) >= min_images]
    if len(eligible) < cfg.num_clients:
        raise CelebAError(
            f"only {len(eligible)} celebrities have at least data.params.min-images = "
            f"{min_images} images; lower data.num-clients (now {cfg.num_clients})"
        )
    return eligible[: cfg.num_clients]


def load_images(root: Path, names: list[str], size: int) -> torch.Tensor:
    """``(n, 3, size, size)`` float32 in [-1, 1]."""
    from PIL import Image

    out = np.empty((len(names), 3, size, size), dtype=np.float32)
    for i, name in enumerate(names):
        with Image.open(root / "img_align_celeba" / name) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        out[i] = pixels.transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(out)


class CelebARows:
    """The attribute table as a :class:`~fedmtl.data.federation.RowDataset` (images are read
    only for the rows a client gets)."""

    def __init__(self, cfg: DataSection) -> None:
        self.cfg, self.root = cfg, check_layout(cfg.path)
        self.images, attributes, _ = read_tables(cfg.path)
        names = attribute_names(cfg.path)
        self.chosen = selected_attributes(cfg)
        self.labels_ = (attributes[:, [names.index(a) for a in self.chosen]] > 0).astype(np.int64)

    def natural_groups(self) -> list[np.ndarray]:
        return celebrity_groups(self.cfg)

    def labels(self, task: str) -> np.ndarray:
        return self.labels_[:, self.chosen.index(task)]

    def split(self, rows: np.ndarray) -> Split:
        x = load_images(self.root, [self.images[r] for r in rows], options(self.cfg).image_size)
        return Split(x, {a: torch.from_numpy(self.labels_[rows, j].copy()) for j, a in enumerate(self.chosen)})


def build(cfg: DataSection, seed: int) -> Federation:
    """Celebrities as clients (``data.partitioner = "natural"``) or any partitioner on all
    images; images are loaded per client."""
    return row_federation(CelebARows(cfg), input_shape(cfg), list(tasks(cfg)), cfg, seed, salt=Stream.CELEBA_SPLIT)

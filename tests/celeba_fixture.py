"""A tiny CelebA folder in the standard layout, generated for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ATTRIBUTES = [f"Attr_{i:02d}" for i in range(38)] + ["Smiling", "Young"]


def make_celeba(root: Path, images_per_identity: tuple[int, ...] = (6, 3, 7, 5), size: int = 24) -> Path:
    """Write ``root`` with one identity per entry of ``images_per_identity``; return it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    attr_lines, id_lines, part_lines = [], [], []
    number = 0
    for identity, count in enumerate(images_per_identity, start=10):
        for _ in range(count):
            number += 1
            name = f"{number:06d}.jpg"
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img_align_celeba" / name)
            values = rng.choice([-1, 1], len(ATTRIBUTES))
            attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
            id_lines.append(f"{name} {identity}")
            part_lines.append(f"{name} {number % 3}")
    (root / "list_attr_celeba.txt").write_text(
        f"{number}\n" + " ".join(ATTRIBUTES) + "\n" + "\n".join(attr_lines) + "\n"
    )
    (root / "identity_CelebA.txt").write_text("\n".join(id_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return root

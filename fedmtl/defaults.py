"""Default registered names of the config schema, kept apart so the schema names none.

:mod:`fedmtl.config` is a pure schema: it imports no registry and spells no dataset or
backbone. Its defaults for ``data.dataset`` and ``model.backbone`` come from here; the
loaders of :mod:`fedmtl.validation` check that they (like every name) are registered.
"""

from __future__ import annotations

DATASET = "multimnist"
"""Default ``data.dataset``."""

BACKBONE = "lenet"
"""Default ``model.backbone``."""

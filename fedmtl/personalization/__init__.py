"""Personalisation: where each client's heads live (the backbone is federated)."""

from fedmtl.personalization.head_store import (
    ContextHeadStore,
    DiskHeadStore,
    HeadStore,
    heads_fingerprint,
    init_heads,
    load_weighting_state,
    restore_client,
    restore_heads,
    save_client_state,
    unpack_state,
)

__all__ = [
    "ContextHeadStore",
    "DiskHeadStore",
    "HeadStore",
    "heads_fingerprint",
    "init_heads",
    "load_weighting_state",
    "restore_client",
    "restore_heads",
    "save_client_state",
    "unpack_state",
]

"""Personalisation: where each client's heads live (the backbone is federated).

The store in a Flower node's ``Context.state`` belongs to the ClientApp
(:mod:`fedmtl.clients.context_store`): the core knows nothing of Flower.
"""

from fedmtl.personalization.head_store import (
    CHECKPOINTS_KEPT,
    KEPT_FINGERPRINTS,
    DiskHeadStore,
    HeadsProblem,
    HeadStore,
    HeadStoreError,
    RunIdentity,
    check_heads,
    check_kept,
    heads_fingerprint,
    init_heads,
    kept_fingerprint,
    load_weighting_state,
    restore_client,
    restore_heads,
    save_client_state,
    state_fingerprint,
    unpack_state,
)

__all__ = [
    "CHECKPOINTS_KEPT",
    "DiskHeadStore",
    "HeadStore",
    "HeadStoreError",
    "HeadsProblem",
    "KEPT_FINGERPRINTS",
    "RunIdentity",
    "check_heads",
    "check_kept",
    "heads_fingerprint",
    "kept_fingerprint",
    "init_heads",
    "load_weighting_state",
    "restore_client",
    "restore_heads",
    "save_client_state",
    "state_fingerprint",
    "unpack_state",
]

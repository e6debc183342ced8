"""Personalisation: where each client's heads live (the backbone is federated).

The store in a Flower node's ``Context.state`` belongs to the ClientApp
(:mod:`fedmtl.clients.context_store`): the core knows nothing of Flower.
"""

from fedmtl.personalization.head_store import (
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

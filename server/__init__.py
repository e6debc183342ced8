"""Flower server side of fedmtl: the ServerApp and its strategy (wiring only)."""

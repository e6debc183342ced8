"""Flower client side of fedmtl: the ClientApp (message in, fedmtl training, message out)."""

"""The configs shipped with fedmtl (``*.toml`` here and in ``studies/``), installed as
``fedmtl.configs``: ``fedmtl run quickstart`` reads ``quickstart.toml`` from here when the
working folder has no such file (:mod:`fedmtl.shipped`)."""

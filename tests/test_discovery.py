"""Client discovery: the advice for a too-small federation, and following reconnected nodes."""

from __future__ import annotations

import pytest

from fedmtl.server.discovery import ClientDirectory, FederationMismatch


def test_a_federation_smaller_than_num_clients_fails_naming_the_fix():
    directory = ClientDirectory(expected=3)
    directory.infos[11] = (0, 2)  # node 11 serves client 0 of a 2-partition federation
    with pytest.raises(FederationMismatch, match=r"--federation-config 'num-supernodes=3'"):
        directory.check(11)
    directory.infos[12] = (1, 3)
    directory.check(12)  # big enough: no error

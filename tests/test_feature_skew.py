"""Feature skew: per-client rotation and noise."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.data import load_federation
from fedmtl.data.feature_skew import rotate
from fedmtl.validation import load_config


def _fed(kind: str, strength: float, clients: int = 3):
    cfg = load_config(None, [f"data.num-clients={clients}", "data.params.pairs-per-digit=1",
                             f"data.feature-skew={kind}", f"data.feature-skew-strength={strength}"])
    plain = load_config(None, [f"data.num-clients={clients}", "data.params.pairs-per-digit=1"])
    return load_federation(cfg.data, 0), load_federation(plain.data, 0)


def test_rotation_by_90_degrees_is_rot90():
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, 0.0), x)


def test_rotation_grows_from_the_first_to_the_last_client():
    skewed, plain = _fed("rotation", 90.0)
    torch.testing.assert_close(skewed.client(0).train.x, plain.client(0).train.x)
    last = plain.client(2).train.x
    torch.testing.assert_close(skewed.client(2).train.x, torch.rot90(last, k=1, dims=(2, 3)), atol=1e-4, rtol=0)
    assert torch.equal(skewed.client(2).train.targets["left"], plain.client(2).train.targets["left"])


def test_noise_std_follows_the_client_level_and_is_fixed():
    skewed, plain = _fed("noise", 0.8)
    for client, expected in [(0, 0.0), (1, 0.4), (2, 0.8)]:
        diff = skewed.client(client).test.x - plain.client(client).test.x
        assert float(diff.std()) == pytest.approx(expected, abs=0.02)
    again, _ = _fed("noise", 0.8)
    torch.testing.assert_close(again.client(1).train.x, skewed.client(1).train.x)


def test_rotation_of_vectors_is_a_config_error():
    with pytest.raises(ConfigError, match="feature-skew = 'rotation' needs image inputs"):
        load_config(None, ["data.dataset=synthetic", "model.backbone=mlp", "data.feature-skew=rotation"])

"""Random streams: one helper module (fedmtl/seeds.py), NumPy's SeedSequence, same numbers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.seeds import LEGACY_TORCH_MIX, Stream, rng, seed_sequence, torch_generator, torch_seed

ROOT = Path(__file__).resolve().parents[1]
KEY = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=50, deadline=None)
@given(st.lists(KEY, min_size=1, max_size=4), st.sampled_from(list(Stream)))
def test_rng_is_numpys_seed_sequence_of_the_keys(keys, stream):
    """``rng(*keys, salt)`` draws what ``default_rng([*keys, salt])`` drew before the module."""
    expected = np.random.default_rng([*keys, int(stream)]).random(5)
    np.testing.assert_array_equal(rng(*keys, stream).random(5), expected)
    assert seed_sequence(*keys, stream).entropy == np.random.SeedSequence([*keys, int(stream)]).entropy


def test_a_bare_seed_matches_default_rng_of_an_int():
    """Partitioners drew from ``default_rng(seed)``; ``rng(seed)`` is the same stream."""
    for seed in (0, 1, 12345):
        np.testing.assert_array_equal(rng(seed).permutation(50), np.random.default_rng(seed).permutation(50))


def test_salts_are_distinct_and_separate_streams():
    assert len({int(s) for s in Stream}) == len(Stream)
    draws = {s: tuple(rng(0, 3, s).integers(0, 2**31, 4)) for s in Stream}
    assert len(set(draws.values())) == len(Stream)


def _old_batch_seed(*parts: int) -> int:
    """The mini-batch order seed as fedmtl/training/setup.py computed it before fedmtl/seeds.py."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) % (2**63)
    return seed


@settings(max_examples=50, deadline=None)
@given(KEY, KEY, KEY)
def test_legacy_torch_streams_keep_their_seeds(seed, round_, client):
    assert torch_seed(Stream.BATCHES, seed, round_, client) == _old_batch_seed(seed, round_, client)
    assert torch_seed(Stream.BATCHES, seed, round_) == _old_batch_seed(seed, round_)
    assert torch_seed(Stream.HEAD_INIT, seed, client) == (seed * 1_000_003 + client * 7_919 + 12_345) % 2**63
    assert torch_seed(Stream.FEATURE_SKEW, seed, client) == seed * 1_000_003 + client * 31 + 17
    assert torch_seed(Stream.MODEL_INIT, seed) == seed


def test_new_torch_streams_come_from_the_seed_sequence():
    new = [s for s in Stream if s not in LEGACY_TORCH_MIX]
    for stream in new:
        value = torch_seed(stream, 7, 2)
        assert 0 <= value < 2**63
        expected = int(np.random.SeedSequence([7, 2, int(stream)]).generate_state(1, np.uint64)[0]) >> 1
        assert value == expected
    a, b = torch_generator(Stream.BATCHES, 1, 2, 3), torch_generator(Stream.BATCHES, 1, 2, 3)
    assert torch.equal(torch.randperm(20, generator=a), torch.randperm(20, generator=b))


@pytest.mark.parametrize(
    "pattern", [r"default_rng\(", r"SeedSequence\(", r"\.manual_seed\((?!self\.params\.seed|torch_seed\()"]
)
def test_seeds_are_derived_only_in_fedmtl_seeds(pattern):
    """No module outside fedmtl/seeds.py derives a seed (a weighting's own ``seed`` parameter
    seeds its generator directly: that is a user's value, not a derivation)."""
    offenders = []
    for folder in ("fedmtl", "server", "clients"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "seeds.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                own = line.rstrip().endswith("# a weighting's own generator: its seed parameter")
                if re.search(pattern, line) and not line.lstrip().startswith("#") and not own:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)

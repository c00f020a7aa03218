"""Search space and sub-network configuration: validation, round trips, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig, evenly_spaced_keep


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.for_model(6, 12, 1536)


def test_default_choices_are_quarters(space: SearchSpace) -> None:
    assert space.head_choices == (3, 6, 9, 12)
    assert space.ffn_choices == (384, 768, 1152, 1536)
    assert space.retention_choices[0] == 1.0 and min(space.retention_choices) == pytest.approx(0.3)


def test_round_trips(space: SearchSpace) -> None:
    cfg = space.sample(np.random.default_rng(1))
    assert SubnetConfig.from_dict(cfg.to_dict()) == cfg
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert SubnetConfig.from_dict(cfg.to_dict()).key() == cfg.key()


def test_key_is_stable_and_distinguishes(space: SearchSpace) -> None:
    # A fixed value: the hash must not depend on the process (no Python hash randomisation).
    assert space.largest().key() == SubnetConfig((12,) * 6, (1536,) * 6, (True,) * 6, (1.0,) * 6).key()
    assert len(space.largest().key()) == 12
    assert space.largest().key() != space.smallest().key()
    assert SubnetConfig([12] * 6, [1536] * 6, [True] * 6, [1] * 6) == space.largest()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"heads": (12, 5, 12, 12, 12, 12)}, "heads[1]"),
        ({"ffn": (1536, 1536, 100, 1536, 1536, 1536)}, "ffn[2]"),
        ({"retention": (1.0, 0.5, 0.7, 0.7, 0.7, 0.7)}, "retention[2]"),
        ({"retention": (1.0, 1.0, 1.0, 1.0, 1.0, 0.33)}, "retention[5]"),
        ({"keep": (True, False, False, False, False, False)}, "keep"),
    ],
)
def test_invalid_configurations_name_the_field(space: SearchSpace, change: dict, field: str) -> None:
    bad = SubnetConfig(**{**space.largest().to_dict(), **change})
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        space.validate(bad)


def test_skipped_layer_cannot_drop_tokens(space: SearchSpace) -> None:
    cfg = SubnetConfig((12,) * 6, (1536,) * 6, (True, False, True, True, True, True), (1.0, 0.5, 0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"retention\[1\].*skipped"):
        space.validate(cfg)


def test_drops_follow_the_retention_already_applied() -> None:
    # Skipped layers drop nothing; a retention that does not go down drops nothing.
    cfg = SubnetConfig((4,) * 5, (64,) * 5, (True, False, True, True, True), (0.5, 0.5, 0.5, 0.25, 0.25))
    assert cfg.drops == {0: 0.5, 3: 0.25}
    assert SubnetConfig.full((4, 2), (64, 32)) == SubnetConfig((4, 2), (64, 32), (True, True), (1.0, 1.0))
    assert SubnetConfig.full((4, 2), (64, 32)).drops == {}


def test_malformed_dicts_are_rejected() -> None:
    with pytest.raises(ConfigError, match="missing"):
        SubnetConfig.from_dict({"heads": [1]})
    with pytest.raises(ConfigError, match="one entry per encoder layer"):
        SubnetConfig((1, 2), (3, 4), (True,), (1.0, 1.0))
    with pytest.raises(ConfigError, match="integers"):
        SubnetConfig((1.5,), (3,), (True,), (1.0,))
    with pytest.raises(ConfigError, match="unknown"):
        SearchSpace.from_dict({"num_layers": 2, "bogus": 1})
    with pytest.raises(ConfigError, match="include the maximum"):
        SearchSpace(num_layers=2, max_heads=4, max_ffn=8, head_choices=(1, 2), ffn_choices=(8,))


def test_sampling_is_valid_and_seeded(space: SearchSpace) -> None:
    a = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    b = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        x, y = space.sample(rng), space.sample(rng)
        for cfg in (x, y, space.mutate(x, rng), space.crossover(x, y, rng)):
            space.validate(cfg)
            seen.add(cfg.key())
    assert len(seen) > 500  # the space is explored, not collapsed onto a few points
    assert any(space.sample(rng).has_retention for _ in range(20))
    assert not any(space.sample(rng, retention=False).has_retention for _ in range(20))


def test_special_members(space: SearchSpace) -> None:
    small = space.validate(space.smallest())
    assert sum(small.keep) == space.min_layers and small.keep[-1]
    assert small.heads[-1] == 3 and min(small.retention) == pytest.approx(0.3)
    u = space.uniform(width=0.5, depth=0.5, retention=1.0)
    assert sum(u.keep) == 3 and set(u.heads) == {0, 6} and not u.has_retention
    assert space.uniform() == space.largest()


def test_evenly_spaced_keep() -> None:
    assert evenly_spaced_keep(6, 3) == (False, True, False, True, False, True)
    assert evenly_spaced_keep(4, 4) == (True,) * 4
    assert sum(evenly_spaced_keep(12, 5)) == 5


def test_grown_neighbours_are_one_step_larger_in_one_choice() -> None:
    space = SearchSpace(num_layers=4, max_heads=4, max_ffn=16, head_choices=(1, 2, 3, 4), ffn_choices=(4, 8, 12, 16),
                        retention_choices=(1.0, 0.7, 0.5))
    # Layer 1 skipped; drops to 0.7 at layer 2 and to 0.5 at layer 3; layer 2 already at the widest.
    cfg = SubnetConfig((2, 0, 4, 1), (8, 0, 16, 4), (True, False, True, True), (1.0, 1.0, 0.7, 0.5))
    got = [g.describe() for g in space.grown(cfg)]
    assert got == [
        "L3 h3/4/1 f8/16/4 r1/0.7/0.5", "L3 h2/4/1 f12/16/4 r1/0.7/0.5",  # layer 0's heads, then its FFN
        "L3 h2/4/2 f8/16/4 r1/0.7/0.5", "L3 h2/4/1 f8/16/8 r1/0.7/0.5",  # layer 3 (layer 2 is at the widest)
        "L4 h2/2/4/1 f8/8/16/4 r1/1/0.7/0.5",  # layer 1 kept again with layer 0's widths, no new drop
        "L3 h2/4/1 f8/16/4 r1/1/0.5",  # the drop at layer 2 raised to 1: gone, layer 3 still drops to 0.5
        "L3 h2/4/1 f8/16/4 r1/0.7/0.7"]  # the drop at layer 3 raised to 0.7
    grown = space.grown(cfg)
    assert all(space.contains(g) for g in grown) and len({g.key() for g in grown}) == len(grown)
    assert space.grown(space.largest()) == []
    # A skipped first layer takes the widths of the kept layer after it; the precision is kept.
    first = SubnetConfig((0, 3, 3, 3), (0, 12, 12, 12), (False, True, True, True), (1.0,) * 4, "int8")
    int8 = space.with_precisions(["fp32", "int8"])
    assert SubnetConfig((3, 3, 3, 3), (12,) * 4, (True,) * 4, (1.0,) * 4, "int8") in int8.grown(first)
    assert {g.precision for g in int8.grown(first)} == {"int8"}
    with pytest.raises(ConfigError, match="precision"):
        space.grown(first)  # not in an fp32-only space


def test_validate_returns_the_one_spelling_of_a_configuration(space: SearchSpace) -> None:
    """Heads and FFN given for a skipped layer, or a retention spelled 0.8000000000000002 in a
    JSON file, change nothing the network computes: validate returns the configuration with
    the key of its canonical spelling, and mutating it stays in the space."""
    canon = SubnetConfig((12, 0, 6, 6, 3, 3), (1536, 0, 768, 768, 384, 384), (True, False, True, True, True, True),
                         (1.0, 1.0, 0.7, 0.7, 0.5, 0.5))
    assert space.validate(canon) is canon  # already canonical: the same object back
    odd = SubnetConfig((12, 9, 6, 6, 3, 3), (1536, -5, 768, 768, 384, 384), canon.keep,
                       (1.0, 1.0, 0.7000000000000001, 0.7, 0.5, 0.5))
    assert odd.key() != canon.key()
    assert space.validate(odd) == canon and space.validate(odd).key() == canon.key()
    rng = np.random.default_rng(0)
    for _ in range(50):
        space.validate(space.mutate(space.validate(odd), rng))

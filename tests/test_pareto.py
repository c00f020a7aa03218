"""Pareto fronts and hypervolume on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nas.pareto import (
    compare_fronts,
    crowding_distance,
    hypervolume,
    non_dominated_rank,
    normalized_hypervolume,
    pareto_front,
    pareto_mask,
)


def test_one_dominated_point_of_four() -> None:
    # (0.7, 3.0) is beaten by (0.8, 2.0): less accurate and slower.
    acc = np.array([0.9, 0.8, 0.7, 0.6])
    lat = np.array([4.0, 2.0, 3.0, 1.0])
    assert pareto_mask(acc, lat).tolist() == [True, True, False, True]


def test_weak_domination_removes_equal_latency_or_equal_accuracy() -> None:
    # Same latency, less accurate; same accuracy, slower: both dominated.
    acc = np.array([0.8, 0.7, 0.8])
    lat = np.array([2.0, 2.0, 3.0])
    assert pareto_mask(acc, lat).tolist() == [True, False, False]


def test_duplicates_are_kept_once_the_first() -> None:
    acc = np.array([0.8, 0.9, 0.8, 0.9])
    lat = np.array([1.0, 2.0, 1.0, 2.0])
    assert pareto_mask(acc, lat).tolist() == [True, True, False, False]


def test_nan_is_never_on_the_front() -> None:
    acc = np.array([np.nan, 0.5, 0.9])
    lat = np.array([0.1, 1.0, np.nan])
    assert pareto_mask(acc, lat).tolist() == [False, True, False]


def test_empty_input() -> None:
    empty = np.array([])
    assert pareto_mask(empty, empty).tolist() == []
    assert hypervolume(empty, empty, 0.5, 3.0) == 0.0
    assert non_dominated_rank(empty, empty).tolist() == []
    front = pareto_front(pd.DataFrame({"acc_dev": [], "lat_ms": []}))
    assert front.empty
    assert compare_fronts({}).empty


def test_pareto_front_sorts_by_latency_and_keeps_the_index() -> None:
    frame = pd.DataFrame({"acc_dev": [0.9, 0.7, 0.8, 0.6], "lat_ms": [4.0, 3.0, 2.0, 1.0]},
                         index=["a", "b", "c", "d"])
    front = pareto_front(frame)
    assert front.index.tolist() == ["d", "c", "a"]
    with pytest.raises(KeyError, match="lat_pred_ms"):
        pareto_front(frame, lat_col="lat_pred_ms")


def test_hypervolume_by_hand() -> None:
    # (0.8, 1) owns latency 1..2 at height 0.3, (0.9, 2) owns 2..3 at height 0.4: 0.3 + 0.4.
    acc, lat = np.array([0.9, 0.8]), np.array([2.0, 1.0])
    assert hypervolume(acc, lat, ref_acc=0.5, ref_lat=3.0) == pytest.approx(0.7)
    # A dominated point and a duplicate add nothing.
    acc2, lat2 = np.append(acc, [0.7, 0.9]), np.append(lat, [2.5, 2.0])
    assert hypervolume(acc2, lat2, 0.5, 3.0) == pytest.approx(0.7)


def test_points_outside_the_reference_box_contribute_nothing() -> None:
    acc, lat = np.array([0.9, 0.8]), np.array([2.0, 1.0])
    # Slower than ref_lat, less accurate than ref_acc, or on the box's edge: no area.
    out_acc, out_lat = np.array([0.99, 0.4, 0.5]), np.array([3.5, 0.1, 0.5])
    assert hypervolume(np.append(acc, out_acc), np.append(lat, out_lat), 0.5, 3.0) == pytest.approx(0.7)
    assert hypervolume(out_acc, out_lat, 0.5, 3.0) == 0.0
    # A box that cuts a point's rectangle: only the part inside counts.
    assert hypervolume(np.array([0.9]), np.array([2.0]), 0.5, 2.5) == pytest.approx(0.4 * 0.5)


def test_normalized_hypervolume_is_a_fraction_of_the_box() -> None:
    acc, lat = np.array([0.9, 0.8]), np.array([2.0, 1.0])
    # Latency / 3: area 0.7 / 3 in a box of (1.0 - 0.5) x 1.
    assert normalized_hypervolume(acc, lat, 0.5, 3.0) == pytest.approx(0.7 / 3 / 0.5)
    # The same front on a device twice as slow scores the same.
    assert normalized_hypervolume(acc, 2 * lat, 0.5, 6.0) == pytest.approx(normalized_hypervolume(acc, lat, 0.5, 3.0))
    assert normalized_hypervolume(np.array([1.0]), np.array([0.0]), 0.5, 3.0) == pytest.approx(1.0)


def test_hypervolume_matches_optuna_wfg_on_random_points() -> None:
    wfg = pytest.importorskip("optuna._hypervolume").compute_hypervolume
    rng = np.random.default_rng(0)
    for _ in range(20):
        acc, lat = rng.uniform(0.5, 1.0, 30), rng.uniform(1.0, 10.0, 30)
        ref_acc, ref_lat = 0.6, 8.0
        inside = (acc > ref_acc) & (lat < ref_lat)
        losses = np.stack([-acc[inside], lat[inside]], axis=1)
        expected = wfg(losses, np.array([-ref_acc, ref_lat]))
        assert hypervolume(acc, lat, ref_acc, ref_lat) == pytest.approx(expected)


def test_non_dominated_rank_and_crowding() -> None:
    acc = np.array([0.9, 0.8, 0.7, 0.6, 0.8])
    lat = np.array([4.0, 2.0, 3.0, 1.0, 2.0])
    # Front: 0.9@4, 0.8@2 (twice: duplicates share a rank), 0.6@1; then 0.7@3.
    assert non_dominated_rank(acc, lat).tolist() == [0, 0, 1, 0, 0]
    d = crowding_distance(np.array([0.6, 0.8, 0.9]), np.array([1.0, 2.0, 4.0]))
    assert np.isinf(d[0]) and np.isinf(d[2])
    assert d[1] == pytest.approx((0.9 - 0.6) / 0.3 + (4.0 - 1.0) / 3.0)


def test_compare_fronts_uses_a_common_reference() -> None:
    a = pd.DataFrame({"acc_dev": [0.9, 0.8, 0.7], "lat_ms": [2.0, 1.0, 1.5]})  # (0.7, 1.5) dominated
    b = pd.DataFrame({"acc_dev": [0.85, 0.6], "lat_ms": [1.0, 0.5]})
    table = compare_fronts({"a": a, "b": b}).set_index("front")
    # Reference: the worst front accuracy 0.6 (from b), the worst latency 2.0 (from a).
    assert table.loc["a", "ref_acc"] == 0.6 and table.loc["a", "ref_lat"] == 2.0
    assert table.loc["a", "n_points"] == 2 and table.loc["b", "n_points"] == 2
    # a: (0.8, 1) owns 1..2 at height 0.2; (0.9, 2) sits on the latency edge.
    assert table.loc["a", "hypervolume"] == pytest.approx(0.2)
    # b: (0.6, 0.5) sits on the accuracy edge; (0.85, 1) owns 1..2 at height 0.25.
    assert table.loc["b", "hypervolume"] == pytest.approx(0.25)
    assert table.loc["a", "best_acc"] == 0.9 and table.loc["b", "fastest_lat"] == 0.5


def test_compare_fronts_scales_latency_per_device() -> None:
    fast = pd.DataFrame({"acc_dev": [0.9, 0.8], "lat_ms": [2.0, 1.0]})
    slow = pd.DataFrame({"acc_dev": [0.9, 0.8], "lat_ms": [20.0, 10.0]})
    table = compare_fronts({"cpu": slow, "gpu": fast}, lat_scale={"cpu": 30.0, "gpu": 3.0},
                           ref_acc=0.5, ref_lat=1.0)
    assert table["hypervolume"].iloc[0] == pytest.approx(table["hypervolume"].iloc[1])
    assert table["hypervolume"].iloc[0] == pytest.approx(0.7 / 3)
    with pytest.raises(KeyError, match="lat_scale"):
        compare_fronts({"cpu": slow}, lat_scale={"gpu": 3.0})


def test_compare_fronts_scales_latency_per_row() -> None:
    # The full model timed along with each point (it drifted from 30 to 33 ms): per-row scales.
    slow = pd.DataFrame({"acc_dev": [0.9, 0.8], "lat_ms": [22.0, 10.0], "full_ms": [33.0, 30.0]})
    fast = pd.DataFrame({"acc_dev": [0.9, 0.8], "lat_ms": [2.0, 1.0], "full_ms": [3.0, 3.0]})
    table = compare_fronts({"cpu": slow, "gpu": fast}, lat_scale="full_ms", ref_acc=0.5, ref_lat=1.0)
    assert table["hypervolume"].tolist() == pytest.approx([0.7 / 3, 0.7 / 3])
    assert table["fastest_lat"].tolist() == pytest.approx([1 / 3, 1 / 3])
    with pytest.raises(KeyError, match="lat_scale"):
        compare_fronts({"cpu": slow.drop(columns="full_ms")}, lat_scale="full_ms")


def test_compare_fronts_empty_front() -> None:
    a = pd.DataFrame({"acc_dev": [0.9], "lat_ms": [1.0]})
    e = pd.DataFrame({"acc_dev": [], "lat_ms": []})
    table = compare_fronts({"a": a, "none": e}, ref_acc=0.5, ref_lat=2.0).set_index("front")
    assert table.loc["none", "n_points"] == 0 and table.loc["none", "hypervolume"] == 0.0
    assert np.isnan(table.loc["none", "best_acc"])
    assert table.loc["a", "hypervolume"] == pytest.approx(0.4)

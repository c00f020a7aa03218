"""Early exit as a searched dimension (nas/exit_search.py): the per-layer cost from a device's
predictor on the sub-network's prefixes, the choice under a budget, the fronts, and the command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_script, tiny_model
from latency.early_exit import (
    LengthSpread,
    estimate_latency,
    extend_segments,
    predicted_segment_ms,
    prefix,
    runner_extra_ms,
    spread_table,
    with_extra,
)
from nas.exit_search import (
    STATIC,
    candidate_key,
    candidate_table,
    choose,
    choose_anchored,
    exit_fronts,
    finalist_archs,
    scale_arch,
    verify_choice,
    with_own_costs,
)
from nas.export import ImpossibleBudget
from supernet.data import Encoded
from supernet.exits import ExitHeads, exit_layers, predict_exits
from supernet.space import SubnetConfig

# 4 layers, the second skipped, tokens dropped three times.
SUBNET = SubnetConfig((4, 0, 4, 3), (64, 0, 64, 48), (True, False, True, True), (0.8, 0.8, 0.6, 0.5))


class FakeLatency:
    """A device whose latency is 1 ms (embeddings) + 0.5 ms per head + 0.01 ms per neuron of
    each kept layer; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[SubnetConfig] = []

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        self.asked += configs
        out = []
        for c in configs:
            ms = 1.0 + sum(0.5 * c.heads[i] + 0.01 * c.ffn[i] for i in c.kept_layers)
            out.append((ms, 1.2 * ms))
        return out


def test_prefixes_are_the_layers_an_early_input_runs() -> None:
    space = tiny_model(layers=4).shape.search_space(min_layers=1)
    p1, p2, p3 = (prefix(SUBNET, k) for k in (1, 2, 3))
    assert p1.kept_layers == [0] and p2.kept_layers == [0, 2] and p3 == SUBNET
    for p in (p1, p2, p3):
        space.validate(p)  # a skipped tail carries the last retention: no drop is invented
    assert p1.drops == {0: 0.8} and p2.drops == {0: 0.8, 2: 0.6}
    with pytest.raises(ValueError, match="1..3"):
        prefix(SUBNET, 4)


def test_latency_estimate_from_prefix_predictions_on_a_fake_cost_table() -> None:
    lat = FakeLatency()
    head = 0.25
    seg = predicted_segment_ms(lat, SUBNET, head)
    # Prefix costs: 1 + 2.64 = 3.64; + 2.64 = 6.28; + 1.98 = 8.26; each later exit adds a head.
    np.testing.assert_allclose(np.cumsum(seg), [3.64, 6.28 + head, 8.26 + 2 * head])
    assert [c.kept_layers for c in lat.asked] == [[0], [0, 2], [0, 2, 3]]
    # Inputs leaving at exits 1, 1, 2, 3: costs 3.64, 3.64, 6.53, 8.76.
    est = estimate_latency(seg, np.array([0, 0, 1, 2]))
    assert est["mean_ms"] == pytest.approx((3.64 * 2 + 6.53 + 8.76) / 4)
    assert est["p50_ms"] == pytest.approx((3.64 + 6.53) / 2)
    # Never exiting costs the whole sub-network and every head but the last (its final classifier).
    assert estimate_latency(seg, np.array([2]))["p50_ms"] == pytest.approx(lat.predict([SUBNET])[0][0] + 2 * head)


def test_a_predictor_that_calls_a_longer_prefix_cheaper_is_held_level() -> None:
    class Dipping:
        def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
            return [(float(x), float(x)) for x in (3.0, 2.0, 4.0)[: len(configs)]]

    seg = predicted_segment_ms(Dipping(), SUBNET, 0.0)
    np.testing.assert_allclose(np.cumsum(seg), [3.0, 3.0, 4.0])
    assert (seg >= 0).all()


def test_length_spread_by_hand() -> None:
    # A reference whose cost of leaving at exit k is k * (0.5 + 0.05 * length) ms: inputs of
    # 10 tokens cost 1.0 ms per layer, inputs of 40 tokens 2.5 ms.
    lengths = [10, 10, 10, 40, 40]
    times = np.array([[0.5 + 0.05 * n] * 3 for n in lengths])
    spread = LengthSpread.fit(times, lengths, "p50")
    np.testing.assert_allclose(spread.intercept, [0.5, 1.0, 1.5], atol=1e-9)
    np.testing.assert_allclose(spread.slope, [0.05, 0.10, 0.15], atol=1e-9)
    factors = spread.factors(lengths, 3)
    np.testing.assert_allclose(np.median(factors, axis=0), 1.0)  # the statistic of the table is kept
    np.testing.assert_allclose(factors[:, 0], [1, 1, 1, 2.5, 2.5])
    # A predicted table of 2 ms per layer (cumulative 2 / 4 / 6) made per input: the short
    # inputs keep it, the long ones cost 2.5 times as much.
    table = spread_table(np.array([2.0, 2.0, 2.0]), spread, lengths)
    np.testing.assert_allclose(np.cumsum(table, axis=1)[[0, 3]], [[2, 4, 6], [5, 10, 15]])
    # The short inputs leave at exit 1, the long ones run all three layers: 2, 2, 2, 15, 15 ms;
    # as one table for everyone, 2, 2, 2, 6, 6.
    layers = np.array([0, 0, 0, 2, 2])
    est = estimate_latency(table, layers)
    assert est["mean_ms"] == pytest.approx(7.2) and est["p90_ms"] == pytest.approx(15.0)
    assert estimate_latency(np.array([2.0, 2.0, 2.0]), layers)["mean_ms"] == pytest.approx(3.6)
    # A deeper sub-network than the reference uses the reference's last line for its extra exits.
    assert spread.factors([40], 5)[0, 4] == pytest.approx(2.5)
    # Fitted on the p90 instead, the long inputs set the scale.
    assert LengthSpread.fit(times, lengths, "p90").factors([40], 1)[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        LengthSpread.fit(times[:1], lengths[:1])


def test_timed_segments_extended_to_the_whole_split_by_the_runners_line() -> None:
    # A runner timed on 4 inputs (lengths 10, 20, 30, 40): leaving at exit k costs
    # k * (0.2 + 0.01 * length) ms, plus noise on the timed ones that the line averages out.
    lengths = [10, 20, 30, 40, 50, 5, 25]
    timed = np.array([[0.2 + 0.01 * n] * 2 for n in lengths[:4]])
    timed[0] += [0.01, -0.01]
    got = extend_segments(timed, lengths)
    assert got.shape == (7, 2)
    np.testing.assert_array_equal(got[:4], timed)  # the timed inputs keep their own times
    line = LengthSpread.fit(timed, lengths[:4])
    for i, n in enumerate(lengths[4:], start=4):  # the others: the line in their length
        np.testing.assert_allclose(np.cumsum(got[i]), line.intercept + line.slope * n)
    assert np.cumsum(got[4])[-1] == pytest.approx(2 * (0.2 + 0.01 * 50), rel=0.02)
    assert (np.cumsum(got, axis=1) > 0).all()
    np.testing.assert_array_equal(extend_segments(timed, lengths[:4]), timed)  # nothing to extend
    with pytest.raises(ValueError, match="at least the 4 timed"):
        extend_segments(timed, lengths[:3])


def test_a_spread_that_does_not_depend_on_length_changes_no_estimate() -> None:
    lengths = [5, 9, 14, 30]
    flat = LengthSpread.fit(np.array([[1.0, 1.0]] * 4), lengths, "mean")
    assert (flat.slope == 0).all()
    seg = np.array([1.5, 0.7, 0.9])
    per_input = spread_table(seg, flat, lengths)
    np.testing.assert_allclose(per_input, np.tile(seg, (4, 1)))
    layers = np.array([0, 2, 1, 1])
    assert estimate_latency(per_input, layers) == pytest.approx(estimate_latency(seg, layers))


def test_the_runners_extra_cost_by_hand() -> None:
    # Predicted prefixes 2 / 4 / 6 ms, the whole sub-network as one graph predicted at 6 ms.
    # Round 1 ran at the predicted speed (graph 6 ms) and measured the runner at 3 / 5.5 / 8;
    # round 2 ran twice as slow (graph 12 ms) and measured 6 / 11 / 16: the same extra cost,
    # 1 / 1.5 / 2 ms, once the drift is divided out; a third round is noisier.
    measured = np.array([[3.0, 5.5, 8.0], [6.0, 11.0, 16.0], [3.3, 5.7, 8.6]])
    extra = runner_extra_ms(measured, np.array([6.0, 12.0, 6.0]), 6.0, np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(extra, [1.0, 1.5, 2.0])  # the median round
    # With each prefix timed as one graph: the predictor called the deepest prefix 6 ms where it
    # measured 4.8 in every round (its own error on that prefix, 0.8x, not drift) and was right
    # about the others; only the last exit's figure is divided by its own 0.8.
    prefixes = np.array([[2.0, 4.0, 4.8], [4.0, 8.0, 9.6], [2.0, 4.0, 4.8]])
    extra = runner_extra_ms(measured, prefixes, np.array([2.0, 4.0, 6.0]), np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(extra, [1.0, 1.5, 4.0])
    # The whole graph's 0.8 applied to every exit instead would have called every exit dearer.
    np.testing.assert_allclose(runner_extra_ms(measured, prefixes[:, -1], 6.0, np.array([2.0, 4.0, 6.0])),
                               [1.75, 2.875, 4.0])
    extra = runner_extra_ms(measured, np.array([6.0, 12.0, 6.0]), 6.0, np.array([2.0, 4.0, 6.0]))
    # Added to another sub-network's table (cumulative 1 / 2 / 3 / 4: one exit deeper than the
    # reference, which takes the reference's last extra) ...
    seg = with_extra(np.array([1.0, 1.0, 1.0, 1.0]), extra)
    np.testing.assert_allclose(np.cumsum(seg), [2.0, 3.5, 5.0, 6.0])
    # ... and a negative extra never makes a cost fall below zero or with depth.
    np.testing.assert_allclose(np.cumsum(with_extra(np.array([1.0, 1.0]), np.array([-3.0, -0.5]))), [0.0, 1.5])


def _data(n: int, seed: int) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [[2, *rng.integers(5, 120, size=int(k)).tolist()] for k in rng.integers(3, 14, size=n)]
    return Encoded(ids, [[0] * len(x) for x in ids], np.array([int(7 in x) for x in ids], dtype=np.int64))


def _tiny_candidates() -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Three sub-networks of a tiny model with confident random heads, every policy scored,
    the latency from FakeLatency's prefixes."""
    model = tiny_model(layers=4)
    torch.manual_seed(1)
    heads = ExitHeads.for_model(model, "mean").eval()
    with torch.no_grad():
        for p in heads.parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0)
    splits = {"dev": _data(60, 0), "test": _data(40, 1)}
    labels = {s: e.labels for s, e in splits.items()}
    space = model.shape.search_space(min_layers=2)
    lat = FakeLatency()
    parts, logits_of, segs = [], {}, {}
    for cfg in (space.largest(), SUBNET, space.smallest()):
        logits = {s: predict_exits(model, heads, e, cfg) for s, e in splits.items()}
        logits_of[cfg.key()] = logits
        seg = segs[cfg.key()] = predicted_segment_ms(lat, cfg, 0.25)
        parts.append(candidate_table(cfg, logits, labels, seg, lat.predict([cfg])[0][0]))
    return pd.concat(parts, ignore_index=True), logits_of, segs


def test_the_search_picks_the_most_accurate_candidate_under_the_budget() -> None:
    table, logits_of, segs = _tiny_candidates()
    assert set(table.criterion) == {STATIC, "entropy", "patience"}
    # The static row answers with the final classifier on every input, at the predictor's figure.
    for key, logits in logits_of.items():
        row = table[(table.arch_key == key) & (table.criterion == STATIC)].iloc[0]
        final = logits["dev"][-1].argmax(-1)
        assert row.accuracy_dev == pytest.approx(100 * float((final == _data(60, 0).labels).mean()))
    lo, hi = table.lat_ms.min(), table.lat_ms.max()
    for budget in np.linspace(lo, hi, 7):
        got = choose(table, float(budget))
        ok = table[table.lat_ms <= budget]
        assert got.lat_ms <= budget
        assert got.accuracy_dev == ok.accuracy_dev.max()
        assert got.lat_ms == ok[ok.accuracy_dev == ok.accuracy_dev.max()].lat_ms.min()
        # Its estimate is what its policy's exits on dev cost.
        if got.criterion != STATIC:
            layers = exit_layers(logits_of[got.arch_key]["dev"], got.criterion, float(got.threshold))
            assert got.layers_dev == pytest.approx(float(layers.mean() + 1))
            assert got.lat_ms == pytest.approx(estimate_latency(segs[got.arch_key], layers)["p50_ms"])
    with pytest.raises(ImpossibleBudget, match="larger --budget-ms"):
        choose(table, float(lo) * 0.99)


def test_choice_by_hand_and_the_fronts() -> None:
    table = pd.DataFrame({
        "arch_key": ["a", "a", "b", "b", "c"],
        "criterion": [STATIC, "entropy", STATIC, "entropy", STATIC],
        "threshold": [np.nan, 0.5, np.nan, 0.9, np.nan],
        "accuracy_dev": [80.0, 79.0, 70.0, 79.0, 60.0],
        "accuracy_test": [79.0, 78.0, 71.0, 77.0, 61.0],
        "lat_ms": [10.0, 4.0, 5.0, 3.0, 1.0],
    })
    assert choose(table, 10).arch_key == "a" and choose(table, 10).criterion == STATIC
    pick = choose(table, 4.5)  # 79 at 4 ms and 79 at 3 ms: the faster
    assert (pick.arch_key, pick.criterion, pick.lat_ms) == ("b", "entropy", 3.0)
    assert choose(table, 2).arch_key == "c"
    fronts = exit_fronts(table)
    static = fronts[fronts.front == "static"]
    both = fronts[fronts.front == "static+exit"]
    assert list(static.lat_ms) == [1.0, 5.0, 10.0]
    assert list(both.lat_ms) == [1.0, 3.0, 10.0]


def _by_hand_table() -> pd.DataFrame:
    return pd.DataFrame({
        "arch_key": ["a", "a", "b", "b", "c"],
        "criterion": [STATIC, "entropy", STATIC, "entropy", STATIC],
        "threshold": [np.nan, 0.5, np.nan, 0.9, np.nan],
        "accuracy_dev": [80.0, 79.0, 70.0, 79.0, 60.0],
        "lat_ms": [10.0, 4.0, 5.0, 3.0, 1.0],
    })


def test_a_choice_that_misses_the_budget_when_measured_steps_down() -> None:
    table = _by_hand_table()
    measured: list[str] = []

    def device(slower: float):
        def measure(row: pd.Series) -> float:
            measured.append(f"{row.arch_key}/{row.criterion}")
            return float(row.lat_ms) * slower
        return measure

    # As estimated: the choice is measured once and kept.
    row, steps = verify_choice(table, 4.5, device(1.0))
    assert (row.arch_key, row.criterion) == ("b", "entropy") and len(steps) == 1 and steps[0]["meets_budget"]
    # Twice as slow as estimated: b's exits measure 6 ms; scaled by 2, only c still fits (2 ms).
    measured.clear()
    row, steps = verify_choice(table, 4.5, device(2.0))
    assert measured == ["b/entropy", "c/static"]
    assert (row.arch_key, row.lat_ms) == ("c", 1.0)  # the row as estimated, not scaled
    assert [st["measured_ms"] for st in steps] == [6.0, 2.0] and [st["scale"] for st in steps] == [1.0, 2.0]
    assert [st["meets_budget"] for st in steps] == [False, True] and steps[0]["threshold"] == 0.9
    # Ten times as slow: after the first miss nothing would fit; the error gives what was measured.
    with pytest.raises(ImpossibleBudget, match="measured 30 ms"):
        verify_choice(table, 4.5, device(10.0))
    # At most max_steps candidates are measured.
    measured.clear()
    with pytest.raises(ImpossibleBudget, match="none of the 1 candidates"):
        verify_choice(table, 4.5, device(2.0), max_steps=1)
    assert measured == ["b/entropy"]
    # Nothing estimated to fit: nothing is measured.
    measured.clear()
    with pytest.raises(ImpossibleBudget, match="larger --budget-ms"):
        verify_choice(table, 0.5, device(1.0))
    assert measured == []


def _anchor_table() -> pd.DataFrame:
    return pd.DataFrame({
        "arch_key": ["big", "big", "big", "small", "small"],
        "criterion": [STATIC, "entropy", "entropy", STATIC, "entropy"],
        "threshold": [np.nan, 0.3, 0.6, np.nan, 0.5],
        "accuracy_dev": [85.0, 84.0, 82.0, 80.0, 83.0],
        "lat_ms": [10.0, 6.0, 3.0, 2.0, 1.5],
    })


def test_the_largest_is_handed_over_unless_beaten_beyond_dev_noise() -> None:
    table = _anchor_table()
    calls: list[tuple[str, str]] = []

    def dev(low: float):  # best minus anchor on dev, with a given lower bound of its interval
        def difference(anchor: pd.Series, best: pd.Series) -> dict[str, float]:
            calls.append((candidate_key(anchor), candidate_key(best)))
            return {"diff_points": best.accuracy_dev - anchor.accuracy_dev, "ci95_low": low, "ci95_high": 3.0}
        return difference

    # Under 4 ms the most accurate on dev is small's exit (83); big's best that fits is its 0.6 (82).
    row, d = choose_anchored(table, 4.0, "big", dev(-0.5))  # the 1 point is within dev's noise
    assert candidate_key(row) == "big/entropy/0.6" and calls == [("big/entropy/0.6", "small/entropy/0.5")]
    assert d is not None and d["best_dev"] == "small/entropy/0.5" and d["anchor"] == "big/entropy/0.6"
    assert not d["anchor_beaten"] and d["best_minus_anchor_dev"]["diff_points"] == 1.0
    row, d = choose_anchored(table, 4.0, "big", dev(0.2))  # beyond the noise: the best on dev
    assert candidate_key(row) == "small/entropy/0.5" and d is not None and d["anchor_beaten"]
    assert choose(table, 4.0).name == row.name
    calls.clear()
    # The best on dev is the largest's own (7 ms): nothing to compare.
    row, d = choose_anchored(table, 7.0, "big", dev(0.2))
    assert candidate_key(row) == "big/entropy/0.3" and d is None and calls == []
    # Nothing of the largest fits 2.5 ms: the best on dev, nothing compared.
    row, d = choose_anchored(table, 2.5, "big", dev(-0.5))
    assert candidate_key(row) == "small/entropy/0.5" and d is None and calls == []
    with pytest.raises(ImpossibleBudget):
        choose_anchored(table, 1.0, "big", dev(-0.5))
    # The same rule through a step down: big's 0.6 measures twice its estimate (6 ms), so every
    # estimate doubles; big has nothing left under 4 ms, and small's exit (3 ms scaled) is next.
    measured: list[str] = []

    def measure(row: pd.Series) -> float:
        measured.append(candidate_key(row))
        return float(row.lat_ms) * 2

    row, steps = verify_choice(table, 4.0, measure, pick=lambda t: choose_anchored(t, 4.0, "big", dev(-0.5))[0])
    assert measured == ["big/entropy/0.6", "small/entropy/0.5"] and candidate_key(row) == "small/entropy/0.5"
    assert [st["meets_budget"] for st in steps] == [False, True]


def test_finalists_are_estimated_again_from_their_own_runner() -> None:
    table = _by_hand_table()
    # Exit candidates within 1.5x of 2.5 ms (3.75): b's (3.0) only; within 2x (5 ms): a's and b's,
    # equally accurate (79), in the table's order; k caps them.
    assert finalist_archs(table, 2.5) == ["b"]
    assert finalist_archs(table, 2.5, slack=2.0) == ["a", "b"]
    assert finalist_archs(table, 2.5, slack=2.0, k=1) == ["a"]
    assert finalist_archs(table, 0.1) == []
    # b's runner on 4 dev inputs: 1 ms per segment for inputs 0-1, 3 ms for 2-3 (two exits).
    segs = np.array([[1.0, 1.0], [1.0, 1.0], [3.0, 3.0], [3.0, 3.0]])
    confident = np.array([[0.99, 0.01]] * 6)  # normalized entropy about 0.08
    unsure = np.array([[0.5, 0.5]] * 6)  # 1.0: never below a threshold
    logits = np.log(np.stack([np.concatenate([confident[:1], unsure[:1], confident[:1], unsure[:1], confident[:2]]),
                              confident]))  # (exits 2, N 6, C 2); inputs 4-5 were not timed
    got = with_own_costs(table, "b", segs, logits, "mean")
    # entropy 0.9: inputs 0 and 2 leave at exit 1 (1 and 3 ms), 1 and 3 run both (2 and 6): mean 3.
    b = got[(got.arch_key == "b") & (got.criterion == "entropy")].iloc[0]
    assert b.lat_ms == pytest.approx(3.0) and b.lat_from == "own runner" and b.lat_ms_table == 3.0
    assert with_own_costs(table, "b", segs, logits, "p50")[lambda t: t.criterion == "entropy"].lat_ms.iloc[1] == \
        pytest.approx(2.5)
    # With every dev input's length, the untimed inputs 4-5 (both leave at exit 1) join the
    # statistic at the runner's line in their length: segments 1 ms for 10 tokens, 3 ms for 30.
    lengths = [10, 10, 30, 30, 20, 20]
    whole = with_own_costs(table, "b", segs, logits, "mean", lengths)
    row = whole[(whole.arch_key == "b") & (whole.criterion == "entropy")].iloc[0]
    assert row.lat_ms == pytest.approx((1 + 2 + 3 + 6 + 2 + 2) / 6)
    # Other rows keep the table's estimate; static rows stay the predictor's.
    assert got.loc[got.arch_key == "a", "lat_ms"].tolist() == [10.0, 4.0]
    assert got.lat_from.tolist() == ["predictor", "table", "predictor", "own runner", "predictor"]
    assert table.lat_ms.tolist() == [10.0, 4.0, 5.0, 3.0, 1.0]  # not changed in place
    # Serving one of b's policies measured 0.9 of its estimate: all of b's exit rows follow.
    scaled = scale_arch(got, "b", 0.9)
    assert scaled.lat_ms.tolist() == pytest.approx([10.0, 4.0, 5.0, 2.7, 1.0])
    assert scaled.lat_from.tolist() == ["predictor", "table", "predictor", "own runner, served", "predictor"]


def test_command_searches_exports_and_reports(job, tmp_path, capsys) -> None:
    import dataclasses
    import json
    import shutil

    from nas.cli import main

    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("run.lock"))
    out = tmp_path / "ees"
    base = ["early-exit", "--run", str(run), "--out", str(out)]
    # Bad combinations: one line each, status 2, nothing written.
    for extra, said in ((["--budget-ms", "5"], "--device"), (["--budget-ms", "5", "--device", "cpu", "--subnet", "x.json"],
                        "--device is for the search"), (["--device", "cpu"], "(or --speedup) too"),
                        (["--budget-ms", "5", "--device", "cpu", "--threads", "1"], "--threads"),
                        (["--speedup", "2"], "--device"), (["--speedup", "1", "--device", "cpu"], "> 1"),
                        (["--speedup", "2", "--budget-ms", "5", "--device", "cpu"], "not allowed with"),
                        (["--subnet", "largest", "--speedup", "2", "--choose", "largest-unless-beaten"],
                         "--choose is for the search")):
        assert main([*base, *extra]) == 2
        assert said in capsys.readouterr().err
    assert not out.exists()
    assert main(["exits", "--run", str(run), "--epochs", "0.5", "--quiet"]) == 0
    small = ["--n-cost", "8", "--n-time", "12", "--rounds", "1", "--candidates", "2", "--quiet"]
    assert main([*base, "--budget-ms", "0.0001", "--device", "cpu", *small]) == 2
    assert "larger --budget-ms" in capsys.readouterr().err
    assert not out.exists()  # no half-made search: not even the largest's timing scaffolding
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    assert main([*base, "--budget-ms", "0.0001", "--device", "cpu", *small]) == 2
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # a folder it did not make: only its own files go
    capsys.readouterr()
    assert main([*base, "--budget-ms", "1000", "--device", "cpu", *small, "--n-stock", "6",
                 "--choose", "largest-unless-beaten"]) == 0
    table = pd.read_csv(out / "candidates.csv")
    report = json.loads((out / "report.json").read_text())
    s = report["search"]
    # Timed beside the teacher's stock deployments, on the same test inputs in turn.
    b = s["beside_stock"]
    assert b["test_inputs"] == 6 and set(b["deployments"]) == {"stock-fp32", "stock-ort", "stock-int8", "ours-full",
                                                              "ours"}
    lat = {k: v["p50_ms"] for k, v in b["deployments"].items()}
    assert min(lat.values()) > 0 and b["fastest_stock_fp32"] in ("stock-fp32", "stock-ort")
    assert lat[b["fastest_stock_fp32"]] == min(lat["stock-fp32"], lat["stock-ort"])
    assert b["speedup_p50_vs_fastest_stock_fp32"] == pytest.approx(lat[b["fastest_stock_fp32"]] / lat["ours"])
    assert b["speedup_p50_vs_stock_int8"] == pytest.approx(lat["stock-int8"] / lat["ours"])
    vs = b["ours_minus_teacher_test"]
    assert vs["n"] > b["test_inputs"]  # the whole test split, not only the inputs timed
    assert vs["ci95_low"] <= vs["diff_points"] <= vs["ci95_high"]
    assert b["deployments"]["ours"]["score_test"] == pytest.approx(s["chosen"]["accuracy_test"])
    # Everything fits 1000 ms: the largest's most accurate candidate, unless the most accurate
    # on dev beats it there beyond the noise (--choose largest-unless-beaten).
    choice, keys = s["choice"], table.apply(candidate_key, axis=1)
    largest_best = table[table.arch == s["reference"]["arch"]].accuracy_dev.max()
    assert choice["rule"] == "largest-unless-beaten"
    if "anchor" in choice:
        best, anchor = (table[keys == choice[k]].iloc[0] for k in ("best_dev", "anchor"))
        assert best.accuracy_dev == table.accuracy_dev.max() and anchor.accuracy_dev == largest_best
        d = choice["best_minus_anchor_dev"]
        assert d["diff_points"] == pytest.approx(best.accuracy_dev - anchor.accuracy_dev)
        assert choice["anchor_beaten"] == (d["ci95_low"] > 0)
        assert s["chosen"]["accuracy_dev"] == (best if choice["anchor_beaten"] else anchor).accuracy_dev
        assert choice["best_minus_anchor_test"]["diff_points"] == pytest.approx(best.accuracy_test - anchor.accuracy_test)
    else:
        assert s["chosen"]["accuracy_dev"] == table.accuracy_dev.max() == largest_best
    assert s["chosen"]["predicted_p50_ms"] <= 1000 and s["chosen"]["measured_p50_ms_test"] > 0
    assert len(s["steps"]) == 1 and s["steps"][0]["meets_budget"]  # measured, no step down at 1000 ms
    assert s["steps"][0]["measured_ms"] == s["chosen"]["measured_p50_ms_test"]
    assert len(s["per_layer_cost"]["predicted_cumulative_ms"]) == len(s["per_layer_cost"]["measured_cumulative_ms"])
    # The estimate was made per input, with the runner's extra cost, from the largest
    # sub-network's runner timed on dev.
    ref = s["reference"]
    n_exits = len(ref["extra_ms"])
    assert len(ref["length_spread"]["ms_per_token"]) == len(ref["measured_cumulative_ms"]) == n_exits > 0
    assert min(ref["length_spread"]["ms_per_token"]) >= 0 and len(ref["drift"]) == 1
    assert s["chosen"]["predicted_p50_ms_prefixes_only"] > 0
    # The largest first (the reference is its runner), then up to 3 others.
    assert 1 <= len(s["finalists"]) <= 4 and s["finalists"][0]["dev_inputs_timed"] == 8
    assert s["finalists"][0]["arch"] == s["reference"]["arch"] and len({f["arch"] for f in s["finalists"]}) == len(
        s["finalists"])
    assert s["chosen"]["predicted_from"] in ("own runner", "own runner, served", "table", "predictor")
    assert set(table.lat_from) <= {"own runner", "own runner, served", "table", "predictor"}
    assert table.lat_from.str.startswith("own runner").any()
    for f in s["finalists"]:  # each served at its best policy within the budget, if it had one
        if f["served_at_policy"] is not None:
            v = f["served_at_policy"]
            # The median of served / estimated over rounds, each pair timed in turn.
            assert v["served_ms"] > 0 and len(v["ratios"]) == v["rounds"] and "segments" not in v
            assert v["ratio"] == pytest.approx(float(np.median(v["ratios"])), abs=1e-4)
    c = s["chosen"]
    if c["predicted_from"].startswith("own runner"):  # the device's speed then and now, on the same runner
        assert c["device_speed_change"] > 0 and c["measured_over_predicted_same_speed"] == pytest.approx(
            c["measured_over_predicted"] / c["device_speed_change"])
    else:
        assert c["device_speed_change"] is None and c["measured_over_predicted_same_speed"] is None
    if c["criterion"] == "static":
        assert c["predicted_p50_ms_ci95_dev_sample"] is None
    else:  # the estimate's own interval over resampled dev inputs holds the estimate
        lo, hi = c["predicted_p50_ms_ci95_dev_sample"]
        assert lo <= c["predicted_p50_ms"] <= hi
        assert c["measured_within_dev_sample_interval"] == (lo <= c["measured_p50_ms_test"] <= hi)
        assert c["predicted_p50_ms_own_runner"] == report["early_exit"]["predicted_from_dev"]["p50_ms"]
        assert c["measured_over_own_runner_prediction"] == pytest.approx(
            c["measured_p50_ms_test"] / c["predicted_p50_ms_own_runner"])
    if s["best_static_under_budget"] is not None:
        d = s["best_static_under_budget"]["chosen_minus_this_test"]
        assert d["diff_points"] == pytest.approx(c["accuracy_test"] - s["best_static_under_budget"]["accuracy_test"])
        assert d["ci95_low"] <= d["diff_points"] <= d["ci95_high"]
    assert report["test_difference"]["diff_points"] == pytest.approx(-report["test_loss_points"], abs=1e-9)
    assert (out / "reference" / "runner" / "manifest.json").is_file()
    # Batch 1: segments or the one graph with If nodes, whichever served dev faster; the
    # runner's manifest follows the pick.
    pick, manifest = report["runtime_batch1"], json.loads((out / "runner" / "manifest.json").read_text())
    if report["policy"]["criterion"] == "entropy":
        assert pick["chosen"] in ("segments", "one_graph") and pick["stat"] == "p50"
        assert pick[f"{pick['chosen']}_ms"] == min(pick["segments_ms"], pick["one_graph_ms"])
        assert ("one_graph" in manifest) == (pick["chosen"] == "one_graph")
    else:
        assert pick is None
    assert abs(sum(report["early_exit"]["test_exit_histogram"]) - 1) < 1e-6
    fronts = pd.read_csv(out / "front.csv")
    assert set(fronts.front) == {"static", "static+exit"}
    for name in ("front.png", "exit_histogram.png", "runner/manifest.json", "runner/exit_runner.py"):
        assert (out / name).is_file()
    # Exit logits are cached beside the heads: one file per sub-network, shared by later searches.
    cache = run / "exits" / "mean" / "logits"
    cached = {f: f.stat().st_mtime_ns for f in cache.glob("*.npz")}
    assert len(cached) == table.arch_key.nunique() and not (out / "logits").exists()
    # The budget as a speed-up over the largest sub-network timed with the reference. Timings
    # of this tiny model are below a millisecond and noisy: the reference's figure for the
    # largest is scaled (1e-6x, then 100x) so that the budget surely does not fit, then surely does.
    from nas.exit_search import ExitSearch

    timed = ExitSearch.reference

    def scaled(factor: float):
        def reference(self, *args):
            ref = timed(self, *args)
            return dataclasses.replace(ref, full_ms=ref.full_ms * factor)
        return reference

    out2 = tmp_path / "ees_speedup"
    speedup = [*small, "--finalists", "0", "--n-stock", "0"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ExitSearch, "reference", scaled(1e-6))
        assert main(["early-exit", "--run", str(run), "--out", str(out2), "--speedup", "1.01", "--device", "cpu",
                     *speedup]) == 2
        err = capsys.readouterr().err
        assert "smaller --speedup" in err and "as one graph" in err and "/ 1.01" in err
        assert not (out2 / "report.json").exists()
        mp.setattr(ExitSearch, "reference", scaled(100))
        assert main(["early-exit", "--run", str(run), "--out", str(out2), "--speedup", "1.01", "--device", "cpu",
                     *speedup]) == 0
    s2 = json.loads((out2 / "report.json").read_text())["search"]
    assert s2["budget_speedup"] == 1.01 and s2["full_model_ms_dev"] > 0
    assert s2["budget_ms"] == pytest.approx(s2["full_model_ms_dev"] / 1.01)
    assert s2["chosen"]["predicted_p50_ms"] <= s2["budget_ms"] and s2["beside_stock"] is None
    assert s2["choice"] == {"rule": "best-dev", "note": "the most accurate candidate on dev under the budget"}
    under = pd.read_csv(out2 / "candidates.csv")[lambda t: t.lat_ms <= s2["budget_ms"]]
    assert s2["chosen"]["accuracy_dev"] == under.accuracy_dev.max()  # the default, --choose best-dev
    assert {f: f.stat().st_mtime_ns for f in cache.glob("*.npz")} == cached  # read, not scored again
    assert s["budget_speedup"] is None and s["full_model_ms_dev"] > 0
    # The benchmark page of such folders (scripts/early_exit_page.py), inside BENCHMARKS.md.
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "early_exit_page.py"
    res = tmp_path / "results"
    done = run_script(script, out, "--task", "tiny", "--out", res)
    assert done.returncode == 0, done.stderr
    page = (res / "bench_tiny_early_exit.md").read_text()
    assert page.startswith("# Benchmarks: tiny early exit") and s["chosen"]["arch"] in page
    assert f"ms); {b['speedup_p50_vs_stock_int8']:.2f}x; " in page  # the row beside the stock deployments
    assert "## Benchmarks: tiny early exit" in (res / "BENCHMARKS.md").read_text()
    assert (res / "bench_tiny_early_exit_ees_front.png").is_file()
    bad = run_script(script, run, "--task", "tiny", "--out", tmp_path / "r2", new_interpreter=True)
    assert bad.returncode == 2 and "not the report" in bad.stderr and not (tmp_path / "r2").exists()
    # The largest with exits under a budget, no search (--subnet largest), on the page's second table
    # and in scripts/early_exit_table.py's CSV.
    one = tmp_path / "ee_largest"
    assert main(["early-exit", "--run", str(run), "--out", str(one), "--subnet", "largest", "--budget-ms", "1000",
                 "--n-cost", "8", "--n-time", "12", "--rounds", "1", "--n-stock", "6"]) == 0
    one_report = json.loads((one / "report.json").read_text())
    assert one_report["budget"] == {"ms": 1000, "stat": "p50"}
    from supernet.workflow import open_run

    assert one_report["subnet"] == open_run(run).space.largest().to_dict()
    done = run_script(script, out, "--task", "tiny", "--out", res, "--largest", one)
    assert done.returncode == 0, done.stderr
    page = (res / "bench_tiny_early_exit.md").read_text()
    policy = f"{one_report['policy']['criterion']} {one_report['policy']['threshold']:g}"
    assert "The largest sub-network with exits" in page and f"| {one} | " in page and f"| {policy} |" in page
    table = script.with_name("early_exit_table.py")
    csv = tmp_path / "one.csv"
    done = run_script(table, one, "--out", csv)
    assert done.returncode == 0, done.stderr
    got = pd.read_csv(csv).iloc[0]
    assert got.policy == policy and got.exit_test == pytest.approx(one_report["early_exit"]["accuracy_test"])
    # Each script started once as a user does (a new interpreter); its other calls in this process.
    for folder, said in ((out, "is an early-exit search"), (tmp_path, "has no report.json")):
        bad = run_script(table, folder, "--out", tmp_path / "bad.csv", new_interpreter=folder == out)
        assert bad.returncode == 2 and said in bad.stderr and not (tmp_path / "bad.csv").exists()
    # Both --choose rules over the search's candidates at other budgets (scripts/exit_choice_check.py).
    check = script.with_name("exit_choice_check.py")
    csv = tmp_path / "choice.csv"
    # Timings of this tiny model are noisy: budgets in ms that surely fit (1000) and surely do not.
    done = run_script(check, run, out, "--speedups", "1.5", "--budgets-ms", "1000,1e-9", "--out", csv)
    assert done.returncode == 0, done.stderr
    got, cands = pd.read_csv(csv), pd.read_csv(out / "candidates.csv")
    assert got.budget_ms.tolist()[1:] == [1000, 1e-9] and got.note.iloc[-1] == "no candidate estimated under the budget"
    assert got.speedup.iloc[0] == 1.5 and isinstance(got.anchored.iloc[1], str)  # everything fits 1000 ms
    for _, r in got.dropna(subset=["anchored"]).iterrows():
        under = cands[cands.lat_ms <= r.budget_ms]
        assert r.budget_ms == pytest.approx(s["full_model_ms_dev"] / r.speedup)
        assert r.best_dev_accuracy_dev == under.accuracy_dev.max()
        assert r.anchored == r.best_dev or r.anchored_arch == s["reference"]["arch"]
        assert r.test_anchored_minus_best == pytest.approx(r.anchored_accuracy_test - r.best_dev_accuracy_test)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.json").write_text("{not json")
    table_broken = tmp_path / "table_broken"
    shutil.copytree(out, table_broken)
    (table_broken / "candidates.csv").write_text("a,b\n1,2\n")
    for args, said in (([run, one], "not a search"), ([run, tmp_path], "has no report.json"),
                       ([run, broken], "not readable JSON"), ([run, table_broken], "not a candidate table"),
                       ([tmp_path / "nope", out], "is missing")):
        bad = run_script(check, *args, "--out", tmp_path / "bad.csv", new_interpreter=args[1] == one)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad.csv").exists()

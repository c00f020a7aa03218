"""The export's steps on fakes: a timer in milliseconds, a latency model and dev scores from
dictionaries. What is pinned: the budget (ms or speed-up) and the drift scale, the step-down
on a miss, the rescale when every finalist misses, the failure when nothing fits, the kit
branch (nothing measurable here), the fine-tuning pool's budget check and the step up when
the chosen sub-network leaves budget unused, the fine-tuned candidates' ranking, the last
timing before writing with its fall-backs, and a speed-up's budget judged as a speed-up in
every timing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from latency.measure import Measured
from nas.export import (
    Budget,
    ExportConfig,
    ImpossibleBudget,
    Verified,
    budget_now,
    confirm,
    finetune_pool,
    finetuned_order,
    measured_pool,
    measured_seeds,
    rank_finalists,
    resolve_budget,
    seed_candidates,
    step_up,
    verify_on_device,
)
from nas.search import Candidate, SearchResult
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

SPACE = SearchSpace(num_layers=4, max_heads=4, max_ffn=16, head_choices=(1, 2, 3, 4), ffn_choices=(4, 8, 12, 16))


def cfg(heads: int, layers: int = 4) -> SubnetConfig:
    """A uniform sub-network, named by its heads (and depth) in the tests below."""
    return SPACE.uniform(width=heads / 4, depth=layers / 4)


class FakeTimer:
    """Measured latency (ms) by configuration key (a list: one value per timing, in turn, the
    last repeated); the full model at ``full_ms``. Records every call, so a test can say what
    was timed."""

    def __init__(self, ms: dict[str, float | list[float]], full_ms: float = 10.0) -> None:
        self.ms, self.full_ms, self.calls = ms, full_ms, []
        self.seen: dict[str, int] = {}
        self.rounds: list[int] = []

    def measure(self, configs: Sequence[SubnetConfig], *, rounds: int = 3) -> Measured:
        self.calls.append([c.key() for c in configs])
        self.rounds.append(rounds)
        return Measured([self._next(c.key()) for c in configs], self.full_ms)

    def _next(self, key: str) -> float:
        got = self.ms[key]
        if not isinstance(got, list):
            return got
        i = self.seen.get(key, 0)
        self.seen[key] = i + 1
        return got[min(i, len(got) - 1)]


class FakeLatency:
    """Predictions by configuration key; the upper bound is 10% above."""

    def __init__(self, ms: dict[str, float], scale: float = 1.0) -> None:
        self.ms, self.scale = ms, scale

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        return [(self.ms[c.key()] * self.scale, 1.1 * self.ms[c.key()] * self.scale) for c in configs]


class DevScores:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def full_dev(self, c: SubnetConfig) -> float:
        return self.scores[c.key()]


def cand(c: SubnetConfig, acc: float, pred_ms: float, feasible: bool = True) -> Candidate:
    return Candidate(c, acc, pred_ms, 1.1 * pred_ms, feasible)


REFS = [SPACE.largest(), cfg(2), cfg(1, 2)]


def test_budget_in_ms_and_a_device_within_tolerance_keeps_predictions() -> None:
    timer = FakeTimer({cfg(2).key(): 5.2, cfg(1, 2).key(): 2.1}, full_ms=10.3)
    lat = FakeLatency({SPACE.largest().key(): 10.0, cfg(2).key(): 5.0, cfg(1, 2).key(): 2.0})
    b = resolve_budget(ExportConfig(budget_ms=4.0), lat, timer, REFS)  # type: ignore[arg-type]
    assert (b.ms, b.source, b.scale) == (4.0, None, 1.0)
    assert b.drift is not None and b.drift["ratio"] == pytest.approx(1.04)  # median of 1.03, 1.04, 1.05
    assert b.drift["scale_applied"] == 1.0 and b.drift["measured_ms"] == [10.3, 5.2, 2.1]
    assert timer.calls == [[cfg(2).key(), cfg(1, 2).key()]]  # the full model is the timer's own reference


def test_a_slow_device_scales_the_search_by_its_drift_and_no_check_times_nothing() -> None:
    timer = FakeTimer({cfg(2).key(): 10.0, cfg(1, 2).key(): 4.0}, full_ms=20.0)
    lat = FakeLatency({SPACE.largest().key(): 10.0, cfg(2).key(): 5.0, cfg(1, 2).key(): 2.0})
    b = resolve_budget(ExportConfig(budget_ms=4.0), lat, timer, REFS)  # type: ignore[arg-type]
    assert b.scale == pytest.approx(2.0) and b.drift is not None and b.drift["scale_applied"] == b.scale
    quiet = FakeTimer({})
    b = resolve_budget(ExportConfig(budget_ms=4.0, drift_tolerance=None), lat, quiet, REFS)  # type: ignore[arg-type]
    assert b == Budget(4.0, None, None, 1.0) and quiet.calls == []


def test_a_speedup_divides_the_full_model_timed_now() -> None:
    timer = FakeTimer({cfg(2).key(): 5.0, cfg(1, 2).key(): 2.0}, full_ms=12.0)
    lat = FakeLatency({SPACE.largest().key(): 10.0, cfg(2).key(): 5.0, cfg(1, 2).key(): 2.0})
    b = resolve_budget(ExportConfig(speedup=3.0, drift_tolerance=None), lat, timer, REFS)  # type: ignore[arg-type]
    assert b.ms == 4.0 and b.source == {"speedup": 3.0, "full_model_ms": 12.0}
    assert b.drift is None and b.scale == 1.0  # timed for the budget only
    # The budget's base is timed in at least 5 rounds (a budget in ms keeps the drift check's 3).
    assert timer.rounds == [5]
    resolve_budget(ExportConfig(budget_ms=4.0), lat, timer, REFS)  # type: ignore[arg-type]
    assert timer.rounds == [5, 3]
    with pytest.raises(ConfigError, match="not on this machine"):
        resolve_budget(ExportConfig(speedup=3.0), lat, None, REFS, device="pi4")  # type: ignore[arg-type]


def test_export_config_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="not both or neither"):
        ExportConfig()
    with pytest.raises(ConfigError, match="not both or neither"):
        ExportConfig(budget_ms=3.0, speedup=2.0)
    with pytest.raises(ConfigError, match="positive number of ms"):
        ExportConfig(budget_ms=float("nan"))
    with pytest.raises(ConfigError, match=">= 1"):
        ExportConfig(budget_ms=3.0, finalists=0)
    with pytest.raises(ConfigError, match="finetune_choose must be one of dev-score, dev-loss"):
        ExportConfig(budget_ms=3.0, finetune_choose="test-score")


def test_fine_tuned_candidates_rank_by_dev_score_or_by_dev_loss() -> None:
    # rt at 4x (runs/bench/rt, 2026-12-05): the search's pick scored 0.16 points more on dev,
    # the uniform 4-layer one a lower loss; ties go to the earlier candidate (the search's pick).
    rows = [{"dev_accuracy": 0.8227, "dev_loss": 0.5405},
            {"dev_accuracy": 0.8211, "dev_loss": 0.5388},
            {"dev_accuracy": 0.8227, "dev_loss": 0.6447},
            {"dev_accuracy": 0.8100, "dev_loss": 0.5388}]
    assert finetuned_order(rows) == finetuned_order(rows, "dev-score") == [0, 2, 1, 3]
    assert finetuned_order(rows, "dev-loss") == [1, 3, 0, 2]
    with pytest.raises(ConfigError, match="ranked by one of dev-score, dev-loss"):
        finetuned_order(rows, "loss")


def test_finalists_are_the_best_feasible_re_ranked_on_the_whole_dev_split() -> None:
    history = [cand(cfg(4), 0.9, 9.0, feasible=False), cand(cfg(3), 0.8, 3.0), cand(cfg(2), 0.7, 2.0),
               cand(cfg(1), 0.6, 1.0)]
    result = SearchResult(None, history, len(history), "evolution", 4.0)
    dev = DevScores({cfg(3).key(): 0.70, cfg(2).key(): 0.75, cfg(1).key(): 0.99})
    ranked = rank_finalists(result, dev, 2)  # cfg(1) is not among the search's best two
    assert [c.config for c in ranked] == [cfg(2), cfg(3)]


FINALISTS = [cand(cfg(3), 0.8, 3.0), cand(cfg(2), 0.7, 2.0)]
DEV = DevScores({cfg(h, d).key(): 0.5 + h / 10 + d / 100 for h in (1, 2, 3, 4) for d in (1, 2, 3, 4)})


def test_the_first_finalist_that_meets_the_budget_is_chosen() -> None:
    timer = FakeTimer({cfg(3).key(): 3.5, cfg(2).key(): 2.5})
    v = verify_on_device(FINALISTS, FINALISTS, 4.0, timer, DEV)
    assert v.chosen.config == cfg(3) and v.measured_ms == 3.5 and v.full_ms == 10.0 and v.measured
    assert [s["meets_budget"] for s in v.steps] == [True]


def test_a_finalist_that_misses_on_the_device_steps_down_to_the_next() -> None:
    timer = FakeTimer({cfg(3).key(): 4.4, cfg(2).key(): 3.1})
    v = verify_on_device(FINALISTS, FINALISTS, 4.0, timer, DEV)
    assert v.chosen.config == cfg(2) and v.measured_ms == 3.1
    assert [(s["arch"], s["meets_budget"]) for s in v.steps] == [(cfg(3).describe(), False), (cfg(2).describe(), True)]
    assert v.steps[0]["measured_ms"] == 4.4 and v.steps[0]["acc_dev"] == DEV.full_dev(cfg(3))


def test_when_every_finalist_misses_the_rest_is_rescaled_by_the_worst_miss() -> None:
    # Measured 2x the prediction: of the rest, only what is predicted at <= 2 ms can fit 4 ms.
    rest = [cand(cfg(1, 4), 0.65, 1.9), cand(cfg(2, 2), 0.66, 2.5), cand(cfg(1, 2), 0.55, 1.0)]
    timer = FakeTimer({cfg(3).key(): 6.0, cfg(2).key(): 4.1, cfg(1, 4).key(): 4.5, cfg(1, 2).key(): 2.0})
    v = verify_on_device(FINALISTS, FINALISTS + rest, 4.0, timer, DEV, finalists=5)
    assert timer.calls[1] == [cfg(1, 4).key(), cfg(1, 2).key()]  # cfg(2, 2) at 2.5 x 2 cannot fit
    assert v.chosen.config == cfg(1, 2) and v.measured_ms == 2.0
    assert [s["meets_budget"] for s in v.steps] == [False, False, False, True]


def test_the_rescaled_rest_is_ranked_on_the_whole_dev_split_like_the_finalists() -> None:
    # cfg(1, 4) leads on the search's subset, cfg(1, 2) on the whole dev split: both fit, the latter is tried first.
    rest = [cand(cfg(1, 4), 0.65, 1.9), cand(cfg(1, 2), 0.60, 1.0)]
    dev = DevScores({**DEV.scores, cfg(1, 4).key(): 0.60, cfg(1, 2).key(): 0.70})
    timer = FakeTimer({cfg(3).key(): 6.0, cfg(2).key(): 4.1, cfg(1, 4).key(): 3.0, cfg(1, 2).key(): 2.0})
    v = verify_on_device(FINALISTS, FINALISTS + rest, 4.0, timer, dev, finalists=5)
    assert timer.calls[1] == [cfg(1, 2).key(), cfg(1, 4).key()]
    assert v.chosen.config == cfg(1, 2) and [s["meets_budget"] for s in v.steps] == [False, False, True]


def test_nothing_that_fits_on_the_device_is_an_impossible_budget() -> None:
    timer = FakeTimer({cfg(3).key(): 6.0, cfg(2).key(): 4.1}, full_ms=9.0)
    with pytest.raises(ImpossibleBudget, match=r"none of the 2 finalists met 4 ms when re-measured on cpu "
                                                r"\(measured 6.00, 4.10 ms; the full model measured 9.00 ms\)"):
        verify_on_device(FINALISTS, FINALISTS, 4.0, timer, DEV, device="cpu")
    with pytest.raises(ImpossibleBudget, match="found no sub-network under 4 ms"):
        verify_on_device([], FINALISTS, 4.0, timer, DEV)


def test_a_device_not_on_this_machine_hands_over_the_best_by_prediction() -> None:
    v = verify_on_device(FINALISTS, FINALISTS, 4.0, None, DEV)
    assert v.chosen.config == cfg(3) and not v.measured
    assert len(v.steps) == 1 and v.steps[0]["meets_budget"] is None


def test_fine_tuning_candidates_that_miss_the_budget_are_left_out() -> None:
    chosen = Verified(FINALISTS[0], 3.5, 10.0, [])
    extra = [cand(cfg(2, 4), 0.7, 2.0), cand(cfg(4, 2), 0.7, 3.0)]
    timer = FakeTimer({cfg(2, 4).key(): 3.9, cfg(4, 2).key(): 4.2})
    pool = measured_pool(chosen, extra, 4.0, timer)
    assert [(c.config, ms) for c, ms in pool] == [(cfg(3), 3.5), (cfg(2, 4), 3.9)]
    unmeasured = measured_pool(Verified(FINALISTS[0], float("nan"), float("nan"), []), extra, 4.0, None)
    assert len(unmeasured) == 3  # a kit device: nothing measured, nothing left out


def test_a_fine_tuning_candidate_that_misses_gives_its_place_to_the_next_seed_that_meets() -> None:
    # As in the rt page's 4x export: the deepest seed timed just under the budget as a seed and over it
    # in the pool's timing; the next seeds in order: one layer shallower (misses too), then two (meets).
    chosen = Verified(FINALISTS[0], 3.5, 10.0, [])
    l4, l3, l2, wide2 = cand(cfg(1, 4), 0.7, 3.0), cand(cfg(1, 3), 0.7, 3.0), cand(cfg(1, 2), 0.7, 3.0), \
        cand(cfg(2, 2), 0.7, 2.0)
    timer = FakeTimer({l4.config.key(): 4.1, l3.config.key(): 4.3, l2.config.key(): 3.8, wide2.config.key(): 2.0,
                       cfg(3).key(): 3.0})
    log: list[dict] = []
    pool = measured_pool(chosen, [l4], 4.0, timer, backups=[l4, l3, l2, wide2], log=log)
    assert [(c.config, ms) for c, ms in pool] == [(cfg(3), 3.5), (l2.config, 3.8)]
    # The report's record of that timing: every one timed, which were backups and which went into the pool.
    assert [(r["arch"], r["measured_ms"], r["backup"], r["pooled"]) for r in log] == [
        (l4.config.describe(), 4.1, False, False), (l3.config.describe(), 4.3, True, False),
        (l2.config.describe(), 3.8, True, True), (wide2.config.describe(), 2.0, True, False)]
    # One timing call; the pick and the candidates already in the pool are not backups again.
    assert timer.calls == [[c.config.key() for c in (l4, l3, l2, wide2)]]
    both = measured_pool(chosen, [l4, l3], 4.0, FakeTimer(timer.ms), backups=[FINALISTS[0], l2, wide2])
    assert [c.config for c, _ in both] == [cfg(3), l2.config, wide2.config]  # each miss replaced, in order
    # A candidate that meets keeps its place; with no backup that meets, a miss is just left out.
    assert [c.config for c, _ in measured_pool(chosen, [l2], 4.0, FakeTimer(timer.ms), backups=[wide2])] == \
        [cfg(3), l2.config]
    assert [c.config for c, _ in measured_pool(chosen, [l4], 4.0, FakeTimer(timer.ms), backups=[l3])] == [cfg(3)]


def test_an_unused_budget_steps_up_to_a_more_accurate_sub_network_that_measures_under_it() -> None:
    chosen = cand(cfg(1), 0.70, 3.0)  # upper 3.3: measured 2.0 under a 4 ms budget (50% used)
    verified = Verified(chosen, 2.0, 10.0, [{"arch_key": cfg(1).key()}])
    wide, wider, widest = cand(cfg(2), 0.74, 4.5), cand(cfg(3), 0.76, 5.0), cand(cfg(4, 2), 0.80, 5.5)
    scales: list[float] = []

    def relaxed(scale: float) -> list[Candidate]:
        scales.append(scale)
        return [chosen, wide, wider, widest]

    timer = FakeTimer({cfg(2).key(): 3.6, cfg(3).key(): 4.2, cfg(4, 2).key(): 4.4})
    dev = DevScores({cfg(1).key(): 0.70, cfg(2).key(): 0.75, cfg(3).key(): 0.77, cfg(4, 2).key(): 0.79})
    got = step_up(verified, 4.0, relaxed, timer, dev, finalists=5)  # type: ignore[arg-type]
    assert scales == [pytest.approx(2.0 / 3.3)]  # the margin shrunk to what was measured
    # Most accurate on the whole dev split first; the two that miss 4 ms are passed over.
    assert timer.calls == [[cfg(4, 2).key(), cfg(3).key(), cfg(2).key()], [cfg(2).key()]]  # then timed again
    assert got.chosen is wide and got.measured_ms == 3.6
    assert [s.get("step") for s in got.steps[1:]] == ["up", "up", "up"]
    assert [s["meets_budget"] for s in got.steps[1:]] == [False, False, True]
    # The report's record of each search the step up ran (the pick itself is not a candidate).
    assert got.step_up_searches == ({"scale": pytest.approx(2.0 / 3.3), "candidates": 3, "better_on_dev": 3,
                                     "grown": 0, "searched": True, "stepped_up_to": cfg(2).describe()},)
    # A search that finds nothing more accurate on the whole dev split times nothing, and says so.
    worse = cand(cfg(4, 2), 0.72, 3.5)  # most accurate on the dev subset, not on the whole dev split
    idle = FakeTimer({})
    kept = step_up(verified, 4.0, lambda scale: [chosen, worse], idle, DevScores({cfg(1).key(): 0.70,  # type: ignore[arg-type]
                                                                                  cfg(4, 2).key(): 0.69}))
    assert kept.chosen is chosen and kept.steps == verified.steps and idle.calls == []
    assert kept.step_up_searches == ({"scale": pytest.approx(2.0 / 3.3), "candidates": 1, "better_on_dev": 0,
                                      "grown": 0, "searched": True, "stepped_up_to": None},)


def test_a_step_up_that_still_leaves_the_budget_unused_tries_again_from_its_own_measurement() -> None:
    chosen = cand(cfg(1), 0.70, 3.0)  # upper 3.3: measured 2.0 under a 5 ms budget (40% used)
    verified = Verified(chosen, 2.0, 10.0, [{"arch_key": cfg(1).key()}])
    mid = cand(cfg(2), 0.74, 3.0)  # upper 3.3 under the first try's scale: measured 3.0 (60%)
    big = cand(cfg(3), 0.78, 6.0)  # measured 4.7 (94%)
    scales: list[float] = []

    def relaxed(scale: float) -> list[Candidate]:
        scales.append(scale)
        return [chosen, mid] if len(scales) == 1 else [chosen, mid, big]

    timer = FakeTimer({cfg(2).key(): 3.0, cfg(3).key(): 4.7})
    dev = DevScores({cfg(1).key(): 0.70, cfg(2).key(): 0.75, cfg(3).key(): 0.79})
    got = step_up(verified, 5.0, relaxed, timer, dev, finalists=5)  # type: ignore[arg-type]
    # The second scale: the first (2.0 / 3.3) times mid's measured / its upper bound under it.
    assert scales == [pytest.approx(2.0 / 3.3), pytest.approx(2.0 / 3.3 * 3.0 / 3.3)]
    assert timer.calls == [[cfg(2).key()], [cfg(2).key()], [cfg(3).key()], [cfg(3).key()]]
    assert got.chosen is big and got.measured_ms == 4.7
    assert [s["scale"] for s in got.steps[1:]] == pytest.approx(scales)
    scales.clear()
    once = step_up(verified, 5.0, relaxed, FakeTimer({cfg(2).key(): 3.0}), dev, tries=1)  # type: ignore[arg-type]
    assert once.chosen is mid
    # At 99% of the budget a step up is passed over: the next timing could land over it.
    scales.clear()
    edge = step_up(verified, 5.0, relaxed, FakeTimer({cfg(2).key(): 3.0, cfg(3).key(): 4.95}), dev)  # type: ignore[arg-type]
    assert edge.chosen is mid and edge.steps[-1]["meets_budget"] and not edge.steps[-1]["taken"]


def test_a_try_whose_candidates_all_miss_searches_again_at_the_scale_they_measured_at() -> None:
    # As in the main job of 2026-12-06: a token-dropping pick measured at half its upper bound,
    # so wide sub-networks looked as if they fit and all measured well over the budget.
    chosen = cand(cfg(1), 0.70, 3.0)  # upper 3.3: measured 1.5 under a 4 ms budget (scale 1.5 / 3.3)
    verified = Verified(chosen, 1.5, 10.0, [{"arch_key": cfg(1).key()}])
    first = 1.5 / 3.3
    wide, wider = cand(cfg(3), 0.78, 3.6 / 1.1), cand(cfg(4), 0.80, 3.5 / 1.1)  # upper 3.6 and 3.5 under it
    mid = cand(cfg(2), 0.75, 3.0)
    scales: list[float] = []

    def relaxed(scale: float) -> list[Candidate]:
        scales.append(scale)
        return [chosen, wide, wider] if len(scales) == 1 else [chosen, mid]

    timer = FakeTimer({cfg(3).key(): 5.4, cfg(4).key(): 5.6, cfg(2).key(): 3.5})
    dev = DevScores({cfg(1).key(): 0.70, cfg(2).key(): 0.75, cfg(3).key(): 0.78, cfg(4).key(): 0.80})
    got = step_up(verified, 4.0, relaxed, timer, dev, finalists=5)  # type: ignore[arg-type]
    # The second search: under the median of 5.4 / 3.6 and 5.6 / 3.5 times the first scale.
    assert scales == [pytest.approx(first), pytest.approx(first * (5.4 / 3.6 + 5.6 / 3.5) / 2)]
    assert timer.calls == [[cfg(4).key(), cfg(3).key()], [cfg(2).key()], [cfg(2).key()]]
    assert got.chosen is mid and got.measured_ms == 3.5
    assert [(s["scale"], s["taken"]) for s in got.steps[1:]] == [
        (pytest.approx(first), False), (pytest.approx(first), False), (pytest.approx(scales[1]), True)]
    assert [(u["scale"], u["better_on_dev"], u["stepped_up_to"]) for u in got.step_up_searches] == [
        (pytest.approx(first), 2, None), (pytest.approx(scales[1]), 1, cfg(2).describe())]
    # One try only: the pick stays.
    scales.clear()
    assert step_up(verified, 4.0, relaxed, FakeTimer(timer.ms), dev, tries=1).chosen is chosen  # type: ignore[arg-type]
    assert len(scales) == 1
    # Candidates over the edge (3.8 ms) but under their bounds say the scale was not optimistic, and
    # a scale of 1 or more relaxes nothing: no second search either way.
    near = [cand(cfg(3), 0.78, 3.95 / 1.1), cand(cfg(4), 0.80, 3.98 / 1.1)]
    for ms, found in ((3.9, near), (15.0, [wide, wider])):
        searched: list[float] = []

        def again(scale: float, found: list[Candidate] = found, searched: list[float] = searched) -> list[Candidate]:
            searched.append(scale)
            return [chosen, *found]

        over = FakeTimer({cfg(3).key(): ms, cfg(4).key(): ms, cfg(2).key(): 3.5})
        assert step_up(verified, 4.0, again, over, dev, finalists=5).chosen is chosen  # type: ignore[arg-type]
        assert searched == [pytest.approx(first)]


def test_a_step_up_is_taken_only_if_a_second_longer_timing_of_it_fits_too() -> None:
    chosen = cand(cfg(1), 0.70, 3.0)  # measured 2.0 under a 4 ms budget
    verified = Verified(chosen, 2.0, 10.0, [{"arch_key": cfg(1).key()}])
    wider, wide = cand(cfg(3), 0.76, 5.0), cand(cfg(2), 0.74, 4.5)
    dev = DevScores({cfg(1).key(): 0.70, cfg(2).key(): 0.75, cfg(3).key(): 0.77})
    # The more accurate one timed lucky (3.7 ms), then 4.2 alone: passed over for the next.
    timer = FakeTimer({cfg(3).key(): [3.7, 4.2], cfg(2).key(): [3.3, 3.5]})
    got = step_up(verified, 4.0, lambda s: [chosen, wider, wide], timer, dev, tries=1)  # type: ignore[arg-type]
    assert timer.calls == [[cfg(3).key(), cfg(2).key()], [cfg(3).key()], [cfg(2).key()]]
    assert got.chosen is wide and got.measured_ms == 3.5  # the higher of its two timings
    assert [(s["recheck_ms"], s["taken"]) for s in got.steps[1:]] == [(4.2, False), (3.5, True)]
    # Neither holds on the second look: the old pick stays.
    timer = FakeTimer({cfg(3).key(): [3.7, 4.2], cfg(2).key(): [3.3, 3.9]})
    kept = step_up(verified, 4.0, lambda s: [chosen, wider, wide], timer, dev, tries=1)  # type: ignore[arg-type]
    assert kept.chosen is chosen and kept.measured_ms == 2.0 and not any(s["taken"] for s in kept.steps[1:])


def test_measured_sub_networks_that_met_the_budget_are_kept_as_fall_backs() -> None:
    timer = FakeTimer({cfg(3).key(): 3.5, cfg(2).key(): 2.5})
    v = verify_on_device(FINALISTS, FINALISTS, 4.0, timer, DEV)
    assert v.chosen.config == cfg(3) and [(c.config, ms) for c, ms in v.alternatives] == [(cfg(2), 2.5)]
    missed = verify_on_device(FINALISTS, FINALISTS, 3.0, FakeTimer({cfg(3).key(): 3.5, cfg(2).key(): 2.5}), DEV)
    assert missed.chosen.config == cfg(2) and missed.alternatives == ()  # cfg(3) missed: no fall-back
    # A step up keeps the less accurate step-ups that fit, the old pick and the old pick's own.
    low = cand(cfg(1), 0.70, 3.0)
    verified = Verified(low, 2.0, 10.0, [{"arch_key": cfg(1).key()}], ((cand(cfg(1, 2), 0.6, 1.0), 1.0),))
    wide, wider = cand(cfg(2), 0.74, 4.5), cand(cfg(3), 0.76, 5.0)
    dev = DevScores({cfg(1).key(): 0.70, cfg(1, 2).key(): 0.6, cfg(2).key(): 0.75, cfg(3).key(): 0.77})
    got = step_up(verified, 4.0, lambda s: [low, wide, wider], FakeTimer({cfg(2).key(): 3.1, cfg(3).key(): 3.6}),
                  dev, tries=1)  # type: ignore[arg-type]
    assert got.chosen is wider
    assert [(c.config, ms) for c, ms in got.alternatives] == [(cfg(2), 3.1), (cfg(1), 2.0), (cfg(1, 2), 1.0)]


def test_the_pick_is_timed_again_before_writing_and_falls_back_when_it_misses() -> None:
    big, mid, low = cand(cfg(3), 0.78, 4.0), cand(cfg(2), 0.74, 3.0), cand(cfg(1), 0.70, 2.0)
    options = [(big, 4.7), (mid, 3.0), (low, 2.0)]  # measured then, under a 5 ms budget
    dev = DevScores({cfg(3).key(): 0.78, cfg(2).key(): 0.74, cfg(1).key(): 0.70})
    same = confirm(options, 5.0, FakeTimer({cfg(3).key(): 4.8, cfg(2).key(): 3.1, cfg(1).key(): 2.1}, 9.0), dev)  # type: ignore[arg-type]
    assert (same.index, same.measured_ms, same.full_ms, same.met) == (0, 4.8, 9.0, True)
    assert [s["taken"] for s in same.steps] == [True, False, False]
    # The pick lands over the budget this time (a 13% swing): the next best that meets it is written.
    timer = FakeTimer({cfg(3).key(): 5.3, cfg(2).key(): 3.2, cfg(1).key(): 2.1}, 11.0)
    swung = confirm(options, 5.0, timer, dev, at_most=2, dev=[0.9, 0.8])  # type: ignore[arg-type]
    assert timer.calls == [[cfg(3).key(), cfg(2).key()]]  # only the first at_most are timed
    assert (swung.index, swung.measured_ms, swung.full_ms, swung.met) == (1, 3.2, 11.0, True)
    assert [(s["step"], s["meets_budget"], s["taken"]) for s in swung.steps] == [("confirm", False, False),
                                                                                ("confirm", True, True)]
    assert [s["measured_before_ms"] for s in swung.steps] == [4.7, 3.0]
    assert [s["acc_dev"] for s in swung.steps] == [0.9, 0.8]  # the fine-tuned scores when given
    # Nothing meets it now: the pick stands on its earlier timing, said so.
    slow = confirm(options, 5.0, FakeTimer({cfg(3).key(): 6.0, cfg(2).key(): 5.5, cfg(1).key(): 5.1}), dev)  # type: ignore[arg-type]
    assert (slow.index, slow.measured_ms, slow.met) == (0, 6.0, False)
    # Off the device, or measured nowhere: nothing is timed.
    off = confirm([(big, float("nan"))], 5.0, None, dev)  # type: ignore[arg-type]
    assert (off.index, off.met, off.steps) == (0, True, []) and off.measured_ms != off.measured_ms


def test_a_speedup_budget_moves_with_the_full_model_timed_beside_it_a_budget_in_ms_does_not() -> None:
    assert budget_now(1.5, 7.7, None) == 1.5  # a budget in ms
    assert budget_now(1.5, 7.5, 6.0) == pytest.approx(1.875)  # 4x of 6 ms set it; the full model now 7.5 ms
    assert budget_now(1.5, 4.5, 6.0) == pytest.approx(1.125)  # a faster machine tightens it just as much
    assert budget_now(1.5, float("nan"), 6.0) == 1.5  # nothing timed beside it
    assert Budget(1.5, {"speedup": 4.0, "full_model_ms": 6.0}, None, 1.0).relative_to == 6.0
    assert Budget(1.5, None, None, 1.0).relative_to is None


def test_a_speedup_pick_that_keeps_its_speedup_on_a_slower_machine_is_written() -> None:
    # rt at 4x on 2026-12-07: budget 1.576 ms from the full model at 6.303 ms; after the fine-tunings the
    # machine ran 1.22x slower (full model 7.704 ms), the better fine-tuned candidate timed 1.753 ms (4.39x)
    # and the 2-layer fall-back 1.430 ms. Judged in ms the fall-back was written, 2 points lower on test.
    better, fallback = cand(cfg(3, 3), 0.814, 1.29), cand(cfg(1, 2), 0.777, 1.04)
    options = [(better, 1.291), (fallback, 1.038)]
    dev = DevScores({cfg(3, 3).key(): 0.814, cfg(1, 2).key(): 0.777})
    slower = {cfg(3, 3).key(): 1.753, cfg(1, 2).key(): 1.430}
    in_ms = confirm(options, 1.576, FakeTimer(slower, 7.704), dev)  # type: ignore[arg-type]
    assert in_ms.index == 1
    kept = confirm(options, 1.576, FakeTimer(slower, 7.704), dev, relative_to=6.303)  # type: ignore[arg-type]
    assert (kept.index, kept.measured_ms, kept.full_ms, kept.met) == (0, 1.753, 7.704, True)
    limit = 1.576 * 7.704 / 6.303
    assert [(s["meets_budget"], s["budget_now_ms"]) for s in kept.steps] == [(True, pytest.approx(limit))] * 2
    # A pick that lost its speed-up still misses however the machine moved: 4x of 7.704 ms is 1.926 ms.
    lost = confirm(options, 1.576, FakeTimer({**slower, cfg(3, 3).key(): 2.0}, 7.704), dev,  # type: ignore[arg-type]
                   relative_to=6.303)
    assert (lost.index, lost.measured_ms) == (1, 1.430)
    # The same holds for the finalists' timing, the step up and the fine-tuning pool's.
    v = verify_on_device([better, fallback], [better, fallback], 1.576, FakeTimer(slower, 7.704), dev,
                         relative_to=6.303)
    assert v.chosen is better and [s["meets_budget"] for s in v.steps] == [True]
    assert v.steps[0]["budget_now_ms"] == pytest.approx(limit)
    assert verify_on_device([better, fallback], [better, fallback], 1.576, FakeTimer(slower, 7.704),
                            dev).chosen is fallback  # type: ignore[arg-type]
    pool = measured_pool(Verified(fallback, 1.038, 6.3, []), [better], 1.576, FakeTimer(slower, 7.704),
                         relative_to=6.303)
    assert [c.config for c, _ in pool] == [cfg(1, 2), cfg(3, 3)]
    assert [c.config for c, _ in measured_pool(Verified(fallback, 1.038, 6.3, []), [better], 1.576,
                                               FakeTimer(slower, 7.704))] == [cfg(1, 2)]
    # The step up: the machine 1.25x slower than when the 4 ms budget was set from a 10 ms full model, so
    # the most accurate candidate at 4.4 ms keeps the speed-up (edge 0.95 x 5 ms) and is taken.
    small, top = cand(cfg(1), 0.70, 3.0), cand(cfg(4, 2), 0.80, 5.5)
    up = step_up(Verified(small, 2.0, 10.0, [{"arch_key": cfg(1).key()}]), 4.0, lambda scale: [small, top],
                 FakeTimer({cfg(4, 2).key(): 4.4}, 12.5), DevScores({cfg(1).key(): 0.7, cfg(4, 2).key(): 0.8}),
                 relative_to=10.0)  # type: ignore[arg-type]
    assert up.chosen is top and up.steps[1]["budget_now_ms"] == pytest.approx(5.0)


def test_a_speedups_step_up_searches_under_the_scale_of_the_timing_the_budget_was_set_in() -> None:
    # The pick measured 2.5 ms (upper bound 3.3) while the full model took 12.5 ms, 1.25x its 10 ms when
    # the 4 ms budget was set: in that timing's ms the pick took 2.0, and the relaxed search, judged
    # against 4 ms, predicts under 2.0 / 3.3, not 2.5 / 3.3 (which would keep out what fits).
    small, top = cand(cfg(1), 0.70, 3.0), cand(cfg(4, 2), 0.80, 5.5)
    scales: list[float] = []

    def relaxed(scale: float) -> list[Candidate]:
        scales.append(scale)
        return [small, top]

    dev = DevScores({cfg(1).key(): 0.7, cfg(4, 2).key(): 0.8})
    step_up(Verified(small, 2.5, 12.5, [{"arch_key": cfg(1).key()}]), 4.0, relaxed,
            FakeTimer({cfg(4, 2).key(): 4.4}, 12.5), dev, relative_to=10.0)  # type: ignore[arg-type]
    assert scales[0] == pytest.approx(2.0 / 3.3)
    scales.clear()
    step_up(Verified(small, 2.5, 12.5, [{"arch_key": cfg(1).key()}]), 4.0, relaxed,
            FakeTimer({cfg(4, 2).key(): 4.4}, 12.5), dev)  # type: ignore[arg-type]  # a budget in ms stays put
    assert scales[0] == pytest.approx(2.5 / 3.3)
    # Measured at 3.5 ms, over its 3.3 bound in this timing's ms but 2.8 in the budget's: still relaxable.
    scales.clear()
    step_up(Verified(small, 3.5, 12.5, [{"arch_key": cfg(1).key()}]), 4.0, relaxed,
            FakeTimer({cfg(4, 2).key(): 4.4}, 12.5), dev, relative_to=10.0)  # type: ignore[arg-type]
    assert scales and scales[0] == pytest.approx(2.8 / 3.3)


def test_no_step_up_when_the_budget_is_used_or_nothing_is_more_accurate_or_off_the_device() -> None:
    chosen = cand(cfg(1), 0.70, 3.0)
    dev = DevScores({cfg(1).key(): 0.70, cfg(2).key(): 0.69})

    def relaxed(scale: float) -> list[Candidate]:
        return [cand(cfg(2), 0.72, 3.5)]  # better on the subset, worse on the whole dev split

    timer = FakeTimer({cfg(2).key(): 3.0})
    used = Verified(chosen, 3.7, 10.0, [])  # 92.5% of 4 ms
    assert step_up(used, 4.0, relaxed, timer, dev) is used  # type: ignore[arg-type]
    low = Verified(chosen, 2.0, 10.0, [])
    assert step_up(low, 4.0, relaxed, timer, dev).chosen is chosen  # type: ignore[arg-type]
    assert step_up(low, 4.0, relaxed, None, dev) is low  # type: ignore[arg-type]
    assert timer.calls == []  # nothing was worth timing
    # Measured at or over its upper bound (3.3) yet under 90% of a 4 ms budget: the margin kept
    # nothing out, so there is no relaxed search (under a scale > 1 it can find the budget impossible).
    searched: list[float] = []
    over = Verified(chosen, 3.4, 10.0, [])
    assert step_up(over, 4.0, lambda s: searched.append(s) or [], timer, dev) is over  # type: ignore[arg-type, func-returns-value]
    assert searched == [] and timer.calls == []
    with pytest.raises(ConfigError, match="step_up_below"):
        ExportConfig(budget_ms=1.0, step_up_below=1.5)


def test_against_teacher_uses_the_tasks_metric() -> None:
    """The export's ``vs_teacher``: the difference in the task's metric (macro F1 for r8 and
    20ng, where accuracy would hide a model that drops a rare class), McNemar for accuracy only."""
    import numpy as np

    from nas.export import against_teacher
    from supernet.evaluate import scores

    labels = np.array([0] * 40 + [1] * 40 + [2] * 8)
    teacher = np.eye(3)[labels]  # always right
    # The other model never predicts the rare class 2: accuracy loses 8 of 88, macro F1 a third.
    other = np.eye(3)[np.where(labels == 2, 0, labels)]
    f1 = against_teacher(teacher, {"ours": other}, labels, metric="macro_f1")["ours"]
    want = 100 * (scores(other, labels)["macro_f1"] - scores(teacher, labels)["macro_f1"])
    assert f1["metric"] == "macro_f1" and f1["diff_points"] == pytest.approx(want) and "mcnemar_p" not in f1
    assert f1["ci95_low"] <= f1["diff_points"] <= f1["ci95_high"] < 0
    acc = against_teacher(teacher, {"ours": other}, labels, metric="accuracy")["ours"]
    assert acc["metric"] == "accuracy" and acc["diff_points"] == pytest.approx(-100 * 8 / 88)
    assert 0 <= acc["mcnemar_p"] < 0.05 and acc["agreement"] == pytest.approx(80 / 88)


class DepthLatency:
    """Predictions of half a millisecond per layer and head; the upper bound 60% above (a wide
    margin, as a predictor sized for its worst errors has)."""

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        out = []
        for c in configs:
            ms = 0.5 * len(c.kept_layers) * c.heads[c.kept_layers[0]]
            out.append((ms, 1.6 * ms))
        return out


def test_measured_seeds_time_the_deep_narrow_subnets_the_margin_left_out() -> None:
    from nas.search import depth_seeds

    lat, budget = DepthLatency(), 3.0
    # By the upper bound, 3 layers of 1 head are the deepest that fit (2.4 ms); 4 layers of 1 head
    # (predicted 2.0, upper 3.2) and 3 layers of 2 heads (3.0, 4.8) are within 1.25x of the budget.
    assert max(len(c.kept_layers) for c in depth_seeds(SPACE, lat, budget)) == 3
    scores = DevScores({cfg(1).key(): 0.7, cfg(2, 3).key(): 0.72, cfg(1, 3).key(): 0.68})
    timer = FakeTimer({cfg(1).key(): 1.8, cfg(2, 3).key(): 3.2, cfg(1, 3).key(): 1.4})
    got = measured_seeds(SPACE, lat, budget, timer, scores, deeper_than=2)  # type: ignore[arg-type]
    # Timed in one call, nothing predicted beyond 1.25x (4 layers of 2 heads: 4.0 ms) among them;
    # per depth the widest that measures under the budget (3 layers of 2 heads measured 3.2), deepest first.
    assert timer.calls == [[cfg(2, 3).key(), cfg(1, 3).key(), cfg(1).key()]]
    assert got == [Candidate(cfg(1), 0.7, 1.8, 1.8, True), Candidate(cfg(1, 3), 0.68, 1.4, 1.4, True)]
    assert measured_seeds(SPACE, lat, budget, timer, scores, deeper_than=3, stretch=1.25)[0].config == cfg(1)  # type: ignore[arg-type]
    # Measured over the budget: left out; no timer on this machine (a kit device) or nothing near: none.
    slow = FakeTimer({cfg(1).key(): 3.1})
    assert measured_seeds(SPACE, lat, budget, slow, scores, deeper_than=3) == []  # type: ignore[arg-type]
    assert measured_seeds(SPACE, lat, budget, None, scores, deeper_than=3) == []  # type: ignore[arg-type]
    assert measured_seeds(SPACE, lat, 0.1, timer, scores, deeper_than=3) == []  # type: ignore[arg-type]


def test_a_measured_seed_deeper_than_the_predicted_ones_is_fine_tuned_first() -> None:
    # The search's pick has 2 layers; it evaluated a 3-layer seed and a wider 4-layer sub-network.
    shallow, pick, other = cand(cfg(1, 3), 0.68, 1.5), cand(cfg(4, 2), 0.75, 2.0), cand(cfg(2), 0.71, 2.9)
    history = [shallow, pick, other]
    deep = Candidate(cfg(1), 0.7, 1.8, 1.8, True)
    assert finetune_pool(history, pick, [shallow.config.key()], 1) == [shallow]
    assert finetune_pool(history, pick, [shallow.config.key()], 1, measured=[deep]) == [deep]
    assert finetune_pool(history, pick, [shallow.config.key()], 3, measured=[deep]) == [deep, other, shallow]
    # The seeds deepest first (the backups of the pool's timing are all but the first).
    assert seed_candidates(history, [shallow.config.key()], [deep]) == [deep, shallow]
    assert seed_candidates(history, ["not-evaluated"]) == []


def test_the_step_up_tries_the_picks_one_step_larger_neighbours_that_fit() -> None:
    # As in the main job of 2026-12-07: the pick used 66% of the budget and the relaxed search's
    # candidates were none better on the whole dev split; a neighbour of the pick is.
    chosen = cand(cfg(1), 0.70, 3.0)  # upper 3.3: measured 2.0 under a 4 ms budget
    verified = Verified(chosen, 2.0, 10.0, [{"arch_key": cfg(1).key()}])
    worse = cand(cfg(1, 3), 0.72, 2.5)  # the search's: better on the subset only
    near, far, flat = cand(cfg(2), 0.74, 4.0), cand(cfg(3), 0.77, 4.2), cand(cfg(1, 2), 0.69, 3.1)
    grown_at: list[tuple[str, float]] = []

    def grow(config: SubnetConfig, scale: float) -> list[Candidate]:
        grown_at.append((config.key(), scale))
        return [near, far, flat]  # what fits under ``scale`` (the caller filters by its budget)

    dev = DevScores({cfg(1).key(): 0.70, cfg(1, 3).key(): 0.69, cfg(2).key(): 0.75, cfg(3).key(): 0.78,
                     cfg(1, 2).key(): 0.69})
    timer = FakeTimer({cfg(3).key(): 4.5, cfg(2).key(): 3.5})
    got = step_up(verified, 4.0, lambda s: [chosen, worse], timer, dev, tries=1, grow=grow)  # type: ignore[arg-type]
    assert grown_at == [(cfg(1).key(), pytest.approx(2.0 / 3.3))]  # around the pick, at the search's scale
    # Only the neighbours that beat the pick on dev are timed, best first: cfg(3) misses, cfg(2) fits.
    assert timer.calls == [[cfg(3).key(), cfg(2).key()], [cfg(2).key()]]
    assert got.chosen is near and got.measured_ms == 3.5
    assert got.step_up_searches == ({"scale": pytest.approx(2.0 / 3.3), "candidates": 1, "better_on_dev": 2,
                                     "grown": 2, "searched": True, "stepped_up_to": cfg(2).describe()},)
    # The next try grows around the new pick (its neighbours already timed are not timed again).
    grown_at.clear()
    twice = step_up(verified, 4.0, lambda s: [chosen], FakeTimer({cfg(3).key(): 4.5, cfg(2).key(): 3.0}), dev,  # type: ignore[arg-type]
                    grow=grow)
    assert [k for k, _ in grown_at] == [cfg(1).key(), cfg(2).key()]
    assert twice.chosen is near and [s["arch_key"] for s in twice.steps[1:]] == [cfg(3).key(), cfg(2).key()]
    # At most ``finalists`` neighbours, best on dev first.
    capped = FakeTimer({cfg(3).key(): 4.5, cfg(2).key(): 3.0})
    assert step_up(verified, 4.0, lambda s: [chosen], capped, dev, finalists=1, grow=grow).chosen is chosen  # type: ignore[arg-type]
    assert capped.calls == [[cfg(3).key()]]
    # A pick measured at or over its upper bound: no relaxed search (it could find the budget
    # impossible), but its neighbours under the measured scale are still tried.
    over = Verified(chosen, 3.4, 10.0, [{"arch_key": cfg(1).key()}])  # upper 3.3, 85% of 4 ms
    searched: list[float] = []
    grown_at.clear()
    up = step_up(over, 4.0, lambda s: searched.append(s) or [], FakeTimer({cfg(3).key(): 4.5, cfg(2).key(): 3.7}),  # type: ignore[arg-type, func-returns-value]
                 dev, tries=1, grow=grow)
    assert searched == [] and grown_at == [(cfg(1).key(), pytest.approx(3.4 / 3.3))]
    assert up.chosen is near and up.step_up_searches[0]["searched"] is False
    assert step_up(over, 4.0, lambda s: searched.append(s) or [], FakeTimer({}), dev) is over  # type: ignore[arg-type, func-returns-value]

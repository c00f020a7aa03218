"""One contract that every registered searcher must pass, on a cheap analytic toy problem.

The toy: a 4-layer space (4 heads, 64 FFN neurons), an accuracy that grows with heads,
neurons, layers and kept tokens (deeper layers weigh a little more, so that the optimum is
not symmetric), and a FLOPs-like latency with a 5% safety margin. No model, no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import optuna
import pytest

from nas.evolution import EvolutionSearch, select_parents
from nas.optuna_search import (
    CONSTRAINT_KEY,
    OptunaSearch,
    decode,
    distributions,
    encode,
    record_result,
)
from nas.search import (
    SEARCHERS,
    Archive,
    Candidate,
    RandomSearch,
    SearchResult,
    anchors,
    depth_seeds,
    fastest_reachable,
    make_searcher,
)
from nas.surrogate import RidgeSurrogate, config_features, front_gain
from nas.toy import TOY_MARGIN, ToyLatency, toy_accuracy
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

SPACE = SearchSpace.for_model(4, 4, 64)
MARGIN = TOY_MARGIN
BUDGET = 2.0  # ms; the largest configuration takes 4.2 ms, the smallest 0.5 ms

# Ray Tune starts a cluster per search; its contract tests live in tests/test_distributed.py.
IN_PROCESS = sorted(set(SEARCHERS) - {"ray"})


class CountingAccuracy:
    """Counts calls and remembers which configurations were asked for."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, cfg: SubnetConfig) -> float:
        self.keys.append(cfg.key())
        return toy_accuracy(cfg)


def run(name: str, *, budget_ms: float | None, n: int, seed: int = 0, space: SearchSpace = SPACE,
        **kw: object) -> tuple[SearchResult, CountingAccuracy]:
    acc = CountingAccuracy()
    result = make_searcher(name, **kw).search(
        space, acc, ToyLatency(), budget_ms=budget_ms, n_evaluations=n, seed=seed
    )
    return result, acc


def rows(result: SearchResult) -> list[dict]:
    return [c.to_row() for c in result.history]


# ---- the shared contract -----------------------------------------------------------------------
@pytest.mark.parametrize("name", IN_PROCESS)
def test_searcher_contract(name: str) -> None:
    n = 30
    result, acc = run(name, budget_ms=BUDGET, n=n, seed=0)
    assert result.method == name and result.budget_ms == BUDGET
    # (a) only valid configurations
    for c in result.history:
        SPACE.validate(c.config)
    # (b) the best respects the budget, by its upper bound
    assert result.best is not None
    assert result.best.upper_ms <= BUDGET and result.best.feasible
    assert result.best.accuracy == max(c.accuracy for c in result.history if c.feasible)
    # (d) at most n accuracy calls, each for a different configuration, each in the history
    assert len(acc.keys) <= n
    assert len(set(acc.keys)) == len(acc.keys) == len(result.history) == result.n_evaluations
    # (c) same seed, same history
    again, _ = run(name, budget_ms=BUDGET, n=n, seed=0)
    assert rows(again) == rows(result)
    # (f) better than the smallest sub-network, which always fits
    assert result.best.accuracy > toy_accuracy(SPACE.smallest())
    # (e) an impossible budget ends at once with no answer and no accuracy call
    t0 = time.perf_counter()
    impossible, acc_none = run(name, budget_ms=0.5 * fastest_reachable(SPACE, ToyLatency()), n=n)
    assert impossible.best is None and impossible.history == [] and acc_none.keys == []
    assert time.perf_counter() - t0 < 5
    # ... and a budget that only the smallest fits still gets an answer, in bounded time
    tight, acc_tight = run(name, budget_ms=fastest_reachable(SPACE, ToyLatency()), n=5)
    assert tight.best is not None and tight.best.upper_ms <= fastest_reachable(SPACE, ToyLatency())
    assert len(acc_tight.keys) <= 5


@pytest.mark.parametrize("name", IN_PROCESS)
def test_searcher_whole_front(name: str) -> None:
    result, acc = run(name, budget_ms=None, n=20, seed=1)
    assert len(acc.keys) == len(result.history) <= 20
    assert all(c.feasible for c in result.history)
    front = result.front()
    assert len(front) >= 2 and front["lat_pred_ms"].is_monotonic_increasing
    assert front["acc_dev"].is_monotonic_increasing  # slower points on a front are more accurate
    frame = result.frame()
    assert list(frame.columns) == ["arch_key", "arch_json", "acc_dev", "lat_pred_ms", "lat_upper_ms", "feasible"]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_searcher_never_evaluates_a_configuration_twice(name: str) -> None:
    # 2 layers, one width, retention 1.0 or 0.5, one layer may be dropped: 7 configurations.
    tiny = SearchSpace(num_layers=2, max_heads=1, max_ffn=1, head_choices=(1,), ffn_choices=(1,),
                       retention_choices=(1.0, 0.5), min_layers=1)
    result, acc = run(name, budget_ms=None, n=20, seed=0, space=tiny)
    assert len(acc.keys) == len(set(acc.keys)) == len(result.history) <= 7


# ---- searcher-specific -----------------------------------------------------------------------------
def test_evolution_rejects_before_evaluating_and_deduplicates() -> None:
    result, acc = run("evolution", budget_ms=1.2, n=40, seed=3)
    # Every evaluated configuration fits: the latency check comes first.
    assert all(c.upper_ms <= 1.2 for c in result.history)
    assert result.n_rejected > 0
    assert len(set(acc.keys)) == len(acc.keys)


def test_evolution_default_sizes_keep_hat_proportions() -> None:
    assert EvolutionSearch().sizes(60) == (12, 2, 5, 5)
    assert EvolutionSearch().sizes(10_000) == (125, 25, 50, 50)  # HAT's population
    with pytest.raises(ConfigError, match="parents"):
        EvolutionSearch(population_size=4, parent_size=6).sizes(60)


def test_select_parents_multi_objective_keeps_the_front() -> None:
    cfg = SPACE.smallest()
    cands = [Candidate(cfg, a, t, t, True) for a, t in [(0.9, 3.0), (0.7, 1.0), (0.6, 2.0), (0.8, 2.0)]]
    best2 = select_parents(cands, 2, multi_objective=False)
    assert [c.accuracy for c in best2] == [0.9, 0.8]
    front = select_parents(cands, 3, multi_objective=True)
    assert {c.accuracy for c in front} == {0.9, 0.8, 0.7}  # (0.6, 2.0) is dominated


class Interrupt(Exception):
    pass


def test_optuna_search_resumes_from_sqlite(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher("tpe", storage=storage, study_name="toy")

    seen: list[str] = []

    def interrupted(cfg: SubnetConfig) -> float:
        if len(seen) == 10:
            raise Interrupt  # the 11th evaluation is cut short, as by Ctrl-C
        seen.append(cfg.key())
        return toy_accuracy(cfg)

    with pytest.raises(Interrupt):
        searcher.search(SPACE, interrupted, ToyLatency(), budget_ms=BUDGET, n_evaluations=20, seed=0)
    # Asked again for 20: the 10 stored evaluations are reused, only 10 new ones run.
    acc = CountingAccuracy()
    result = searcher.search(SPACE, acc, ToyLatency(), budget_ms=BUDGET, n_evaluations=20, seed=0)
    assert len(acc.keys) == 10 and len(result.history) == 20
    first = [c.config.key() for c in result.history[:10]]
    assert first == seen
    assert not set(acc.keys) & set(first)
    # Asked for fewer than the study holds: its first ones, nothing evaluated, as evolution does.
    fewer = searcher.search(SPACE, acc, ToyLatency(), budget_ms=BUDGET, n_evaluations=6, seed=0)
    assert [c.config.key() for c in fewer.history] == first[:6] and len(acc.keys) == 10
    # A different budget under the same study name is refused, not mixed in.
    with pytest.raises(ConfigError, match="new study name"):
        searcher.search(SPACE, acc, ToyLatency(), budget_ms=3.0, n_evaluations=20, seed=0)


def test_an_evolution_search_is_written_as_a_study_like_the_optuna_searchers(tmp_path) -> None:
    """optuna-dashboard shows every method's searches alike: the evolution's evaluated
    candidates become completed trials with TPE's parameters, distributions and attributes;
    written again (a search run again), nothing is added twice."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result, _ = run("evolution", budget_ms=BUDGET, n=12)
    record_result(result, SPACE, storage=storage, study_name="evo", study_attrs={"device": "toy"})
    study = optuna.load_study(study_name="evo", storage=storage)
    assert study.metric_names == ["acc_dev"] and study.user_attrs["device"] == "toy"
    assert study.user_attrs["hwnas"]["method"] == "evolution" and study.user_attrs["n_rejected"] == result.n_rejected
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * len(result.history) and len(trials) == 12
    for t, c in zip(trials, result.history, strict=True):  # in evaluation order
        assert decode(SPACE, t.params) == c.config and t.values == [c.accuracy]
        assert t.user_attrs == {"arch_json": c.config.to_json(), "arch": c.config.describe(), "acc_dev": c.accuracy,
                                "lat_pred_ms": c.latency_ms, "lat_upper_ms": c.upper_ms, "status": "evaluated"}
        assert t.system_attrs[f"constraints:{CONSTRAINT_KEY}"] == pytest.approx(c.upper_ms - BUDGET)
    assert study.best_trial.values == [result.best.accuracy]
    # The same distributions as a TPE trial's, so that both kinds of study read alike.
    tpe = make_searcher("tpe", storage=storage, study_name="tpe")
    tpe.search(SPACE, toy_accuracy, ToyLatency(), budget_ms=BUDGET, n_evaluations=2, seed=0)
    assert optuna.load_study(study_name="tpe", storage=storage).trials[0].distributions == distributions(SPACE)
    assert trials[0].distributions == distributions(SPACE)
    # Run again (the accuracy cache makes it cheap), then for more evaluations: only new trials.
    record_result(result, SPACE, storage=storage, study_name="evo")
    assert len(optuna.load_study(study_name="evo", storage=storage).trials) == 12
    longer, _ = run("evolution", budget_ms=BUDGET, n=20)
    record_result(longer, SPACE, storage=storage, study_name="evo")
    keys = [decode(SPACE, t.params).key() for t in optuna.load_study(study_name="evo", storage=storage).trials]
    assert len(keys) == len(set(keys)) == len({c.config.key() for c in result.history + longer.history})
    # Another search under the same name is refused, not mixed in.
    other, _ = run("random", budget_ms=BUDGET, n=4)
    with pytest.raises(ConfigError, match="new study name"):
        record_result(other, SPACE, storage=storage, study_name="evo")


def test_a_whole_front_search_is_written_with_both_objectives(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result, _ = run("random", budget_ms=None, n=8)
    study = record_result(result, SPACE, storage=storage, study_name="front")
    assert study.metric_names == ["acc_dev", "lat_pred_ms"]
    assert [t.values for t in study.trials] == [[c.accuracy, c.latency_ms] for c in result.history]
    front = {decode(SPACE, t.params).key() for t in study.best_trials}
    assert front == set(result.front()["arch_key"])


@dataclass
class OptunaRandomSearch(OptunaSearch):
    """Optuna's random sampler as a searcher: all it takes is a name and a sampler."""

    name: ClassVar[str] = "optuna-random"

    def sampler(self, seed: int, n_evaluations: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)


def test_a_new_optuna_sampler_gets_the_whole_loop() -> None:
    acc = CountingAccuracy()
    result = OptunaRandomSearch().search(SPACE, acc, ToyLatency(), budget_ms=BUDGET, n_evaluations=15, seed=0)
    assert result.method == "optuna-random" and result.history[0].config == SPACE.smallest()  # anchored
    assert result.best is not None and result.best.upper_ms <= BUDGET
    assert len(set(acc.keys)) == len(acc.keys) == len(result.history) <= 15
    again = OptunaRandomSearch().search(SPACE, toy_accuracy, ToyLatency(), budget_ms=BUDGET, n_evaluations=15, seed=0)
    assert rows(again) == rows(result)


def test_optuna_encoding_round_trips_and_repairs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        cfg = SPACE.sample(rng)
        assert decode(SPACE, encode(SPACE, cfg)) == cfg
    # No layer kept: repaired to the evenly spaced minimum; retention sorted, skips inherit.
    params = {f"{k}_{i}": 0 for k in ("heads", "ffn") for i in range(4)}
    params |= {f"keep_{i}": False for i in range(4)}
    params |= {"retention_0": 7, "retention_1": 5, "retention_2": 7, "retention_3": 2}
    cfg = decode(SPACE, params)
    assert cfg.keep == (False, True, False, True)
    assert cfg.heads == (0, 1, 0, 1) and cfg.ffn == (0, 16, 0, 16)
    assert cfg.retention == (1.0, 0.8, 0.8, 0.5)


# ---- registry ----------------------------------------------------------------------------------------
def test_unknown_searcher_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="evolution, nsga2, random, ray, tpe"):
        make_searcher("annealing")


def test_bad_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="attempts_per_evaluation"):
        make_searcher("random", population_size=3)
    assert isinstance(make_searcher("random", attempts_per_evaluation=3), RandomSearch)


def test_bad_budget_and_evaluations_are_config_errors() -> None:
    for budget, n in [(-1.0, 10), (float("nan"), 10), (2.0, 0)]:
        with pytest.raises(ConfigError):
            run("random", budget_ms=budget, n=n)


# ---- depth seeds ---------------------------------------------------------------------------
def test_depth_seeds_are_the_widest_uniform_subnets_of_each_depth_that_fit() -> None:
    lat = ToyLatency()
    seeds = depth_seeds(SPACE, lat, BUDGET)
    depths = [len(c.kept_layers) for c in seeds]
    assert depths == sorted(set(depths)) and 4 in depths  # one per depth, the deepest included
    for cfg, (_, upper) in zip(seeds, lat.predict(seeds), strict=True):
        assert upper <= BUDGET and SPACE.contains(cfg)
        kept = cfg.kept_layers
        assert len({cfg.heads[i] for i in kept}) == 1 and len({cfg.ffn[i] for i in kept}) == 1  # uniform
        if cfg.heads[kept[0]] < SPACE.max_heads:  # a wider one of the same depth and retention misses the budget
            wider = SPACE.uniform(width=(cfg.heads[kept[0]] + 1) / SPACE.max_heads, depth=len(kept) / SPACE.num_layers,
                                  retention=min(cfg.retention))
            assert lat.predict([wider])[0][1] > BUDGET
    # Every budgeted search starts from them; a whole-front search does not.
    result, _ = run("evolution", budget_ms=BUDGET, n=30)
    assert {c.key() for c in seeds} <= {c.config.key() for c in result.history}
    assert anchors(SPACE, None, lat) == [SPACE.smallest(), SPACE.largest()]


def test_other_depths_takes_the_best_of_the_deepest_other_depths() -> None:
    from nas.export import other_depths

    result, _ = run("evolution", budget_ms=BUDGET, n=40)
    chosen = max((c for c in result.history if c.feasible), key=lambda c: c.accuracy)
    extra = other_depths(result.history, chosen, 2)
    depths = [len(c.config.kept_layers) for c in extra]
    assert len(chosen.config.kept_layers) not in depths and depths == sorted(set(depths), reverse=True)
    for c in extra:
        same = [o for o in result.history if o.feasible and len(o.config.kept_layers) == len(c.config.kept_layers)]
        assert c.feasible and c.accuracy == max(o.accuracy for o in same)
    assert other_depths(result.history, chosen, 0) == []


def test_finetune_pool_puts_the_deepest_seed_first_then_other_depths() -> None:
    from nas.export import finetune_pool, other_depths

    result, _ = run("evolution", budget_ms=BUDGET, n=40)
    feasible = sorted((c for c in result.history if c.feasible), key=lambda c: -c.accuracy)
    seeds = [c.key() for c in depth_seeds(SPACE, ToyLatency(), BUDGET)]
    deepest = max((c for c in feasible if c.config.key() in seeds), key=lambda c: len(c.config.kept_layers))
    chosen = next(c for c in feasible if c.config.key() != deepest.config.key())
    pool = finetune_pool(result.history, chosen, seeds, 3)
    assert pool[0] is deepest and len(pool) == len({c.config.key() for c in pool}) <= 3
    assert chosen.config.key() not in {c.config.key() for c in pool}
    rest = [c for c in other_depths(result.history, chosen, 3) if c.config.key() != deepest.config.key()]
    assert pool[1:] == rest[:2]
    # When the search's pick is that seed, the pool is other_depths alone; k = 0 gives nothing.
    assert finetune_pool(result.history, deepest, seeds, 2) == other_depths(result.history, deepest, 2)
    assert finetune_pool(result.history, chosen, seeds, 0) == [] and finetune_pool(result.history, chosen, [], 1) == \
        other_depths(result.history, chosen, 1)


# ---- the surrogate that screens an evolution's children -------------------------------------------
def test_config_features_follow_kept_layers_widths_and_the_tokens_each_layer_sees() -> None:
    cfg = SubnetConfig(heads=(4, 2, 4, 1), ffn=(64, 32, 16, 64), keep=(True, False, True, True),
                       retention=(0.5, 0.5, 0.25, 0.25), precision="int8")
    row = config_features(cfg, SPACE)
    assert row.shape == (4 * 4 + 1,)
    # layer 0: kept, full width, all tokens; it drops to half
    assert list(row[0:4]) == [1.0, 1.0, 1.0, 1.0]
    # layer 1: skipped (no width), half the tokens reach it
    assert list(row[4:8]) == [0.0, 0.0, 0.0, 0.5]
    # layer 2 sees half and drops to a quarter, which layer 3 sees
    assert list(row[8:12]) == [1.0, 1.0, 0.25, 0.5]
    assert list(row[12:16]) == [1.0, 0.25, 1.0, 0.25]
    assert row[16] == 1.0  # the int8 indicator
    assert config_features(cfg.with_precision("fp32"), SPACE)[16] == 0.0


def test_ridge_surrogate_recovers_a_linear_rule_and_refuses_to_predict_unfitted() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    x[:, 2] = 5.0  # a constant column must not break the standardization
    y = 0.7 + x[:, 0] * 0.2 - x[:, 1] * 0.1
    model = RidgeSurrogate(alpha=1e-6).fit(x, y)
    test = np.array([[1.0, 2.0, 5.0], [-1.0, 0.0, 5.0]])
    assert np.allclose(model.predict(test), [0.7 + 0.2 - 0.2, 0.7 - 0.2], atol=1e-4)
    with pytest.raises(RuntimeError, match="before fit"):
        RidgeSurrogate().predict(test)
    with pytest.raises(ValueError, match="at least 2 rows"):
        RidgeSurrogate().fit(x[:1], y[:1])


def test_front_gain_measures_from_the_best_accuracy_at_that_latency_or_faster() -> None:
    known_acc, known_lat = np.array([0.6, 0.8, 0.7]), np.array([1.0, 3.0, 2.0])
    gain = front_gain(np.array([0.75, 0.75, 0.9, 0.65]), np.array([2.5, 1.5, 4.0, 0.5]), known_acc, known_lat)
    # at 2.5 ms the front stands at 0.7 (the point at 2.0); at 1.5 at 0.6; at 4.0 at 0.8;
    # faster than every evaluated point, at the worst evaluated accuracy (0.6)
    assert np.allclose(gain, [0.05, 0.15, 0.1, 0.05])


def test_a_screened_evolution_keeps_the_contract_and_picks_what_the_surrogate_prefers() -> None:
    result, acc = run("evolution", budget_ms=BUDGET, n=30, seed=0, screen=4)
    assert len(set(acc.keys)) == len(acc.keys) == len(result.history) == 30
    assert all(c.upper_ms <= BUDGET for c in result.history)
    again, _ = run("evolution", budget_ms=BUDGET, n=30, seed=0, screen=4)
    assert rows(again) == rows(result)
    # The pick keeps the drawn children the surrogate fitted to the archive ranks highest.
    searcher = EvolutionSearch(screen=4)
    archive = Archive(toy_accuracy, BUDGET, 100)
    rng = np.random.default_rng(1)
    for cfg in [SPACE.sample(rng) for _ in range(12)]:
        archive.evaluate(cfg, 1.0, 1.0)
    pick = searcher._screener(archive, SPACE, BUDGET)
    assert pick is not None
    drawn = [(SPACE.sample(rng), 1.0, 1.0) for _ in range(8)]
    kept = pick(drawn, 2)
    model = RidgeSurrogate().fit(np.stack([config_features(c.config, SPACE) for c in archive.history]),
                                 [c.accuracy for c in archive.history])
    pred = model.predict(np.stack([config_features(c, SPACE) for c, _, _ in drawn]))
    assert {c.key() for c, _, _ in kept} == {drawn[i][0].key() for i in np.argsort(-pred)[:2]}
    assert EvolutionSearch(screen=1)._screener(archive, SPACE, BUDGET) is None


def test_screening_finds_more_accurate_subnetworks_on_the_toy_problem() -> None:
    # Same evaluations, same seeds: the screened search's best under the budget is better on average.
    def best(screen: int) -> float:
        return float(np.mean([run("evolution", budget_ms=BUDGET, n=24, seed=s, screen=screen)[0].best.accuracy
                              for s in range(6)]))
    assert best(4) > best(1)


def test_screen_must_be_a_positive_integer() -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="screen"):
            run("evolution", budget_ms=BUDGET, n=10, screen=bad)


def test_screen_is_the_evolutions_setting_alone() -> None:
    from nas.export import ExportConfig
    from nas.search import evolution_settings

    assert evolution_settings("evolution", None) == {} and evolution_settings("random", None) == {}
    assert evolution_settings("evolution", 2) == {"screen": 2}
    assert make_searcher("evolution", **evolution_settings("evolution", 2)).screen == 2
    for method in ("random", "tpe", "nsga2"):
        with pytest.raises(ConfigError, match="evolution's setting"):
            evolution_settings(method, 2)
    with pytest.raises(ConfigError, match="evolution's setting"):
        ExportConfig(budget_ms=5.0, method="random", screen=2)
    assert ExportConfig(budget_ms=5.0, screen=1).screen == 1


def test_a_non_default_screen_is_part_of_the_searchs_name() -> None:
    from nas.search import evolution_settings, method_label

    assert method_label("evolution", {}) == "evolution" == method_label("evolution", None)
    assert method_label("evolution", evolution_settings("evolution", 4)) == "evolution"  # the default
    assert method_label("evolution", evolution_settings("evolution", 1)) == "evolution-screen1"
    assert method_label("tpe", {}) == "tpe" and method_label("ray", {"workers": 2}) == "ray"

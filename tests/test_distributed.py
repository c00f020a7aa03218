"""RayTuneSearch: the searcher contract on the toy problem of test_search.py, as Ray trials.

The accuracy and latency models are module-level classes, so that they pickle and reach
the Ray workers (a local Ray started by ``init_ray`` puts this folder on their path). The
accuracy model writes every call to a file per process, so that evaluations made in the
workers can be counted here. One small local Ray (2 CPUs) serves most tests; the tests
that need no Ray at all come first, and the last one starts and stops its own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from nas.distributed import RayClusterError, RayTuneSearch, _Planner, evaluate_chunk, init_ray
from nas.optuna_search import encode
from nas.search import SearchResult, fastest_reachable
from nas.toy import TOY_MARGIN, ToyLatency, toy_accuracy
from supernet.errors import ConfigError, HwnasError
from supernet.space import SearchSpace, SubnetConfig

SPACE = SearchSpace.for_model(4, 4, 64)
MARGIN = TOY_MARGIN
BUDGET = 2.0  # ms; the largest configuration takes 4.2 ms, the smallest 0.5 ms


class FileCountingAccuracy:
    """The toy accuracy; every call appends the configuration's key to ``folder/<pid>.txt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)

    def __call__(self, cfg: SubnetConfig) -> float:
        with open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a") as f:
            f.write(cfg.key() + "\n")
        return toy_accuracy(cfg)

    def keys(self) -> list[str]:
        return [k for p in sorted(Path(self.folder).glob("*.txt")) for k in p.read_text().split()]


def search(tmp_path: Path, *, budget_ms: float | None, n: int, seed: int = 0,
           **kw: object) -> tuple[SearchResult, FileCountingAccuracy, RayTuneSearch]:
    acc = FileCountingAccuracy(tmp_path / f"calls-{time.monotonic_ns()}")
    searcher = RayTuneSearch(**kw)  # type: ignore[arg-type]  # settings vary by test
    result = searcher.search(SPACE, acc, ToyLatency(), budget_ms=budget_ms, n_evaluations=n, seed=seed)
    return result, acc, searcher


def check_history(result: SearchResult, acc: FileCountingAccuracy, cap: int) -> None:
    """Valid configurations, each evaluated once, every evaluation in the history."""
    for c in result.history:
        SPACE.validate(c.config)
    keys = [c.config.key() for c in result.history]
    assert len(set(keys)) == len(keys) == result.n_evaluations <= cap
    assert sorted(acc.keys()) == sorted(keys)
    for c in result.history:
        assert c.accuracy == pytest.approx(toy_accuracy(c.config))
        assert (c.latency_ms, c.upper_ms) == pytest.approx(ToyLatency().predict([c.config])[0])


# ---- no Ray needed -------------------------------------------------------------------------------------
def test_unreachable_address_says_how_to_start_a_cluster() -> None:
    t0 = time.perf_counter()
    with pytest.raises(RayClusterError, match=r"127\.0\.0\.1:1.*ray start --head.*omit --ray-address") as e:
        RayTuneSearch(address="127.0.0.1:1", connect_timeout_s=2).search(
            SPACE, toy_accuracy, ToyLatency(), budget_ms=BUDGET, n_evaluations=4, seed=0)
    assert isinstance(e.value, HwnasError)
    assert time.perf_counter() - t0 < 10


def test_impossible_budget_returns_at_once_without_ray(tmp_path: Path) -> None:
    import ray

    before = ray.is_initialized()
    budget = 0.5 * fastest_reachable(SPACE, ToyLatency())
    result, acc, _ = search(tmp_path, budget_ms=budget, n=8)
    assert result.best is None and result.history == [] and acc.keys() == []
    assert ray.is_initialized() == before


def test_unpicklable_model_is_a_config_error() -> None:
    import threading

    class Locked:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __call__(self, cfg: SubnetConfig) -> float:
            return 0.5

    with pytest.raises(ConfigError, match="picklable"):
        RayTuneSearch().search(SPACE, Locked(), ToyLatency(), budget_ms=BUDGET, n_evaluations=4, seed=0)


def test_bad_settings_are_config_errors() -> None:
    for kw in ({"workers": 0}, {"trial_chunk": 0}, {"trial_chunk": 1.5}):
        with pytest.raises(ConfigError):
            RayTuneSearch(**kw).search(SPACE, toy_accuracy, ToyLatency(), budget_ms=BUDGET,
                                       n_evaluations=4, seed=0)


def test_planner_hands_out_each_configuration_once() -> None:
    planner = _Planner(SPACE, seed=0, trial_chunk=3)
    study = optuna.create_study()
    cfg = SPACE.uniform(0.5)
    study.enqueue_trial(encode(SPACE, cfg))
    study.enqueue_trial(encode(SPACE, cfg))  # Optuna suggests the same configuration again
    first, second = planner(study.ask()), planner(study.ask())
    assert first["hwnas_chunk"][0] == cfg.to_json() and len(first["hwnas_chunk"]) == 3
    assert second["hwnas_suggested"] == cfg.to_json()
    assert len(second["hwnas_chunk"]) == 3 and cfg.to_json() not in second["hwnas_chunk"]
    assert not set(first["hwnas_chunk"]) & set(second["hwnas_chunk"])
    # Mutations are seeded by the search seed and the trial number.
    again = _Planner(SPACE, seed=0, trial_chunk=3)
    study2 = optuna.create_study()
    study2.enqueue_trial(encode(SPACE, cfg))
    assert again(study2.ask())["hwnas_chunk"] == first["hwnas_chunk"]


def test_evaluate_chunk_checks_the_budget_and_reports_the_best() -> None:
    small, mid, large = SPACE.smallest(), SPACE.uniform(0.5, retention=0.6), SPACE.largest()
    calls: list[SubnetConfig] = []

    def acc(cfg: SubnetConfig) -> float:
        calls.append(cfg)
        return toy_accuracy(cfg)

    config = {"hwnas_trial": 0, "hwnas_suggested": large.to_json(), "hwnas_known": None,
              "hwnas_chunk": [c.to_json() for c in (large, small, mid)]}
    m = evaluate_chunk(config, SPACE, acc, ToyLatency(), budget_ms=BUDGET, multi_objective=False)
    assert calls == [small, mid]  # the largest misses the budget and is not evaluated
    assert m["n_rejected"] == 1 and m["feasible"] and m["arch_json"] == mid.to_json()
    assert m["acc"] == pytest.approx(toy_accuracy(mid)) and m["upper"] <= BUDGET
    assert [e["arch_json"] for e in json.loads(m["evaluated_json"])] == [small.to_json(), mid.to_json()]
    # Nothing feasible: the worst accuracy, infeasible, with the suggestion's latency.
    only_large = {**config, "hwnas_chunk": [large.to_json()]}
    m = evaluate_chunk(only_large, SPACE, acc, ToyLatency(), budget_ms=BUDGET, multi_objective=False)
    assert (m["acc"], m["feasible"], json.loads(m["evaluated_json"])) == (0.0, False, [])
    # Nothing new to evaluate: the known result of the suggestion is reported again.
    known = {**config, "hwnas_chunk": [], "hwnas_suggested": mid.to_json(), "hwnas_known": [0.7, 1.0, 1.05]}
    m = evaluate_chunk(known, SPACE, acc, ToyLatency(), budget_ms=BUDGET, multi_objective=False)
    assert (m["acc"], m["feasible"], json.loads(m["evaluated_json"])) == (0.7, True, [])
    assert len(calls) == 2
    # For a front, the suggested (first) configuration's values are reported.
    m = evaluate_chunk(config, SPACE, acc, ToyLatency(), budget_ms=None, multi_objective=True)
    assert m["arch_json"] == large.to_json() and len(json.loads(m["evaluated_json"])) == 3
    # ... also when the suggestion was taken by an earlier trial and the chunk holds only its
    # mutations: its known values, not a mutation's under its parameters.
    taken = {**config, "hwnas_suggested": large.to_json(), "hwnas_known": [0.9, 2.0, 2.1],
             "hwnas_chunk": [small.to_json(), mid.to_json()]}
    m = evaluate_chunk(taken, SPACE, acc, ToyLatency(), budget_ms=None, multi_objective=True)
    assert (m["arch_json"], m["acc"], m["lat"]) == (large.to_json(), 0.9, 2.0)
    assert len(json.loads(m["evaluated_json"])) == 2  # the mutations are evaluated and kept all the same
    # A planner told the total plans no more: the last chunk is cut to what is left.
    planner = _Planner(SPACE, seed=0, trial_chunk=3, total=4)
    study = optuna.create_study()
    sizes = [len(planner(study.ask())["hwnas_chunk"]) for _ in range(3)]
    assert sizes == [3, 1, 0]


def test_searcher_pickles_and_then_suggests_what_the_original_would(tmp_path: Path) -> None:
    """Ray Tune pickles its searcher (cloudpickle when the Tuner is made; ``save``, a plain
    pickle of its fields, at each checkpoint), and Optuna 5.1's NSGA-II holds a thread lock.
    A copy taken mid-search, either way, goes on as the original does."""
    import ray.cloudpickle as cloudpickle

    from nas.distributed import _search_alg_class
    from nas.optuna_search import nsga2_sampler

    def searcher() -> Any:
        return _search_alg_class()(
            _Planner(SPACE, seed=0, trial_chunk=2), None, metric=["acc", "lat"], mode=["max", "min"],
            sampler=nsga2_sampler(0, 8, picklable=True), points_to_evaluate=[encode(SPACE, SPACE.smallest())])

    def run_trial(alg: Any, trial_id: str) -> dict[str, Any]:
        config = alg.suggest(trial_id)
        for s in config["hwnas_chunk"]:
            SPACE.validate(SubnetConfig.from_dict(json.loads(s)))
        alg.on_trial_complete(trial_id, evaluate_chunk(config, SPACE, toy_accuracy, ToyLatency(), budget_ms=None,
                                                       multi_objective=True))
        return config

    # The in-process searchers keep Optuna's own class (their resumable studies name it).
    assert type(nsga2_sampler(0, 8)) is optuna.samplers.NSGAIISampler
    alg = searcher()
    for i in range(9):  # past NSGA-II's first generation (8), so the next ones are bred
        run_trial(alg, f"t{i}")
    copy = cloudpickle.loads(cloudpickle.dumps(alg))
    alg.save(str(tmp_path / "searcher.pkl"))
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    following = [[run_trial(s, f"t{i}") for i in (9, 10)] for s in (alg, copy, restored)]
    assert following[0] == following[1] == following[2]


# ---- on one shared local Ray ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    import ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def test_contract_under_a_budget(ray_session: Any, tmp_path: Path) -> None:
    n = 8
    result, acc, searcher = search(tmp_path, budget_ms=BUDGET, n=n, workers=2, storage_path=str(tmp_path / "ray"))
    assert result.method == "ray-tpe" and result.budget_ms == BUDGET
    check_history(result, acc, cap=n)
    assert result.history[0].config == SPACE.smallest()  # the anchor runs first
    assert result.best is not None and result.best.feasible and result.best.upper_ms <= BUDGET
    assert result.best.accuracy == max(c.accuracy for c in result.history if c.feasible)
    assert result.n_evaluations + result.n_rejected == n  # one configuration per trial
    stats = searcher.last_stats
    assert stats["trials"] == n and stats["wall_s"] >= stats["trial_compute_s"] > 0
    assert stats["overhead_s"] == pytest.approx(stats["wall_s"] - stats["trial_compute_s"])
    assert any((tmp_path / "ray").iterdir())  # Ray Tune's results went where asked
    assert ray_session.is_initialized()  # a session it did not start is left running


def test_whole_front(ray_session: Any, tmp_path: Path) -> None:
    result, acc, _ = search(tmp_path, budget_ms=None, n=8, seed=1)
    assert result.method == "ray-nsga2"
    check_history(result, acc, cap=8)
    assert all(c.feasible for c in result.history)
    assert {SPACE.smallest(), SPACE.largest()} <= {c.config for c in result.history}
    front = result.front()
    assert len(front) >= 2 and front["lat_pred_ms"].is_monotonic_increasing
    assert front["acc_dev"].is_monotonic_increasing


def test_same_seed_same_suggestions_with_one_worker(ray_session: Any, tmp_path: Path) -> None:
    runs = [search(tmp_path, budget_ms=BUDGET, n=6, seed=3, workers=1, trial_chunk=2)[0] for _ in range(2)]
    a, b = ([c.to_row() for c in r.history] for r in runs)
    assert a == b and runs[0].n_rejected == runs[1].n_rejected


# ---- last: a search that starts and stops its own Ray ---------------------------------------------------
def test_chunks_on_its_own_ray(tmp_path: Path) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the module's shared session (its teardown then finds nothing to do)
    n, chunk = 7, 3
    result, acc, searcher = search(tmp_path, budget_ms=BUDGET, n=n, workers=2, trial_chunk=chunk)
    assert not ray.is_initialized()  # it started Ray, so it shut it down
    check_history(result, acc, cap=n)
    # n_evaluations caps the configurations planned: ceil(n / chunk) trials, the last one's
    # chunk cut to what is left, each configuration evaluated or rejected by latency.
    assert result.n_evaluations + result.n_rejected == n
    assert result.n_evaluations > n // chunk
    assert all(c.upper_ms <= BUDGET for c in result.history)
    assert result.best is not None and result.best.accuracy == max(c.accuracy for c in result.history)
    assert searcher.last_stats["trials"] == -(-n // chunk)
    np.testing.assert_array_less(0, [searcher.last_stats["startup_s"]])

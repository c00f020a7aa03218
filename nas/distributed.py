"""Ray: the Optuna search as Ray Tune trials, joining a cluster, and measuring on a cluster's
devices. The only module of the project that imports ray.

**Joining a cluster** (``init_ray``, ``check_cluster``): before ``ray.init`` (which retries
a failing address for a long while and then names no cause), a ``host:port`` is checked for
the three causes met in practice, each with its own message: nothing listens there; Ray
would dial another address (it replaces 127.0.0.1 by the machine's address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, so a head bound to loopback is missed); the cluster
uses token authentication and refuses this process (no token sent, or the wrong one). Ray
sends a token only with ``RAY_AUTH_MODE=token``, from ``RAY_AUTH_TOKEN`` or the file named by
``RAY_AUTH_TOKEN_PATH`` (default ``~/.ray/auth_token``); for an address given explicitly it
never turns that on by itself.

**Measuring on the cluster** (``measure_on_cluster``): a node says it can time a device by
the custom resource ``device:NAME``; each device's ``sweep`` runs there as a generator task
that yields its rows as they are taken, and the driver appends them to the run's file.

**The search**: ``RayTuneSearch`` is a searcher like the others (``search(space, accuracy, latency, *,
budget_ms, n_evaluations, seed) -> SearchResult``), but each configuration is evaluated in
a Ray Tune trial, ``workers`` at a time, on a local Ray or on a cluster that it joins.

How the pieces fit:

* **Suggestions** come from Ray Tune's ``OptunaSearch`` with a define-by-run space that
  uses the project's encoding (``nas.optuna_search.suggest_config``): a seeded TPE sampler
  for one latency budget (metric ``acc``, maximised, with the budget as an Optuna
  constraint ``upper_ms - budget_ms``), NSGA-II for the whole front (``budget_ms=None``;
  metrics ``["acc", "lat"]``, modes ``["max", "min"]``). The smallest configuration (and
  the largest, for a front) is evaluated first, as in the in-process searchers. Ray Tune
  pickles the searcher, sampler included, so the samplers are the picklable subclasses of
  ``nas.optuna_search`` (Optuna 5.1's NSGA-II holds a thread lock).
* **Chunks**: a Ray trial costs a fraction of a second to over a second of scheduling and
  bookkeeping on a small machine (figures below), so with ``trial_chunk=k`` each trial evaluates the suggested configuration plus
  ``k - 1`` mutations of it (``SearchSpace.mutate``, rng seeded by the search seed and the
  trial number), every one checked against the budget before its accuracy is computed, and
  reports the best of them to Optuna (for a front: the suggested one's values). Every
  evaluated configuration is returned in the trial's metrics (``evaluated_json``) and ends
  up in the history. ``n_evaluations`` caps the configurations planned, as in every
  searcher: a search makes ``ceil(n_evaluations / trial_chunk)`` trials, and the history
  keeps at most ``n_evaluations`` of them.
* **No configuration is evaluated twice**: chunks are planned in the driver, where Tune
  asks for suggestions one at a time, against every configuration already handed out, so
  concurrent trials never duplicate each other. A suggestion already taken is replaced by a
  fresh mutation of it; when none can be found (a nearly exhausted space) the trial
  evaluates nothing and tells Optuna the known result (or, while that is still running, the
  worst accuracy).
* **Models reach the trials once**: ``accuracy`` and ``latency`` go through the object store
  with ``tune.with_parameters`` and are unpickled once per worker process, not once per
  trial (trial actors are reused), so an accuracy model that loads a supernet when
  unpickled (``nas.objectives.DevAccuracy``) does so once per worker. **Both must be
  picklable** with cloudpickle: instances of classes that workers can import. A local Ray
  started here puts the driver's own ``sys.path`` folders on the workers' path, so classes
  from the caller's scripts and tests work; on a cluster, install hwnas (and the models'
  modules) on every node.
* **Reproducibility**: with ``workers=1`` the same seed gives the same sequence of
  suggested configurations (trials run one after the other). With more workers, what TPE
  or NSGA-II suggests next depends on which trials have finished, i.e. on timing, so two
  runs with the same seed can differ.

``last_stats`` holds the wall time of the last search and the part of it that was Ray's:
``wall_s`` (the whole ``search`` call), ``trial_compute_s`` (the trials' own latency and
accuracy time, summed), ``overhead_s = wall_s - trial_compute_s``, ``trials``, and
``startup_s`` / ``fit_s`` (starting or joining Ray; ``Tuner.fit``). With several workers the
trials overlap, so ``overhead_s`` understates Ray's cost (it can even be negative);
``parallel_overhead_s = wall_s - trial_compute_s / workers`` is the time beyond perfect
parallelism. Measured with ``overhead_benchmark`` on 2 busy cores: about 3 s to start Ray,
then 0.3 to 0.7 s per trial beyond the trials' own work (1.3 s without ``reuse_actors``),
hence ``trial_chunk``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nas.search import (
    AccuracyModel,
    Archive,
    LatencyModel,
    SearchResult,
    anchors,
    check_search_args,
    fastest_reachable,
    is_feasible,
    predict,
)
from nas.toy import TOY_SPACE, ToyLatency, toy_accuracy
from supernet.errors import ConfigError, HwnasError
from supernet.io import make_temp_dir, remove_temp_dir
from supernet.space import SearchSpace, SubnetConfig

if TYPE_CHECKING:  # light at import: torch, pandas and the run come with the calls that need them
    import pandas as pd

    from latency.devices import DeviceProfile
    from latency.measure import Workload
    from supernet.model import ElasticBert
    from supernet.workflow import LoadedRun

__all__ = ["RayClusterError", "RayTuneSearch", "check_cluster", "device_resource", "init_ray", "measure_on_cluster",
           "overhead_benchmark"]


class RayClusterError(HwnasError):
    """A Ray cluster that cannot be reached, or a Ray search whose trials failed."""


# ---- starting or joining Ray -----------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address, else ``None``."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _driver_code_paths() -> list[str]:
    """The driver's own import folders (not the interpreter's), for the workers' path."""
    system = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out: list[str] = []
    for p in sys.path:
        full = os.path.realpath(p or os.getcwd())
        inside = any(full == s or full.startswith(s + os.sep) for s in system)
        if os.path.isdir(full) and not inside and full not in out:
            out.append(full)
    return out


def _init_or_clean_up(**kwargs: Any) -> None:
    """``ray.init``; if it fails after starting (e.g. in a post-init hook), shut down again."""
    import ray

    try:
        ray.init(**kwargs)
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        raise


def init_ray(address: str | None = None, *, num_cpus: int = 2, connect_timeout_s: float = 5.0) -> bool:
    """Start a small local Ray (``address=None``) or join the cluster at ``address``.

    Returns ``True`` when this call initialised Ray (the caller then owns the session and
    should ``ray.shutdown()`` it), ``False`` when Ray was already initialised in this process.
    A ``host:port`` address is checked before ``ray.init`` (which retries a failing address
    for a long while and then names no cause), and ``RayClusterError`` says what is wrong:
    nothing listens there (``connect_timeout_s``); Ray would dial another address (it
    replaces a loopback address by the machine's own); or the cluster refuses this process
    for want of its authentication token (``check_cluster``).
    """
    import ray
    from ray.job_config import JobConfig

    if ray.is_initialized():
        return False
    job = JobConfig(code_search_path=_driver_code_paths())
    common: dict[str, Any] = {
        "include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
        "logging_level": "warning", "job_config": job,
    }
    if address is None:
        _init_or_clean_up(num_cpus=num_cpus, **common)
        return True
    check_cluster(address, connect_timeout_s=connect_timeout_s)
    try:
        _init_or_clean_up(address=address, **common)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        raise RayClusterError(f"a Ray cluster answers at {address!r}, but joining it failed ({e}); Ray's own "
                              "messages above say why") from None
    return True


TOKEN_HELP = ("Ray reads the token from RAY_AUTH_TOKEN, or from the file named by RAY_AUTH_TOKEN_PATH (default "
              "~/.ray/auth_token), and sends it only with RAY_AUTH_MODE=token; `ray get-auth-token` on the head "
              "prints the cluster's token")


def check_cluster(address: str, *, connect_timeout_s: float = 5.0) -> None:
    """Raise ``RayClusterError`` naming the cause if this process cannot join the Ray cluster at
    ``address`` (``host:port``; other forms are left to ``ray.init``): nothing listens there,
    Ray would dial an address where nothing listens, or the cluster refuses this process's
    authentication token (missing or wrong)."""
    hp = _host_port(address)
    if hp is None:
        return
    unreachable = (f"could not reach a Ray cluster at {address!r}: start one with `ray start --head` (and pass the "
                   "address it prints), or omit --ray-address to run on a local Ray")
    _probe(hp, connect_timeout_s, unreachable)
    if address.startswith("ray://"):
        return  # Ray Client: its server handles the rest
    try:
        from ray._private.services import canonicalize_bootstrap_address

        dialed = canonicalize_bootstrap_address(address) or address
    except Exception:  # Ray's internals moved: ray.init will report on its own
        return
    dialed_hp = _host_port(dialed)
    if dialed_hp is not None and dialed_hp[0] != hp[0]:
        _probe(dialed_hp, connect_timeout_s,
               f"Ray dials {dialed} for {address!r} (it replaces a loopback address by this machine's), and nothing "
               f"listens there: the head listens on loopback only. Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for hwnas "
               "too (as for `ray start`), or start the head on this machine's address")
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled; no stub names it
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        GcsClient(address=dialed)  # asks the cluster for its id: refused at once without the token
    except AuthenticationError as e:
        said = getattr(e, "message", str(e))
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            raise RayClusterError(f"the Ray cluster at {address!r} uses token authentication and refused this "
                                  f"process, which sent no token (Ray: {said}). Set RAY_AUTH_MODE=token and give the "
                                  f"cluster's token: {TOKEN_HELP}") from None
        raise RayClusterError(f"the Ray cluster at {address!r} refused this process's authentication token (Ray: "
                              f"{said}): give the cluster's token. {TOKEN_HELP}") from None
    except Exception:  # anything else: ray.init reports it
        return


def _probe(hp: tuple[str, int], timeout_s: float, message: str) -> None:
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise RayClusterError(f"{message} ({e})") from None


# ---- shipping the models to the trials once ---------------------------------------------------
_WORKER_CACHE: dict[str, Any] = {}


def _unship(token: str, payload: bytes) -> Any:
    """Unpickle ``payload`` once per process (later trials in the same worker reuse it)."""
    if token not in _WORKER_CACHE:
        import ray.cloudpickle as cloudpickle

        _WORKER_CACHE[token] = cloudpickle.loads(payload)
    return _WORKER_CACHE[token]


class _Once:
    """Pickles as ``(token, payload)`` and unpickles to the object, once per process.

    ``tune.with_parameters`` fetches its parameters from the object store at the start of
    every trial; without this an accuracy model that loads a model when unpickled would
    reload it for every trial. The payload is pickled here, in the driver, so that an
    unpicklable model fails before Ray starts, with a message that says why.
    """

    def __init__(self, obj: Any) -> None:
        import ray.cloudpickle as cloudpickle

        try:
            self.payload = cloudpickle.dumps(obj)
        except Exception as e:
            raise ConfigError(
                "RayTuneSearch sends the accuracy and latency models to Ray workers, so both must be "
                f"picklable (instances of importable classes; no open files, locks or sockets): {e}"
            ) from e
        self.token = uuid.uuid4().hex

    def __reduce__(self) -> tuple[Any, tuple[str, bytes]]:
        return _unship, (self.token, self.payload)


def _forget_parameters(trainable: Any) -> None:
    """Drop the hook by which ``tune.with_parameters`` re-uploads its objects at every later
    ``ray.init`` of this process (Ray keeps it forever; a long session runs many searches).
    Best effort: it reaches into Ray's internals and does nothing if they change."""
    with contextlib.suppress(Exception):
        import inspect

        import ray._private.worker as ray_worker

        fn = trainable
        while not hasattr(fn, "__code__") and hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        registry = inspect.getclosurevars(fn).nonlocals["parameter_registry"]
        ray_worker._post_init_hooks.remove(registry.flush)


# ---- planning trials in the driver ---------------------------------------------------------------
@dataclass
class _Planner:
    """Ray Tune's define-by-run space: suggests a configuration and plans the trial's chunk.

    Called in the driver, once per trial, in suggestion order; ``taken`` holds every
    configuration handed out so far and ``known`` the results of finished evaluations.
    """

    space: SearchSpace
    seed: int
    trial_chunk: int
    total: int | None = None  # configurations to plan in all (n_evaluations): the last chunk may be smaller
    attempts_per_mutation: int = 50
    taken: set[str] = field(default_factory=set)
    known: dict[str, list[float]] = field(default_factory=dict)

    def __call__(self, trial: Any) -> dict[str, Any]:
        from nas.optuna_search import suggest_config

        suggested = suggest_config(trial, self.space)
        size = self.trial_chunk if self.total is None else max(0, min(self.trial_chunk, self.total - len(self.taken)))
        chunk: list[SubnetConfig] = []
        if suggested.key() not in self.taken and size > 0:
            chunk.append(suggested)
            self.taken.add(suggested.key())
        rng = np.random.default_rng([self.seed, trial.number])
        attempts = 0
        while len(chunk) < size and attempts < self.attempts_per_mutation * self.trial_chunk:
            attempts += 1
            cfg = self.space.mutate(suggested, rng)
            if cfg.key() not in self.taken:
                chunk.append(cfg)
                self.taken.add(cfg.key())
        return {
            "hwnas_trial": trial.number,
            "hwnas_suggested": suggested.to_json(),
            "hwnas_known": self.known.get(suggested.key()),
            "hwnas_chunk": [c.to_json() for c in chunk],
        }

    def record(self, result: dict[str, Any]) -> None:
        for row in json.loads(result.get("evaluated_json") or "[]"):
            cfg = SubnetConfig.from_dict(json.loads(row["arch_json"]))
            self.known[cfg.key()] = [row["acc"], row["lat"], row["upper"]]


@functools.cache
def _search_alg_class() -> type:
    """``OptunaSearch`` that sets the latency constraint and records results (built lazily,
    so that importing this module does not import ray)."""
    from ray.tune.search.optuna import OptunaSearch

    from nas.optuna_search import CONSTRAINT_KEY, constraint_value

    class HwnasOptunaSearch(OptunaSearch):
        def __init__(self, planner: _Planner, budget_ms: float | None, **kwargs: Any) -> None:
            super().__init__(space=planner, **kwargs)
            self.planner, self.budget_ms = planner, budget_ms

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self.planner.record(result)
                if self.budget_ms is not None:
                    self._ot_trials[trial_id].set_constraint(
                        CONSTRAINT_KEY, constraint_value(float(result["upper"]), self.budget_ms)
                    )
            super().on_trial_complete(trial_id, result, error)

    return HwnasOptunaSearch


# ---- one trial ----------------------------------------------------------------------------------------
def evaluate_chunk(
    config: dict[str, Any],
    space: SearchSpace,
    accuracy: AccuracyModel,
    latency: LatencyModel,
    *,
    budget_ms: float | None,
    multi_objective: bool,
    infeasible_value: float = 0.0,
) -> dict[str, Any]:
    """The work of one trial, without Ray: the metrics that the trial reports.

    Predicts the latency of the planned configurations (one predictor call), computes the
    accuracy of those whose upper bound fits the budget, and reports ``acc``, ``lat``,
    ``upper``, ``feasible``, ``arch_json`` of the best one (most accurate feasible; for a
    front, the first), ``evaluated_json`` (every evaluation, as a JSON list), ``n_rejected``
    and ``compute_s``.
    """
    t0 = time.perf_counter()
    chunk = [space.validate(SubnetConfig.from_dict(json.loads(s))) for s in config["hwnas_chunk"]]
    evaluated: list[dict[str, Any]] = []
    rejected = 0
    first: tuple[SubnetConfig, float, float] | None = None
    for cfg, (lat, upper) in zip(chunk, predict(latency, chunk), strict=True):
        first = first or (cfg, lat, upper)
        if not is_feasible(upper, budget_ms):
            rejected += 1
            continue
        acc = float(accuracy(cfg))
        if not math.isfinite(acc):
            raise ValueError(f"accuracy model returned {acc} for {cfg.describe()}")
        evaluated.append({"arch_json": cfg.to_json(), "acc": acc, "lat": lat, "upper": upper})

    suggested_here = bool(evaluated) and evaluated[0]["arch_json"] == config["hwnas_suggested"]
    if evaluated and (not multi_objective or suggested_here or config.get("hwnas_known") is None):
        # A front's trial reports the suggested configuration's own values (Optuna learns
        # them for its parameters); a budgeted one the best of its chunk.
        best = evaluated[0] if multi_objective else max(evaluated, key=lambda r: r["acc"])
        report = {**best, "feasible": True}
    elif config.get("hwnas_known") is not None:
        # The suggestion was evaluated by an earlier trial: its known values (the chunk's
        # mutations, if any, are in evaluated_json all the same).
        acc, lat, upper = config["hwnas_known"]
        report = {"arch_json": config["hwnas_suggested"], "acc": acc, "lat": lat, "upper": upper,
                  "feasible": is_feasible(upper, budget_ms)}
    else:
        # Everything rejected by latency (or the suggestion is still running elsewhere):
        # Optuna is told the worst accuracy, as the in-process TPE does.
        if first is None:
            cfg = SubnetConfig.from_dict(json.loads(config["hwnas_suggested"]))
            lat, upper = predict(latency, [cfg])[0]
            first = (cfg, lat, upper)
        cfg, lat, upper = first
        report = {"arch_json": cfg.to_json(), "acc": infeasible_value, "lat": lat, "upper": upper,
                  "feasible": False}
    return {**report, "evaluated_json": json.dumps(evaluated), "n_rejected": rejected,
            "compute_s": time.perf_counter() - t0}


def _trial_dirname(trial: Any) -> str:
    """``trial_00003_<id>`` instead of Ray's default, which spells out the whole config."""
    return f"trial_{trial.config.get('hwnas_trial', 0):05d}_{trial.trial_id}"


def _trainable(config: dict[str, Any], *, models: tuple[AccuracyModel, LatencyModel],
               settings: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, one report."""
    from ray import tune

    accuracy, latency = models
    tune.report(evaluate_chunk(config, accuracy=accuracy, latency=latency, **settings))


# ---- the searcher ---------------------------------------------------------------------------------------
@dataclass
class RayTuneSearch:
    """Optuna TPE (one budget) or NSGA-II (whole front) with each evaluation a Ray Tune trial.

    ``workers`` trials run at once, one CPU each. ``address=None`` starts a local Ray with
    ``num_cpus=workers`` (and shuts it down afterwards); an address (``host:port``,
    ``ray://host:port`` or ``auto``) joins an existing cluster. If Ray is already initialised
    in this process, that session is used and left running. ``storage_path`` is where Ray
    Tune writes its per-trial results (``None``: a temporary folder, removed afterwards).
    ``trial_chunk`` configurations are evaluated per trial (module doc); ``n_evaluations``
    caps the configurations planned (evaluated, or rejected by the latency predictor), so a
    search makes ``ceil(n_evaluations / trial_chunk)`` trials and keeps at most
    ``n_evaluations`` evaluations. ``accuracy`` and ``latency`` must be picklable.

    The rest mirror the in-process searchers: ``n_startup_trials`` (TPE's random start),
    ``population_size`` (NSGA-II; ``None``: ``n_evaluations / 5``, at least 8),
    ``infeasible_value`` (the accuracy told to Optuna for a trial that nothing in the
    budget came out of); ``reuse_actors`` keeps trial processes alive between trials (about
    four times less overhead per trial); ``connect_timeout_s`` bounds the reachability
    check of ``address``.
    """

    name: ClassVar[str] = "ray"
    workers: int = 2
    address: str | None = None
    storage_path: str | None = None
    trial_chunk: int = 1
    n_startup_trials: int = 10
    population_size: int | None = None
    infeasible_value: float = 0.0
    reuse_actors: bool = True
    connect_timeout_s: float = 5.0
    last_stats: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def search(
        self,
        space: SearchSpace,
        accuracy: AccuracyModel,
        latency: LatencyModel,
        *,
        budget_ms: float | None,
        n_evaluations: int,
        seed: int,
    ) -> SearchResult:
        """Run ``n_evaluations`` trials; the history holds every configuration evaluated."""
        from nas.optuna_search import quiet_optuna

        check_search_args(budget_ms, n_evaluations)
        for what, value in (("workers", self.workers), ("trial_chunk", self.trial_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{what} must be a positive integer, got {value!r}")
        multi = budget_ms is None
        method = "ray-nsga2" if multi else "ray-tpe"
        t0 = time.perf_counter()
        self.last_stats = {"wall_s": 0.0, "trial_compute_s": 0.0, "overhead_s": 0.0, "trials": 0}
        archive = Archive(accuracy, budget_ms, n_evaluations)
        if budget_ms is not None and fastest_reachable(space, latency) > budget_ms:
            self.last_stats["wall_s"] = time.perf_counter() - t0
            return archive.result(method)

        models = _Once((accuracy, latency))  # fails here, before Ray starts, if unpicklable
        started = init_ray(self.address, num_cpus=self.workers, connect_timeout_s=self.connect_timeout_s)
        startup_s = time.perf_counter() - t0
        try:
            with quiet_optuna(), self._storage() as storage:
                rows = self._fit(space, models, anchors(space, budget_ms, latency), budget_ms, n_evaluations, seed, storage)
            fit_s = time.perf_counter() - t0 - startup_s
        finally:
            if started:
                import ray

                ray.shutdown()
        result = self._result(archive, rows, method)
        wall = time.perf_counter() - t0
        compute = sum(r["compute_s"] for r in rows)
        self.last_stats = {"wall_s": wall, "trial_compute_s": compute, "overhead_s": wall - compute,
                           "parallel_overhead_s": wall - compute / self.workers, "trials": len(rows),
                           "startup_s": startup_s, "fit_s": fit_s, "workers": self.workers}
        return result

    @contextlib.contextmanager
    def _storage(self) -> Iterator[str]:
        if self.storage_path is not None:
            path = os.path.abspath(self.storage_path)
            os.makedirs(path, exist_ok=True)
            yield path
        else:
            tmp = make_temp_dir("ray")
            try:
                yield str(tmp)
            finally:
                remove_temp_dir(tmp)

    def _fit(
        self,
        space: SearchSpace,
        models: _Once,
        first: list[SubnetConfig],
        budget_ms: float | None,
        n_evaluations: int,
        seed: int,
        storage: str,
    ) -> list[dict[str, Any]]:
        """Run the trials (``first``, the anchors, before the sampler's); their reported metrics
        in trial order."""
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter

        from nas.optuna_search import encode, nsga2_sampler, tpe_sampler

        multi = budget_ms is None
        # Ray Tune pickles the searcher, sampler included (the Tuner's state, searcher checkpoints).
        if multi:
            sampler = nsga2_sampler(seed, n_evaluations, population_size=self.population_size, picklable=True)
        else:
            sampler = tpe_sampler(seed, n_startup_trials=self.n_startup_trials, picklable=True)
        planner = _Planner(space, seed, self.trial_chunk, total=n_evaluations)
        alg = _search_alg_class()(
            planner, budget_ms,
            metric=["acc", "lat"] if multi else "acc",
            mode=["max", "min"] if multi else "max",
            sampler=sampler,
            points_to_evaluate=[encode(space, c) for c in first],
        )
        settings = {"space": space, "budget_ms": budget_ms, "multi_objective": multi,
                    "infeasible_value": self.infeasible_value}
        with_params = tune.with_parameters(_trainable, models=models, settings=settings)
        tuner = tune.Tuner(
            tune.with_resources(with_params, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(alg, max_concurrent=self.workers),
                num_samples=math.ceil(n_evaluations / self.trial_chunk),  # n_evaluations caps accuracy calls
                reuse_actors=self.reuse_actors,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=f"hwnas-{'nsga2' if multi else 'tpe'}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=storage,
                verbose=0,
                failure_config=tune.FailureConfig(fail_fast=True),
            ),
        )
        try:
            grid = tuner.fit()
        finally:
            _forget_parameters(with_params)
        if grid.errors:
            # Re-raise what the accuracy or latency model raised, as the in-process searchers
            # do (a DataError stays a DataError), not Ray's wrapper with the remote traceback.
            err = grid.errors[0]
            cause = getattr(err, "cause", None)
            where = f"in a Ray Tune trial ({len(grid.errors)} of {len(grid)} trials failed)"
            if isinstance(cause, Exception):
                cause.add_note(f"raised {where}")
                raise cause
            last_line = (str(err).splitlines() or [""])[-1]
            raise RayClusterError(f"{type(err).__name__} {where}: {last_line}") from err
        rows = []
        for i in range(len(grid)):
            r = grid[i]
            if r.metrics and "evaluated_json" in r.metrics:
                assert r.config is not None, "every trial has the planner's config"
                rows.append({**r.metrics, "hwnas_trial": r.config["hwnas_trial"]})
        return sorted(rows, key=lambda m: m["hwnas_trial"])

    @staticmethod
    def _result(archive: Archive, rows: list[dict[str, Any]], method: str) -> SearchResult:
        """Every configuration the trials evaluated, in trial order (the planner hands out each
        configuration once), and the rejections they counted."""
        for m in rows:
            for e in json.loads(m["evaluated_json"]):
                if archive.full:  # the last trial's chunk past n_evaluations (ceil(n / chunk) trials)
                    break
                archive.record(SubnetConfig.from_dict(json.loads(e["arch_json"])), e["acc"], e["lat"], e["upper"])
        archive.n_rejected = sum(int(m["n_rejected"]) for m in rows)
        return archive.result(method)


# ---- measuring on the nodes that have a device ------------------------------------------------------
def device_resource(device: str) -> str:
    """The Ray custom resource by which a node says it can time ``device`` (one at a time):
    ``ray start ... --resources '{"device:pi4": 1}'``."""
    return f"device:{device}"


def measure_on_cluster(
    run: LoadedRun,
    profiles: list[DeviceProfile],
    *,
    address: str,
    n: int,
    seed: int = 0,
    reference_every: int = 20,
    noise_rounds: int = 8,
    progress: bool = True,
    connect_timeout_s: float = 5.0,
) -> dict[str, pd.DataFrame]:
    """Measure each profile on a node of the cluster at ``address`` that advertises its
    resource (``device_resource``); every device's sweep at once, each on its own node.

    The node runs the same ``latency.measure.sweep`` as ``hwnas measure`` does here, on the
    same configurations and inputs (``measurement_plan``), starting from the rows already in
    this run's file for the device; each measurement's rows come back as soon as they are
    taken and are appended here. So the file holds the rows a local measurement would write,
    and an interrupted measurement resumes where it stopped. Returns each device's table.
    """
    import ray

    from latency.measure import MeasurementLog
    from latency.workflow import measurement_plan

    started = init_ray(address, connect_timeout_s=connect_timeout_s)
    try:
        have = ray.cluster_resources()
        missing = [p.name for p in profiles if have.get(device_resource(p.name), 0) < 1]
        if missing:
            example = json.dumps({device_resource(missing[0]): 1})
            raise RayClusterError(
                f"no node of the Ray cluster at {address!r} can time {', '.join(missing)}: start such a node with "
                f"`ray start --address HEAD:PORT --resources '{example}'` (the cluster offers "
                f"{sorted(k for k in have if k.startswith('device:')) or 'no devices'})")
        remote = ray.remote(_sweep_on_node)
        supernet = ray.put(run.supernet)  # once, however many devices

        def one(profile: DeviceProfile, position: int) -> pd.DataFrame:
            from tqdm.auto import tqdm

            log = MeasurementLog(run.paths.measurements(profile.name))
            configs, workloads = measurement_plan(run, profile, n=n, seed=seed)
            before = log.path.read_text() if log.path.exists() else ""
            task = remote.options(resources={device_resource(profile.name): 1}, num_cpus=1)
            rows_stream: Any = task.remote(  # a generator task: an ObjectRefGenerator
                profile, supernet, configs, workloads, before, reference_every, noise_rounds)
            streams.append(rows_stream)
            bar = tqdm(desc=f"{profile.name} on the cluster (rows)", position=position, disable=not progress)
            try:
                for ref in rows_stream:
                    rows = ray.get(ref)
                    log.append(rows)
                    bar.update(len(rows))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause
                if isinstance(cause, HwnasError):
                    raise cause from None
                raise RayClusterError(f"measuring {profile.name} on the cluster failed: {type(cause).__name__}: "
                                      f"{cause}") from None
            finally:
                bar.close()
            return log.read()

        streams: list[Any] = []
        pool = ThreadPoolExecutor(max_workers=len(profiles))
        try:
            futures = {p.name: pool.submit(one, p, i) for i, p in enumerate(profiles)}
            return {name: f.result() for name, f in futures.items()}
        except BaseException:
            # One device failed, or Ctrl-C: stop the other sweeps too (their rows so far are kept).
            for stream in streams:
                with contextlib.suppress(Exception):
                    ray.cancel(stream, force=True)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    finally:
        if started:
            ray.shutdown()


def _sweep_on_node(profile: DeviceProfile, supernet: ElasticBert, configs: list[SubnetConfig],
                   workloads: list[Workload], rows_so_far: str, reference_every: int,
                   noise_rounds: int) -> Iterator[list[dict[str, Any]]]:
    """On the device's node (a Ray generator task): ``sweep`` from the rows so far, yielding
    each batch of rows it appends (so the caller stores them as they come)."""
    import queue
    import threading

    from latency.measure import MeasurementLog, sweep

    folder = make_temp_dir("cluster-measure")
    path = folder / "rows.csv"
    if rows_so_far:
        path.write_text(rows_so_far)
    out: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue()

    def work() -> None:
        try:
            sweep(profile, supernet, configs, workloads, MeasurementLog(path, on_append=out.put),
                  reference_every=reference_every, noise_rounds=noise_rounds, progress=False)
            out.put(None)
        except BaseException as e:  # handed to the generator, which raises it in the task
            out.put(e)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        worker.join(timeout=1.0)
        remove_temp_dir(folder)


# ---- how much Ray costs (on nas/toy.py's problem) ----------------------------------------------------------------------------------
@dataclass
class _SleepyAccuracy:
    """An analytic accuracy that costs ``cost_s`` seconds, like a (very small) dev-set pass."""

    cost_s: float = 0.5

    def __call__(self, cfg: SubnetConfig) -> float:
        time.sleep(self.cost_s)
        return toy_accuracy(cfg)


def overhead_benchmark(n_trials: int = 8, workers: int = 2, *, cost_s: float = 0.5,
                       trial_chunk: int = 1, seed: int = 0) -> dict[str, float]:
    """Wall time of the same toy search in-process (Optuna TPE) and as Ray Tune trials.

    The toy is a 4-layer space with an accuracy that sleeps ``cost_s`` per evaluation and a
    budget that every configuration fits, so both evaluate ``n_trials`` configurations (the
    Ray search in ``ceil(n_trials / trial_chunk)`` trials). ``ray_overhead_per_trial_s`` is
    Ray's wall time beyond the ideal ``compute / workers``, per Ray trial, start-up and
    shut-down included;
    ``ray_fit_overhead_per_trial_s`` the same for ``Tuner.fit`` alone.
    """
    from nas.optuna_search import TPESearch

    space, latency, budget = TOY_SPACE, ToyLatency(), 10.0
    t0 = time.perf_counter()
    local = TPESearch().search(space, _SleepyAccuracy(cost_s), latency, budget_ms=budget,
                               n_evaluations=n_trials, seed=seed)
    local_wall = time.perf_counter() - t0
    ray_search = RayTuneSearch(workers=workers, trial_chunk=trial_chunk)
    remote = ray_search.search(space, _SleepyAccuracy(cost_s), latency, budget_ms=budget,
                               n_evaluations=n_trials, seed=seed)
    st = ray_search.last_stats
    ideal = st["trial_compute_s"] / workers
    return {
        "n_trials": n_trials,
        "workers": workers,
        "cost_s": cost_s,
        "inprocess_wall_s": local_wall,
        "inprocess_evaluations": local.n_evaluations,
        "ray_wall_s": st["wall_s"],
        "ray_startup_s": st["startup_s"],
        "ray_fit_s": st["fit_s"],
        "ray_evaluations": remote.n_evaluations,
        "ray_trial_compute_s": st["trial_compute_s"],
        "ray_overhead_s": st["overhead_s"],
        "inprocess_overhead_per_trial_s": (local_wall - local.n_evaluations * cost_s) / n_trials,
        "ray_trials": st["trials"],
        "ray_overhead_per_trial_s": (st["wall_s"] - ideal) / max(1, st["trials"]),
        "ray_fit_overhead_per_trial_s": (st["fit_s"] - ideal) / max(1, st["trials"]),
        "speedup": local_wall / st["wall_s"],
    }

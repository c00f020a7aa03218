"""HAT-style evolutionary search under a predicted-latency budget.

Each generation keeps the best ``parent_size`` candidates as parents and breeds
``mutation_size`` children by ``SearchSpace.mutate`` and ``crossover_size`` children by
``SearchSpace.crossover``; the next population is parents + children (HAT, Wang et al.
2020). A child is checked against the budget with the latency model (upper bound) *before*
its accuracy is computed, and a child already evaluated is redrawn rather than evaluated
again, so ``n_evaluations`` counts distinct configurations.

HAT's settings are population 125, 25 parents, 50 mutations, 50 crossovers, 30 generations
(about 3,000 evaluations of a cheap proxy). Here an evaluation is a dev-set pass of the
supernet, so the defaults keep HAT's proportions (20% parents, 40% mutations, 40%
crossovers) but size the population to the evaluation budget: ``n_evaluations / 5``
(between 4 and 125), which gives about six generations, e.g. 60 evaluations = a population
of 12 (2 parents, 5 mutations, 5 crossovers) for 6 generations. Pass HAT's values
explicitly to reproduce it.

``screen`` (default 4) draws that many feasible children per evaluation and evaluates those a
ridge surrogate, refitted each generation to everything evaluated so far, expects to help most
(``nas.surrogate``): with a budget the highest predicted accuracy, on the whole front the
largest predicted rise above the front at the child's predicted latency. Generation 0 is
never screened (nothing to fit yet). On the main job's rt run, 5 search seeds of 150
evaluations, screening 4 raised the test hypervolume of the front from 0.252 +- 0.006 to
0.259 +- 0.006 (random search 0.233 +- 0.013), and on an r8 run over 3 seeds from 0.544 +- 0.034
to 0.550 +- 0.014 (``scripts/screen_check.py``, README "Screening children"): small gains, inside
the spread over seeds. ``screen=1`` is HAT's evolution unscreened.

Parents are selected from everything evaluated so far. With a budget that is HAT's top-k
by accuracy among feasible candidates (the previous parents are in the population, so this
is the same elitism); without one (``budget_ms=None``, the whole front) parents are ranked
by non-dominated sorting and, within a rank, by crowding distance (NSGA-II).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from nas.pareto import crowding_distance, non_dominated_rank
from nas.search import (
    AccuracyModel,
    Archive,
    Candidate,
    LatencyModel,
    SearchResult,
    check_search_args,
    draw_feasible,
    evaluate_anchors,
    fastest_reachable,
)
from nas.surrogate import RidgeSurrogate, config_features, front_gain
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

__all__ = ["EvolutionSearch", "select_parents"]

Drawn = tuple[SubnetConfig, float, float]  # a configuration, its predicted latency and upper bound


@dataclass
class EvolutionSearch:
    """Evolutionary search (HAT); ``None`` sizes follow the evaluation budget (module doc)."""

    name: ClassVar[str] = "evolution"
    population_size: int | None = None
    parent_size: int | None = None
    mutation_size: int | None = None
    crossover_size: int | None = None
    mutation_prob: float = 0.3
    max_generations: int = 30
    attempts_per_child: int = 50
    anchor: bool = True
    screen: int = 4  # children drawn per evaluation, the surrogate picks (1: none; README, "Screening children")
    surrogate_alpha: float = 1.0

    def sizes(self, n_evaluations: int) -> tuple[int, int, int, int]:
        """``(population, parents, mutations, crossovers)`` for an evaluation budget."""
        pop = self.population_size if self.population_size is not None else int(
            np.clip(round(n_evaluations / 5), 4, 125)
        )
        parents = self.parent_size if self.parent_size is not None else max(2, round(0.2 * pop))
        mutations = self.mutation_size if self.mutation_size is not None else max(1, round(0.4 * pop))
        crossovers = (
            self.crossover_size if self.crossover_size is not None else max(0, pop - parents - mutations)
        )
        if not 1 <= parents <= pop or mutations < 0 or crossovers < 0 or mutations + crossovers < 1:
            raise ConfigError(
                f"evolution sizes do not fit: population {pop}, parents {parents}, "
                f"mutations {mutations}, crossovers {crossovers}; need 1 <= parents <= population "
                "and at least one mutation or crossover per generation"
            )
        return pop, parents, mutations, crossovers

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
        """Run the evolution; see ``nas.search.Searcher``."""
        check_search_args(budget_ms, n_evaluations)
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"mutation_prob must lie in [0, 1], got {self.mutation_prob}")
        if isinstance(self.screen, bool) or not isinstance(self.screen, int) or self.screen < 1:
            raise ConfigError(f"screen must be an integer >= 1 (children drawn per evaluation), got {self.screen!r}")
        pop_size, n_parents, n_mut, n_cross = self.sizes(n_evaluations)
        archive = Archive(accuracy, budget_ms, n_evaluations)
        if budget_ms is not None and fastest_reachable(space, latency) > budget_ms:
            return archive.result(self.name)
        rng = np.random.default_rng(seed)

        # Generation 0: the anchors plus random feasible samples.
        if self.anchor:
            evaluate_anchors(archive, space, latency)
        self._evaluate_new(
            archive, latency, budget_ms, lambda: space.sample(rng), pop_size - len(archive.history)
        )

        for _ in range(self.max_generations - 1):
            if archive.full:
                break
            parents = select_parents(archive.history, n_parents, multi_objective=budget_ms is None)
            if not parents:
                break

            def mutant(parents: list[Candidate] = parents) -> SubnetConfig:
                p = parents[int(rng.integers(len(parents)))]
                return space.mutate(p.config, rng, prob=self.mutation_prob)

            def cross(parents: list[Candidate] = parents) -> SubnetConfig:
                if len(parents) < 2:
                    return mutant(parents)
                i, j = rng.choice(len(parents), size=2, replace=False)
                return space.crossover(parents[int(i)].config, parents[int(j)].config, rng)

            pick = self._screener(archive, space, budget_ms)
            children = self._evaluate_new(archive, latency, budget_ms, mutant, n_mut, pick)
            children += self._evaluate_new(archive, latency, budget_ms, cross, n_cross, pick)
            # Parents + children is HAT's next population; since parents are re-selected from
            # the whole history, which already holds both, nothing else needs keeping.
            if not children:
                break  # nothing new near the parents within the attempt budget: converged
        return archive.result(self.name)

    def _evaluate_new(
        self,
        archive: Archive,
        latency: LatencyModel,
        budget_ms: float | None,
        propose: Callable[[], SubnetConfig],
        count: int,
        pick: Callable[[list[Drawn], int], list[Drawn]] | None = None,
    ) -> list[Candidate]:
        """Draw up to ``count`` new feasible configurations and evaluate them (within the cap);
        with ``pick``, ``screen`` times as many are drawn and ``pick`` keeps ``count``."""
        count = min(count, archive.cap - len(archive.history))
        if count <= 0:
            return []
        wanted = count * (self.screen if pick is not None else 1)
        drawn, rejected = draw_feasible(
            propose, latency, budget_ms, wanted,
            exclude=archive.keys(), max_attempts=self.attempts_per_child * wanted,
        )
        archive.n_rejected += rejected
        if pick is not None and len(drawn) > count:
            drawn = pick(drawn, count)
        out = []
        for cfg, lat, upper in drawn:
            if (c := archive.evaluate(cfg, lat, upper)) is not None:
                out.append(c)
        return out

    def _screener(self, archive: Archive, space: SearchSpace, budget_ms: float | None
                  ) -> Callable[[list[Drawn], int], list[Drawn]] | None:
        """The ``pick`` for this generation: the surrogate fitted to the archive so far, keeping the
        ``count`` drawn children it expects to help most, in the order they were drawn (None: no
        screening)."""
        if self.screen <= 1 or len(archive.history) < 2:
            return None
        model = RidgeSurrogate(self.surrogate_alpha).fit(
            np.stack([config_features(c.config, space) for c in archive.history]),
            [c.accuracy for c in archive.history])
        front = [c for c in archive.history if c.feasible]

        def pick(drawn: list[Drawn], count: int) -> list[Drawn]:
            pred = model.predict(np.stack([config_features(cfg, space) for cfg, _, _ in drawn]))
            if budget_ms is None and front:
                score = front_gain(pred, np.array([lat for _, lat, _ in drawn]),
                                   np.array([c.accuracy for c in front]), np.array([c.latency_ms for c in front]))
            else:
                score = pred
            keep = np.argsort(-score, kind="stable")[:count]
            return [drawn[i] for i in sorted(keep)]

        return pick


def select_parents(candidates: list[Candidate], k: int, *, multi_objective: bool) -> list[Candidate]:
    """The ``k`` best feasible candidates, best first; ties keep evaluation order.

    Single budget: by accuracy. Whole front: by non-domination rank (accuracy up, predicted
    latency down), then by crowding distance within a rank so the front stays spread out.
    """
    pool = [c for c in candidates if c.feasible]
    if not pool:
        return []
    if not multi_objective:
        order = sorted(range(len(pool)), key=lambda i: (-pool[i].accuracy, i))
        return [pool[i] for i in order[:k]]
    acc = np.array([c.accuracy for c in pool])
    lat = np.array([c.latency_ms for c in pool])
    rank = non_dominated_rank(acc, lat)
    crowd = np.zeros(len(pool))
    for r in np.unique(rank):
        members = np.flatnonzero(rank == r)
        crowd[members] = crowding_distance(acc[members], lat[members])
    order = sorted(range(len(pool)), key=lambda i: (int(rank[i]), -crowd[i], i))
    return [pool[i] for i in order[:k]]

"""The main job (``hwnas run``): train -> measure -> fit -> search -> export -> fronts.

Every stage is also its own subcommand; this module only strings them together with
settings small enough for a 2-core machine. Run again after an interruption: training and
measurement resume where they stopped; fitting, searching and exporting are redone, which
is quick because every dev-accuracy score is cached in the run folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from latency.devices import with_overrides
from latency.target import PredictedLatency, Target, target_timer
from latency.workflow import fit_run_device, measure_devices, resolve_device
from nas.export import (
    ExportConfig,
    ImpossibleBudget,
    choose_and_export,
    run_search,
    write_search_history,
)
from nas.fronts import compare
from nas.objectives import DevAccuracy, dev_accuracies
from nas.search import fastest_reachable
from supernet.checks import check_int
from supernet.errors import ConfigError
from supernet.io import write_csv, write_json
from supernet.parallel import Ranks
from supernet.runfolder import RunFolder
from supernet.train import StageConfig
from supernet.workflow import (
    LoadedRun,
    RunSpec,
    evaluation_table,
    open_run,
    train_run,
    write_evaluation,
)


@dataclass(frozen=True)
class JobConfig:
    devices: tuple[str, ...] = ("cpu", "cpu-1t")
    n_measure: int = 40
    repeats: int = 15
    warmup: int = 5
    noise_rounds: int = 4
    # Budgets at these points between the fastest reachable sub-network (0) and the full
    # model (1), by predicted latency: tight, middle and loose.
    budget_points: tuple[float, ...] = (0.2, 0.45, 0.75)
    n_search: int = 50
    dev_subset: int = 400
    search_precision: str = "auto"  # of the dev-subset scoring: bf16 where the CPU has bf16 instructions
    export_device: str | None = None  # one of ``devices``; None: the first
    export_budget: int = 1  # index into budget_points
    # Distillation from the teacher into the exported sub-network (None: none).
    finetune: StageConfig | None = field(default_factory=lambda: StageConfig(epochs=1.0, lr=2e-4))
    finetune_candidates: int = 2  # the search's pick and one more (``finetune_pool``)
    finetune_best_epoch: bool = False  # keep each fine-tuning's epoch with the lowest dev loss
    finetune_choose: str = "dev-score"  # how the fine-tuned candidates are ranked (``finetuned_order``)
    finetune_attention: float = 0.0  # weight of attention distillation in the fine-tuning (0: off)
    train_device: str = "cpu"  # where the training and the fine-tuning run: cpu or cuda (``resolve_train_device``)

    def __post_init__(self) -> None:
        if not self.devices or not all(self.devices):
            raise ConfigError(f"the main job needs device names, e.g. cpu,cpu-1t; got {list(self.devices)}")
        if self.export_device is not None and self.export_device not in self.devices:
            raise ConfigError(f"the export device {self.export_device!r} must be one of the devices "
                              f"{list(self.devices)}: it is exported for on the budgets searched there")
        for name in ("n_measure", "n_search", "repeats", "finetune_candidates"):
            check_int(getattr(self, name), name, 1)
        if not 0 <= self.export_budget < len(self.budget_points):
            raise ConfigError(f"export_budget indexes budget_points, 0..{len(self.budget_points) - 1}; "
                              f"got {self.export_budget}")

    @property
    def exported_on(self) -> str:
        """The device the job exports for: ``export_device``, or the first of ``devices``."""
        return self.export_device or self.devices[0]


def main_job(out: str | Path, spec: RunSpec, job: JobConfig, *, progress: bool = True, log=print,  # noqa: ANN001
             command: str | None = None) -> pd.DataFrame:
    """Every stage on ``spec`` into the run folder ``out``; returns the summary: each search's
    pick per device and budget (``picked_by`` "search"), then what was exported (``picked_by``
    "export": the export's own pick, fine-tuned where ``job.finetune`` asks, and its
    measurement). ``command``: the command line, named in the export's model card."""
    out = Path(out)
    times: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        times[name] = round(time.time() - t0, 1)
        log(f"[{name}] done in {times[name]:.0f} s")

    t0 = time.time()
    train_run(out, spec, resume=RunFolder(out).spec.exists(), progress=progress, ranks=Ranks(device=job.train_device))
    # An earlier job's summary would look current if this one stopped before writing its own.
    for stale in (RunFolder(out).summary, RunFolder(out).job):
        stale.unlink(missing_ok=True)
    run = open_run(out)
    table = evaluation_table(run)
    write_evaluation(run, table)
    stage("train+evaluate", t0)

    t0 = time.time()
    profiles = [with_overrides(resolve_device(out, d), repeats=job.repeats, warmup=job.warmup) for d in job.devices]
    measure_devices(run, profiles, n=job.n_measure, seed=spec.seed, noise_rounds=job.noise_rounds, progress=progress)
    stage("measure", t0)

    t0 = time.time()
    fits = {}
    for device in job.devices:
        fits[device] = fit_run_device(out, run.supernet.shape, device, seed=spec.seed)[0]  # p50 on traffic
        m = fits[device]["metrics"][fits[device]["chosen"]]
        log(f"  {device}: {fits[device]['chosen']} predictor, held-out MAPE {m['mape']:.1%}, "
            f"within 10% {m['within_10pct']:.0%}, Kendall tau {m['kendall_tau']:.2f}")
    stage("fit", t0)

    t0 = time.time()
    targets = {d: Target.of(run, resolve_device(out, d)) for d in job.devices}
    accs = dev_accuracies(run, (t.batch for t in targets.values()), subset_size=job.dev_subset,
                          precision=job.search_precision)
    rows: list[dict[str, Any]] = []
    budgets: dict[str, list[float]] = {}
    for device, target in targets.items():
        acc = accs[target.batch]
        lat = PredictedLatency.of(out, target)
        full_pred = lat.predict([run.space.largest()])[0][0]
        fastest = fastest_reachable(target.search_space(run.space), lat)
        # Rounded up (to 0.001 ms) so that the tightest budget is never below the fastest.
        budgets[device] = [math.ceil(1000 * (fastest + f * max(0.0, full_pred - fastest))) / 1000
                           for f in job.budget_points]
        bests = []
        for budget in budgets[device]:
            result, _ = run_search(run, target, budget, latency=lat, method="evolution", n_evaluations=job.n_search,
                                   seed=spec.seed, accuracy=acc)
            write_search_history(run, result, target, budget, "evolution")
            bests.append((budget, result.best))
        found = [(b, c) for b, c in bests if c is not None]
        with target_timer(run, target) as timer:
            got = timer.measure([c.config for _, c in found])
        measured, full_ms = got.ms, got.full_ms
        for (budget, c), ms in zip(found, measured, strict=True):
            rows.append({"picked_by": "search", "device": device, "regime": target.regime, "length": target.length, "budget_ms": budget, "arch": c.config.describe(),
                         "pred_ms": c.latency_ms, "measured_ms": ms, "full_ms": full_ms, "speedup": full_ms / ms,
                         "meets_budget": ms <= budget, "acc_dev": acc.full_dev(c.config), "acc_test": acc.test(c.config),
                         "full_acc_test": acc.test(run.space.largest())})
    stage("search", t0)

    t0 = time.time()
    acc = accs[targets[job.exported_on].batch]
    budget, report, missed = export_at_budget(run, targets[job.exported_on], budgets[job.exported_on][job.export_budget:],
                                              job, acc, command=command, progress=progress, log=log)
    ft = report["finetuned"]
    rows.append({"picked_by": "export", "device": job.exported_on, "regime": report["regime"],
                 "length": report["length"], "budget_ms": budget, "arch": report["arch"],
                 "pred_ms": report["predicted_latency_ms"], "measured_ms": report["measured_latency_ms"],
                 "full_ms": report["full_model_latency_ms"], "speedup": report["speedup"],
                 "meets_budget": report["measured_latency_ms"] <= budget,
                 # The written model's scores: fine-tuned where it was.
                 "acc_dev": report["written_dev_accuracy"], "acc_test": report["written_test_accuracy"],
                 "full_acc_test": acc.test(run.space.largest())})
    if ft:
        log(f"exported {report['arch']} (best fine-tuned {ft['chosen_by']} of {ft['candidates']} candidates): test "
            f"{report['metric']} {report['test_accuracy']:.4f} with the supernet's weights, {ft['test_accuracy']:.4f} "
            f"after {ft['epochs']:g} epochs of fine-tuning")
    stage("export", t0)

    t0 = time.time()
    _, hv = compare([run], {str(run.folder): targets}, None, run.paths.compare, remeasure_points=6,
                    dev_subset=job.dev_subset, precision=job.search_precision)
    stage("compare", t0)

    summary = pd.DataFrame(rows)
    write_csv(run.paths.summary, summary)
    write_json(run.paths.job, {"times_s": times, "budgets_ms": budgets, "export_budget_ms": budget,
                               "export_missed": missed, "export": report["files"],
                               "predictors": {d: str(run.paths.predictor(d)) for d in job.devices}})
    return summary


def export_at_budget(run: LoadedRun, target: Target, budgets: list[float], job: JobConfig, acc: DevAccuracy, *,
                     command: str | None, progress: bool,
                     log: Callable[[str], None]) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """Export at the first of ``budgets`` (the chosen point, then the looser ones) whose
    re-measurement finds a sub-network that meets it: the main job's budgets are points on
    the predictor's scale, and on a noisy machine the tighter of them can sit inside the
    timing noise of the fastest sub-networks (tiny models: 0.23 ms against 0.232 ms). A user's
    own budget (``hwnas export``) is never loosened. Returns the budget exported at, the
    report, and each budget that was missed with why (``job.json``'s ``export_missed``)."""
    missed: list[dict[str, Any]] = []
    for i, budget in enumerate(budgets):
        export = ExportConfig(budget_ms=budget, n_evaluations=job.n_search, seed=run.spec.seed, progress=progress,
                              finetune=job.finetune, finetune_candidates=job.finetune_candidates,
                              finetune_best_epoch=job.finetune_best_epoch, finetune_attention=job.finetune_attention,
                              finetune_choose=job.finetune_choose,
                              # The budgets are points on this predictor's own scale, fitted
                              # minutes ago: scaling its predictions would move them.
                              drift_tolerance=None, train_device=job.train_device)
        try:
            report = choose_and_export(run, target, run.paths.export(target.profile.name, budget), export,
                                       accuracy=acc, command=command)
        except ImpossibleBudget as e:
            if i + 1 == len(budgets):
                raise
            missed.append({"budget_ms": budget, "why": str(e)})
            log(f"  no sub-network met {budget:g} ms when re-measured; exporting at the next budget, "
                f"{budgets[i + 1]:g} ms ({e})")
            continue
        return budget, report, missed
    raise ImpossibleBudget(f"no budget to export at on {target.profile.name}")  # budgets was empty

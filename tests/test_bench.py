"""The benchmark code path (`hwnas bench --quick`) on the tiny run: a smoke test, no timing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_script
from nas.bench import METHODS, BenchConfig, dynabert_grid, retention_only_space, run_bench
from nas.cli import main


def test_baseline_spaces() -> None:
    from supernet.space import SearchSpace

    space = SearchSpace.for_model(6, 12, 1536)
    grid = dynabert_grid(space)
    assert len(grid) == 12 and not any(c.has_retention for c in grid)
    r = retention_only_space(space)
    assert r.largest() == space.largest() and space.contains(r.smallest())
    assert set(r.smallest().heads) == {12} and all(r.smallest().keep)


def test_spread_verdicts_by_hand() -> None:
    from nas.bench import spread_verdicts

    table = pd.DataFrame({"method": ["ours"] * 3 + ["random"] * 3 + ["dynabert"],
                          "seed": [0, 1, 2, 0, 1, 2, 0],
                          "hypervolume_test": [0.30, 0.32, 0.34, 0.20, 0.22, 0.24, 0.31]})
    v = spread_verdicts(table).set_index("method")
    assert v.loc["ours", "hv_mean"] == pytest.approx(0.32) and v.loc["ours", "hv_std"] == pytest.approx(0.02)
    # random: 0.10 below, beyond 0.02 + 0.02; dynabert (one seed, std 0): 0.01 below, within ours' 0.02
    assert v.loc["random", "ours_minus_this"] == pytest.approx(0.10) and v.loc["random", "ours_beats"]
    assert v.loc["dynabert", "ours_minus_this"] == pytest.approx(0.01) and not v.loc["dynabert", "ours_beats"]
    # Ours on one seed: its spread is unknown, so no verdict, however far ahead the mean.
    one = spread_verdicts(table[table["seed"] == 0]).set_index("method")
    assert one.loc["random", "ours_minus_this"] == pytest.approx(0.10) and pd.isna(one.loc["random", "ours_beats"])


def test_proxy_line_by_hand() -> None:
    from nas.bench import proxy_line

    # Four sub-networks (one fine-tuned twice, counted once): pairs ordered alike 5, oppositely 1 of 6.
    c = pd.DataFrame({"arch": ["a", "b", "c", "d", "a"], "dev_accuracy_before": [0.60, 0.70, 0.65, 0.80, 0.60],
                      "dev_accuracy": [0.70, 0.72, 0.74, 0.80, 0.71]})
    assert "these 4 distinct sub-networks" in proxy_line(c) and "= 0.67" in proxy_line(c)
    assert "not computed (2 distinct" in proxy_line(c[c.arch.isin(["a", "b"])])


def test_loss_intervals_and_one_point_target_by_hand() -> None:
    from nas.bench import loss_intervals, one_point_target
    from nas.stats import compare_with
    from supernet.space import SearchSpace

    space = SearchSpace.for_model(6, 12, 1536)
    a, b = (json.dumps(c.to_dict()) for c in (space.uniform(width=0.5), space.uniform(width=0.25)))
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    teacher = np.eye(2)[labels]  # always right
    wrong_once = np.eye(2)[np.where(np.arange(8) == 3, 0, labels)]  # wrong on example 3
    sp = pd.DataFrame({"method": ["ours", "ours", "ours+ft", "random"], "max_loss_points": [1.0, 2.0, 1.0, 1.0],
                       "speedup": [2.5, 2.5, 4.2, np.nan], "acc_test": [0.875, 0.875, 0.9, np.nan],
                       "arch": ["A", "A", "B", ""], "arch_json": [a, a, b, ""]})
    points = pd.DataFrame({"method": ["ours", "ours+ft"], "arch_json": [a, b],
                           "vs_teacher_points": [np.nan, -1.5], "vs_teacher_ci95_low": [np.nan, -3.0],
                           "vs_teacher_ci95_high": [np.nan, 0.2]})
    asked: list[str] = []

    def logits(cfg):  # noqa: ANN001, ANN202
        asked.append(json.dumps(cfg.to_dict()))
        return wrong_once

    got = loss_intervals(sp, points, logits, teacher, labels, "accuracy")
    want = compare_with(teacher, wrong_once, labels)
    assert asked == [a]  # once for both of ours' rows; the fine-tuned point keeps its own
    assert list(got["vs_teacher_points"].iloc[:2]) == [want["diff_points"]] * 2 == [-12.5] * 2
    assert got["vs_teacher_ci95_low"].iloc[0] == want["ci95_low"] and got["vs_teacher_ci95_high"].iloc[2] == 0.2
    assert np.isnan(got["vs_teacher_points"].iloc[3])
    row = got.iloc[2].copy()
    row["speedup_retimed_median"], row["speedup_retimed_min"], row["speedup_retimed_max"] = 3.8, 3.1, 4.4
    t = one_point_target(row, "fine-tuned", 4.0)  # 4.2x once, but a median of 3.8x: not met
    assert not t["met"] and t["gap"] == "0.20x short; 0.50 points more than 1.0 lost on test"
    assert "median 3.80x, 3.10-4.40x" in t["measured"]
    assert "-1.50 points on test (95% CI -3.00 to +0.20)" in t["measured"]
    row["speedup_retimed_median"] = 4.3  # fast enough, but chosen on dev and 1.5 points lost on test
    t = one_point_target(row, "fine-tuned", 4.0)
    assert not t["met"] and t["gap"] == "0.50 points more than 1.0 lost on test"
    row["vs_teacher_points"] = -0.9
    assert one_point_target(row, "fine-tuned", 4.0)["met"]
    assert one_point_target(None, "supernet weights", 2.0)["gap"] == "no point within 1.0 point on dev"


def test_the_point_at_a_loss_is_chosen_on_dev_not_test() -> None:
    from nas.bench import speedup_at_loss

    table = pd.DataFrame({"method": ["ours"] * 3, "speedup": [1.5, 2.5, 3.5],
                          "acc_dev_full": [0.82, 0.815, 0.79], "acc_test": [0.80, 0.77, 0.83],
                          "arch": ["A", "B", "C"], "arch_json": ["a", "b", "c"]})
    sp = speedup_at_loss(table, full_dev=0.82).set_index("max_loss_points")
    # C is the fastest within a point of the teacher on test (0.83), but 3 points below on dev.
    assert sp.loc[1.0, "arch"] == "B" and sp.loc[1.0, "acc_test"] == 0.77 and sp.loc[1.0, "acc_dev_full"] == 0.815
    assert sp.loc[2.0, "arch"] == "B"
    none = speedup_at_loss(table, full_dev=0.90)
    assert (none["arch"] == "").all() and none["speedup"].isna().all()


@pytest.mark.parametrize("vnni, says", [(True, "(Some CPU 9000, x86_64; VNNI, "),
                                         (False, "(Some CPU 9000, x86_64; no VNNI: INT8 weights in 7 bits, "),
                                         (None, "(Some CPU 9000, x86_64, ")])
def test_the_page_names_the_cpu_and_whether_it_has_vnni(monkeypatch: pytest.MonkeyPatch, vnni: bool | None,
                                                         says: str) -> None:
    """Pages made on different CPUs say so: INT8's figures depend on VNNI (7-bit weights without it)."""
    import platform

    import nas.bench

    monkeypatch.setattr(nas.bench, "cpu_model", lambda: "Some CPU 9000")
    monkeypatch.setattr(nas.bench, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert f"({nas.bench.cpu_description()}, " == says


def test_quick_bench_writes_the_page(job: Path, tmp_path: Path) -> None:
    assert main(["bench", "--run", str(job), "--quick", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "BENCHMARKS.md").read_text()
    from supernet.evaluate import cpu_model

    assert f"({cpu_model()}, " in page  # the header names this CPU
    for part in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 7.", "bench_rt_cpu_fronts.png"):
        assert part in page
    fronts = pd.read_csv(tmp_path / "bench_rt_cpu_fronts.csv")
    assert set(fronts["method"]) == set(METHODS)
    assert (fronts["lat_measured_ms"] > 0).all() and fronts["acc_test"].between(0, 1).all()
    # The stock deployments, timed in the same run: every speed-up against the fastest stock fp32 one.
    stock = pd.read_csv(tmp_path / "bench_rt_cpu_deployments.csv").set_index("deployment")
    assert list(stock.index) == ["stock-fp32", "stock-ort", "stock-int8", "ours-full"]
    fastest = stock.loc[["stock-fp32", "stock-ort"], "lat_ms"].min()
    # Chained through our full model, each ratio from one timing (fronts, then stock).
    ours_full = stock.loc["ours-full", "lat_ms"]
    assert fronts["speedup_vs_stock"].to_numpy() == pytest.approx(
        (fronts["full_model_ms"] / fronts["lat_measured_ms"] * fastest / ours_full).to_numpy())
    assert fronts["speedup_vs_stock_int8"].to_numpy() == pytest.approx(
        (fronts["speedup"] * stock.loc["stock-int8", "lat_ms"] / ours_full).to_numpy())
    assert "What a user could deploy without us" in page and "timed on real traffic" in page
    assert not list(tmp_path.glob(".*")), "the page's files were written together: no staging folder is left"


def test_budget_sweep_exports_and_remeasures(job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.bench
    import nas.export
    from latency.measure import Measured
    from latency.target import Target
    from latency.workflow import resolve_device
    from supernet.workflow import open_run

    run = open_run(job)
    # The full model timed just before an export (the sweep's budgets: alone; ours+ft's: in the
    # export's drift check) is a fixed 50 ms here, so the test sees which timing the budgets come
    # from (the fronts time the full model beside their points, at well under 50 ms here).
    class FullAt50ms:
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def measure(self, configs, **kw):  # noqa: ANN001, ANN003, ANN202
            return self.inner.measure(configs, **kw) if configs else Measured([], 50.0)

        def __getattr__(self, name: str):  # noqa: ANN204  (the rest is the real timer's)
            return getattr(self.inner, name)

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc) -> None:  # noqa: ANN002
            self.inner.close()

    real = nas.bench.target_timer
    monkeypatch.setattr(nas.bench, "target_timer", lambda r, t: FullAt50ms(real(r, t)))
    real_drift = nas.export.device_drift  # where ours+ft's export times the full model
    monkeypatch.setattr(nas.export, "device_drift", lambda *a, **kw: {
        **(d := real_drift(*a, **kw)), "measured_ms": [50.0, *d["measured_ms"][1:]], "ratio": 1.0})
    # Budgets far above the tiny model's own latency (timing noise under a loaded machine must
    # not push them below the fastest predicted sub-network), so that every point exports.
    # Speed-up 0.05 (a budget of 20x the full model) fine-tunes the most accurate points.
    cfg = BenchConfig(n_evaluations=8, budget_fractions=(20.0, 40.0), front_points=3, rounds=1, dev_subset=32,
                      finetune_speedups=(0.05,), finetune_epochs=0.5, finetune_augment=1,
                      finetune_attention=0.5, finetune_choose="dev-loss")
    run_bench(run, Target.of(run, resolve_device(job, "cpu")), cfg, tmp_path, command="test")
    ft = pd.read_csv(tmp_path / "bench_rt_cpu_finetuned.csv")
    fronts = pd.read_csv(tmp_path / "bench_rt_cpu_fronts.csv")
    assert list(ft["method"]) == ["ours+ft", "dynabert+ft"]  # the same fine-tuning for ours and the baseline
    # ours+ft is the export a user gets at that budget, with its fine-tuned weights.
    report = json.loads((job / "bench" / "export_0.05x_ft" / "report.json").read_text())
    assert report["weights"] == "fine-tuned" and ft["arch"].iloc[0] == report["arch"]
    # Both fine-tunings distil on the train split plus one word-replaced copy of each example,
    # with the teacher's logits computed once for both (their count must match the texts).
    assert report["finetuned"]["augmented_copies"] == 1 and report["finetuned"]["texts"] > len(run.splits["train"])
    assert list((job / "bench").glob("finetune_*_a1*")) and list((job / "bench" / "export_0.05x_ft").glob(
        "finetune_*_a1*"))
    assert "word-replaced copies of each train example" in (tmp_path / "bench_rt_cpu.md").read_text()
    # ... and both with the attention loss (from the rewired teacher), the page naming it.
    assert report["finetuned"]["attention_weight"] == 0.5 and list((job / "bench").glob("finetune_*_aw0.5_*"))
    assert "--finetune-attention 0.5" in (tmp_path / "bench_rt_cpu.md").read_text()
    assert ft["acc_test"].iloc[0] == report["finetuned"]["test_accuracy"] and ft["speedup"].iloc[0] == report["speedup"]
    assert ft["budget_ms"].iloc[0] == report["budget_ms"] == 50.0 / 0.05  # from the fresh timing, not the fronts'
    # Its speed-ups against stock fp32 and INT8: those of the stock models timed beside it in that export.
    assert ft["speedup_vs_stock"].iloc[0] == pytest.approx(report["speedup_vs_stock"]["ours_vs_fastest_stock_fp32"])
    assert ft["speedup_vs_stock_int8"].iloc[0] == pytest.approx(report["speedup_vs_stock"]["ours_vs_stock_int8"])
    assert "speedup_vs_stock_int8" in (tmp_path / "bench_rt_cpu.md").read_text().split("`dynabert+ft` is")[1]
    assert fronts["full_model_ms"].iloc[0] < 50.0
    tried = json.loads(ft["ft_candidates"].iloc[0])  # every sub-network the export fine-tuned, on the page too
    assert tried == report["finetune_candidates"] and 1 <= len(tried) <= 3
    # Ranked by the fine-tuning loss on dev (--finetune-choose dev-loss): the lowest is exported
    # (the budget is 20x the full model's latency, so the confirmation keeps the first).
    lowest = min(tried, key=lambda c: (c["dev_loss"], tried.index(c)))
    assert report["arch_key"] == lowest["arch_key"] and report["finetuned"]["chosen_by"] == "dev-loss"
    assert "--finetune-choose dev-loss" in (tmp_path / "bench_rt_cpu.md").read_text()
    assert all(c["arch"] in (tmp_path / "bench_rt_cpu.md").read_text() for c in tried)
    dyn = fronts[fronts["method"] == "dynabert"]
    assert ft["arch_key"].iloc[1] == dyn.loc[dyn["acc_dev_full"].idxmax(), "arch_key"]
    assert ft["acc_test"].between(0, 1).all() and ft["acc_test_before"].between(0, 1).all()
    # Each fine-tuned point against the teacher on the same test sentences, with its interval.
    assert (ft["vs_teacher_ci95_low"] <= ft["vs_teacher_points"]).all()
    assert (ft["vs_teacher_points"] <= ft["vs_teacher_ci95_high"]).all()
    assert ft["vs_teacher_points"].iloc[0] == pytest.approx(report["vs_teacher"]["ours"]["diff_points"])
    teacher_test = json.loads((tmp_path / "bench_rt_cpu_summary.json").read_text())["full_test"]
    # The grid point's difference: its own test score minus the teacher's.
    assert ft["vs_teacher_points"].iloc[1] == pytest.approx(100 * (ft["acc_test"].iloc[1] - teacher_test))
    sp = pd.read_csv(tmp_path / "bench_rt_cpu_speedup.csv").fillna({"arch": "", "arch_json": ""})
    assert "ours+ft" in set(sp["method"])
    # Every point at a fixed loss has its paired interval; a fine-tuned one keeps the export's.
    found = sp[sp["arch"] != ""]
    assert len(found) and (found["vs_teacher_ci95_low"] <= found["vs_teacher_points"]).all()
    assert (found["vs_teacher_points"] <= found["vs_teacher_ci95_high"]).all()
    assert np.allclose(found["vs_teacher_points"], 100 * (found["acc_test"] - teacher_test))
    if (sp["method"] == "ours+ft").any() and (found["method"] == "ours+ft").any():
        assert found[found["method"] == "ours+ft"]["vs_teacher_ci95_low"].iloc[0] == pytest.approx(
            ft["vs_teacher_ci95_low"].iloc[0])
    # The 1-point points were timed again (5 fresh timers): median within min..max; none elsewhere.
    again = found[found["max_loss_points"] == 1.0]
    assert (again["speedup_retimed_min"] > 0).all()
    assert (again["speedup_retimed_min"] <= again["speedup_retimed_median"]).all()
    assert (again["speedup_retimed_median"] <= again["speedup_retimed_max"]).all()
    assert sp[sp["max_loss_points"] == 2.0]["speedup_retimed_median"].isna().all()
    assert list((job / "bench").glob("finetune_*/model.safetensors"))
    comp = pd.read_csv(tmp_path / "bench_rt_cpu_compliance.csv").fillna({"error": ""})
    assert len(comp) == 2 and (comp["error"] == "").all()
    assert list(comp["budget_ms"]) == [20.0 * 50.0, 40.0 * 50.0]
    # The sweep's exports time no stock deployments (the fronts' section did, in this run); the
    # fine-tuned export above does.
    swept = [p for p in (job / "bench").glob("export_*/report.json") if not p.parent.name.endswith("_ft")]
    assert len(swept) >= 2 and all(json.loads(p.read_text())["deployments"] is None for p in swept)
    assert report["deployments"] is not None
    # The hypervolume over search seeds: every searched method three times, the grid once.
    seeds = pd.read_csv(tmp_path / "bench_rt_cpu_hypervolume_seeds.csv")
    counts = seeds.groupby("method")["seed"].apply(sorted).to_dict()
    assert counts == {"ours": [0, 1, 2], "retention": [0, 1, 2], "random": [0, 1, 2], "dynabert": [0]}
    assert seeds["hypervolume_test"].between(0, 1).all() and (seeds["points"] >= 1).all()
    assert "ours beats a method only when" in (tmp_path / "bench_rt_cpu.md").read_text()
    assert (comp["fresh_measured_ms"] > 0).all() and (comp["realized_over_ideal"] > 0).all()
    assert np.allclose(comp["budget_use"], comp["fresh_measured_ms"] / comp["budget_ms"])
    assert (comp["step_ups"] >= 0).all() and (comp["step_downs"] >= 0).all()
    assert ((comp["step_up_tries"] > 0) == (comp["step_ups"] > 0)).all() and (comp["step_up_tries"] <= 2).all()
    # Budgets far above the full model: the last timing before writing keeps every pick.
    assert comp["confirmed"].all() and (comp["fallbacks"] == 0).all() and (comp["machine_drift"] > 0).all()
    assert np.allclose(comp["fresh_share"], 1 / comp["speedup"]) and comp["share_meets"].all()
    assert "budget use >= 0.9" in (tmp_path / "bench_rt_cpu.md").read_text()
    # The predictor table beside the noise of the full model's own timings across the measurement.
    page = (tmp_path / "bench_rt_cpu.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| device | chosen |"))
    assert "reference_within_10pct" in header and "reference_median_dev" in header and "| passes |" in header
    assert "the full model's own timings across the measurement" in page


@pytest.mark.parametrize("args, why", [
    (["--budgets", "0.2,1.5"], r"\(0, 1\]"),
    (["--budgets", "0.2,x"], "numbers separated by commas"),
    (["--front-points", "1"], "--front-points: must be an integer >= 2"),
    (["--dev-subset", "-5"], "--dev-subset: must be an integer >= 0"),
])
def test_bench_rejects_bad_settings(job: Path, tmp_path: Path, args: list[str], why: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import re

    assert main(["bench", "--run", str(job), "--out", str(tmp_path), *args]) == 2
    assert re.search(why, capsys.readouterr().err)
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_bench_settings_reach_the_config(job: Path, tmp_path: Path, bench_configs: list) -> None:

    seen = bench_configs
    with pytest.raises(SystemExit):
        main(["bench", "--run", str(job), "--out", str(tmp_path), "--budgets", "0.25,0.5", "--front-points", "4",
              "--dev-subset", "300", "--n", "7", "--finetune-candidates", "2", "--retimes", "3",
              "--finetune-best-epoch", "--finetune-augment", "2", "--finetune-unlabeled", "0",
              "--finetune-attention", "0.5", "--finetune-choose", "dev-loss"])
    cfg = seen[0]
    assert cfg.budget_fractions == (0.25, 0.5) and cfg.front_points == 4 and cfg.dev_subset == 300
    assert cfg.n_evaluations == 7 and cfg.finetune_candidates == 2 and cfg.retimes == 3 and cfg.finetune_best_epoch
    assert cfg.finetune_augment == 2 and cfg.finetune_unlabeled == 0 and cfg.finetune_attention == 0.5
    assert cfg.finetune_choose == "dev-loss"
    with pytest.raises(SystemExit):  # by default the searches score the whole dev split
        main(["bench", "--run", str(job), "--out", str(tmp_path)])
    assert seen[1].dev_subset is None and BenchConfig().dev_subset is None


def test_dev_subset_check_scores_each_methods_fronts_per_seed(job: Path, tmp_path: Path) -> None:
    """scripts/dev_subset_check.py: the benchmark's hypervolume over search seeds, once per dev
    subset size (0: the whole dev split); bad input one line, exit 2, nothing written."""
    run, script, csv, done = _seed_check(job, tmp_path, "dev_subset_check.py", "--subsets", "16,0", "--n", "6")
    got = pd.read_csv(csv, dtype={"dev_subset": str})
    assert got.dev_subset.unique().tolist() == ["16", "all"] and set(got.method) == set(METHODS)
    for _, g in got.groupby("dev_subset"):
        seeds = g.groupby("method").seed.nunique()
        assert seeds["dynabert"] == 1 and (seeds.drop("dynabert") == 2).all()  # the grid does not search
        assert g.hypervolume_test.between(0, 1).all() and (g.points >= 1).all() and (g.points <= 3).all()
    assert "ours_beats" in done.stdout and "dev subset all" in done.stdout
    _rejects_bad_input(script, run, tmp_path, [(["--subsets", "x"], "--subsets takes sizes"),
                                               (["--subsets", "-1"], "--subsets takes sizes"),
                                               (["--seeds", "0"], "--seeds >= 1")])


def test_screen_check_scores_each_searchs_front_per_seed(job: Path, tmp_path: Path) -> None:
    """scripts/screen_check.py: the evolution with and without screened children, and random
    search, over search seeds; every scored front point written; bad input one line, exit 2."""
    run, script, csv, done = _seed_check(job, tmp_path, "screen_check.py", "--screens", "1,3", "--n", "8")
    got = pd.read_csv(csv)
    assert set(got.method) == {"screen1", "screen3", "random"}
    assert (got.groupby("method").seed.nunique() == 2).all()
    assert (got.groupby(["method", "seed"]).size() <= 3).all()
    assert got.acc_dev.between(0, 1).all() and got.acc_test.between(0, 1).all() and (got.lat_rel > 0).all()
    assert "test hypervolume" in done.stdout and "ours_beats" in done.stdout
    _rejects_bad_input(script, run, tmp_path, [(["--screens", "x"], "--screens takes integers"),
                                               (["--screens", "0"], "--screens takes integers"),
                                               (["--front-points", "1"], "--front-points >= 2")])


def _seed_check(job: Path, tmp_path: Path, name: str, *args: str) -> tuple[Path, Path, Path, subprocess.CompletedProcess[str]]:
    """Run a search-seed check script (2 seeds, 3 front points) on a copy of the job's run (its
    scores land in the run's cache); returns the run, the script, its --out CSV and the finished
    process, which must have succeeded."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("run.lock"))
    script = Path(__file__).resolve().parent.parent / "scripts" / name
    csv = tmp_path / "out.csv"
    done = run_script(script, run, *args, "--seeds", "2", "--front-points", "3", "--out", csv)
    assert done.returncode == 0, done.stderr
    return run, script, csv, done


def _rejects_bad_input(script: Path, run: Path, tmp_path: Path, cases: list[tuple[list[str], str]]) -> None:
    """A check script given each of ``cases`` (arguments, what its one line must say), then a run
    folder that does not exist: exit 2, one line and no traceback, and its --out not written.
    The first case starts the script as a user does (a new interpreter), the others in this
    process (``run_script``)."""
    bad_csv = tmp_path / "bad.csv"
    for i, (args, said) in enumerate([*cases, ([], "")]):
        folder = run if args else tmp_path / "none"
        bad = run_script(script, folder, *args, "--out", bad_csv, new_interpreter=i == 0)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and not bad_csv.exists()


@pytest.mark.parametrize("args, why", [(["--task", "sst2"], "--task takes rt or r8, got 'sst2'"),
                                       (["--task"], "--task takes rt or r8, got ''"),
                                       (["--fast"], "unknown argument '--fast'")])
def test_bench_script_rejects_bad_arguments_before_anything_runs(args: list[str], why: str) -> None:
    """A wrong argument to scripts/bench.sh is one line on stderr and exit 2, before setup or training start."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "scripts" / "bench.sh"), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0]


def test_compliance_check_sweeps_budgets_and_says_whether_they_held(job: Path, tmp_path: Path) -> None:
    """scripts/compliance_check.py: the benchmark's budget sweep alone, one exported and freshly
    timed row per budget and the two targets' verdicts; bad input one line, exit 2, nothing written."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("run.lock"))
    script = Path(__file__).resolve().parent.parent / "scripts" / "compliance_check.py"
    csv = tmp_path / "sweep.csv"
    # Budgets far above the tiny model's latency: timing noise cannot make them impossible.
    done = run_script(script, run, "--budgets", "20,40", "--n", "6", "--finalists", "2", "--dev-subset", "32",
                      "--exports", tmp_path / "exports", "--out", csv)
    assert done.returncode == 0, done.stderr
    got = pd.read_csv(csv).fillna({"error": ""})
    assert list(got["fraction"]) == [20.0, 40.0] and (got["error"] == "").all()
    assert np.allclose(got["budget_use"], got["fresh_measured_ms"] / got["budget_ms"])
    assert got["fresh_meets"].all() and got["share_meets"].all() and (got["step_up_tries"] <= 2).all()
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["export_20.00", "export_40.00"]
    assert "2 budgets: compliance 2/2 in ms, 2/2 as a share" in done.stdout
    _rejects_bad_input(script, run, tmp_path, [(["--budgets", "x"], "--budgets takes positive shares"),
                                               (["--budgets", "0.5,-1"], "--budgets takes positive shares"),
                                               (["--n", "0"], "--n and --finalists positive")])


def test_the_screen_reaches_the_evolutions_of_search_and_bench(job: Path, tmp_path: Path, bench_configs: list,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--screen` reaches the config of `hwnas bench` (full and quick), and the evolutions that
    `hwnas search` and the benchmark's searches build (random search never gets one)."""
    import nas.bench
    import nas.export
    from latency.target import Target
    from latency.workflow import resolve_device
    from nas.objectives import DevAccuracy
    from nas.search import make_searcher
    from supernet.workflow import open_run

    for extra in ([], ["--quick"]):
        with pytest.raises(SystemExit):
            main(["bench", "--run", str(job), "--out", str(tmp_path), "--screen", "1", *extra])
        assert bench_configs[-1].screen == 1
    assert BenchConfig().screen is None and BenchConfig.quick().screen is None
    built: list[tuple[str, dict]] = []

    def spy(name: str, **kwargs: object):  # noqa: ANN202
        built.append((name, kwargs))
        return make_searcher(name, **kwargs)

    monkeypatch.setattr(nas.export, "make_searcher", spy)
    assert main(["search", "--run", str(job), "--device", "cpu", "--front", "--n", "4", "--screen", "2"]) == 0
    assert built == [("evolution", {"screen": 2})]
    monkeypatch.setattr(nas.bench, "make_searcher", spy)
    run = open_run(job)
    target = Target.of(run, resolve_device(run.folder, "cpu"), None)
    cands = nas.bench._candidates(run, target, DevAccuracy(run, subset_size=16, batch=target.batch),
                                  BenchConfig(n_evaluations=4, screen=3), progress=False)
    assert set(cands) == set(METHODS) and all(cands.values())
    assert built[1:] == [("evolution", {"screen": 3}), ("evolution", {"screen": 3}), ("random", {})]


def test_the_bench_searches_at_the_devices_precisions(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a profile that runs int8 sub-networks, ours and random search what `hwnas export`
    searches there (fp32 and int8); the DynaBERT grid and retention-only stay fp32."""
    import dataclasses

    import nas.bench
    from latency.target import Target
    from latency.workflow import resolve_device
    from nas.objectives import DevAccuracy
    from nas.search import make_searcher
    from supernet.workflow import open_run

    spaces: list[tuple[str, tuple[str, ...]]] = []

    def spy(name: str, **kwargs: object):  # noqa: ANN202
        searcher = make_searcher(name, **kwargs)
        search = searcher.search

        def recorded(space, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            spaces.append((name, space.precision_choices))
            return search(space.with_precisions(("fp32",)), *args, **kw)  # int8 graphs: slow, and not the point

        searcher.search = recorded
        return searcher

    monkeypatch.setattr(nas.bench, "make_searcher", spy)
    run = open_run(job)
    cpu = Target.of(run, resolve_device(run.folder, "cpu"), None)
    both = dataclasses.replace(cpu, profile=dataclasses.replace(cpu.profile, precisions=("fp32", "int8")))
    cands = nas.bench._candidates(run, both, DevAccuracy(run, subset_size=16, batch=both.batch),
                                  BenchConfig(n_evaluations=4), progress=False)
    assert spaces == [("evolution", ("fp32", "int8")), ("evolution", ("fp32",)), ("random", ("fp32", "int8"))]
    assert all(c.config.precision == "fp32" for c in cands["dynabert"])

"""The command line's own rules (registry, flag spellings) and the library functions its
commands call: the input length, the measurement kit, the quick benchmark, a sweep's summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nas.cli import COMMANDS, _timing_lines, build_parser, main

ORDER = ["run", "train", "eval", "exits", "early-exit", "measure", "fit", "search", "export", "compare", "bench", "extract",
         "predict"]


def test_every_command_registers_its_own_options() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert list(sub.choices) == ORDER
    for (_, handler), name in zip(COMMANDS, ORDER, strict=True):
        assert handler.__name__ == f"cmd_{name.replace('-', '_')}"
        assert sub.choices[name].get_default("func") is handler
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0


def test_the_cli_offers_the_choices_the_configs_accept() -> None:
    """The CLI spells its choice lists itself (it imports nothing heavy before --help); they must
    stay those the configurations validate against."""
    from nas.exit_search import CHOICES
    from nas.export import FINETUNE_CHOICES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    offered = {(name, action.dest): tuple(action.choices) for name, command in sub.items()
               for action in command._actions if action.dest in ("choose", "finetune_choose")}
    assert offered[("early-exit", "choose")] == CHOICES
    assert {v for (_, dest), v in offered.items() if dest == "finetune_choose"} == {FINETUNE_CHOICES}
    assert sum(dest == "finetune_choose" for _, dest in offered) >= 3  # export, run, bench


def test_the_early_exit_help_states_the_search_defaults() -> None:
    """The CLI leaves --candidates / --finalists at None so that ExitSearch's own defaults apply;
    the help spells them out and must keep naming the ones that apply."""
    from nas.exit_search import ExitSearch

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    helps = {action.dest: action.help for action in sub["early-exit"]._actions}
    assert f"(default: {ExitSearch.candidates})" in helps["candidates"]
    assert f"(default: {ExitSearch.finalists};" in helps["finalists"]


# --- compare: --device NAMES, --devices TOML; the old spellings still work ---------------------

HV_COLS = ["front", "n_points", "hypervolume", "best_acc", "fastest_lat"]


@pytest.fixture
def seen_targets(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces the fronts' computation: records the targets compare would be handed."""
    import nas.fronts

    seen: list[dict[str, Any]] = []

    def fake_compare(runs, targets, methods, out, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(targets)
        return pd.DataFrame(), pd.DataFrame(columns=HV_COLS)

    monkeypatch.setattr(nas.fronts, "compare", fake_compare)
    return seen


def _devices(seen: list[dict[str, Any]]) -> dict[str, str]:
    """{device name: profile name} of the one run compare was handed."""
    ((_, targets),) = seen[-1].items()
    return {name: t.profile.name for name, t in targets.items()}


def test_export_says_each_step_up_search_and_what_its_timings_chose() -> None:
    def step(kind: str, arch: str, ms: float, meets: bool, **kw: object) -> dict:
        return {"step": kind, "arch": arch, "predicted_ms": 2.0, "upper_ms": 3.0, "measured_ms": ms,
                "meets_budget": meets, **kw}

    r = {"device": "cpu", "step_downs": [
        step("down", "L4", 1.5, True),
        step("up", "L6a", 5.0, False, scale=0.5, taken=False), step("up", "L6b", 5.5, False, scale=0.5, taken=False),
        step("up", "L5", 2.8, True, scale=0.76, recheck_ms=3.4, taken=True),
        step("confirm", "L5", 3.9, True, taken=True)]}
    assert _timing_lines(r) == [
        "  finalist L4: predicted 2.00 ms (upper 3.00), measured 1.50 ms -> meets the budget",
        "  step up: searching again with every prediction scaled by 0.50 (measured / upper bound)",
        "  more accurate L6a: predicted 2.00 ms (upper 3.00), measured 5.00 ms -> misses",
        "  more accurate L6b: predicted 2.00 ms (upper 3.00), measured 5.50 ms -> misses",
        "  step up: searching again with every prediction scaled by 0.76 (measured / upper bound)",
        "  more accurate L5: predicted 2.00 ms (upper 3.00), measured 2.80 ms -> within 95% of the budget; "
        "timed again alone 3.40 ms -> stepping up",
        "  timed again before writing L5: predicted 2.00 ms (upper 3.00), measured 3.90 ms -> meets the budget: "
        "written"]
    # A step-up search that found nothing more accurate timed nothing: said before the last timing.
    quiet = {"device": "cpu", "step_downs": [step("down", "L4", 1.5, True), step("confirm", "L4", 1.6, True, taken=True)],
             "step_up_searches": [{"scale": 0.73, "candidates": 5, "better_on_dev": 0, "stepped_up_to": None}]}
    assert _timing_lines(quiet) == [
        "  finalist L4: predicted 2.00 ms (upper 3.00), measured 1.50 ms -> meets the budget",
        "  step up: searching again with every prediction scaled by 0.73 (measured / upper bound): none of its 5 "
        "candidates beat the pick on the whole dev split",
        "  timed again before writing L4: predicted 2.00 ms (upper 3.00), measured 1.60 ms -> meets the budget: "
        "written"]
    # A speed-up's budget moves with the full model timed beside the pick: each line says where it stood.
    moved = {"device": "cpu", "budget_ms": 1.576, "step_downs": [
        step("down", "L3", 1.29, True, budget_now_ms=1.576),
        step("confirm", "L3", 1.75, True, budget_now_ms=1.926, taken=True)]}
    assert _timing_lines(moved) == [
        "  finalist L3: predicted 2.00 ms (upper 3.00), measured 1.29 ms -> meets the budget",
        "  timed again before writing L3: predicted 2.00 ms (upper 3.00), measured 1.75 ms (budget 1.93 ms in this "
        "timing) -> meets the budget: written"]
    assert _timing_lines({**quiet, "step_downs": quiet["step_downs"][:1]})[-1].startswith("  step up: searching")
    # The pick's one-step-larger neighbours: counted on the search's line, or tried alone (no search when
    # the pick measured over its upper bound).
    grown = {"device": "cpu", "step_downs": [step("down", "L4", 3.1, True), step("up", "L5", 3.4, True, scale=1.03,
                                                                                 recheck_ms=3.5, taken=True)],
             "step_up_searches": [{"scale": 1.03, "candidates": 0, "better_on_dev": 1, "grown": 1, "searched": False,
                                   "stepped_up_to": "L5"}]}
    assert _timing_lines(grown)[1] == ("  step up: trying the pick's one-step-larger neighbours with every prediction "
                                       "scaled by 1.03 (measured / upper bound)")
    both = {**quiet, "step_up_searches": [{"scale": 0.73, "candidates": 5, "better_on_dev": 0, "grown": 0,
                                           "searched": True, "stepped_up_to": None}]}
    assert _timing_lines(both)[1].endswith("none of its 5 candidates nor of the pick's larger neighbours that fit "
                                           "beat the pick on the whole dev split")
    some = {**grown, "step_up_searches": [{**grown["step_up_searches"][0], "searched": True, "candidates": 3}]}
    assert _timing_lines(some)[1].endswith("(measured / upper bound); 1 of those that beat the pick on dev are its "
                                           "one-step-larger neighbours")


def test_compare_takes_device_names_with_device(job: Path, tmp_path: Path, capsys) -> None:
    assert main(["compare", "--run", str(job), "--device", "cpu,cpu-1t", "--out", str(tmp_path / "cmp"),
                 "--no-remeasure"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    hv = pd.read_csv(tmp_path / "cmp" / "hypervolume.csv")
    assert len(hv) == 2 and (hv["hypervolume"] >= 0).all()
    fronts = pd.read_csv(tmp_path / "cmp" / "fronts.csv")
    assert set(fronts["device"]) == {"cpu", "cpu-1t"}


def test_compare_still_takes_names_with_devices(job: Path, tmp_path: Path, seen_targets, capsys) -> None:
    assert main(["compare", "--run", str(job), "--devices", "cpu,cpu-1t", "--out", str(tmp_path)]) == 0
    assert _devices(seen_targets) == {"cpu": "cpu", "cpu-1t": "cpu-1t"}
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "deprecated" in err and "--device cpu,cpu-1t" in err


def test_compare_takes_a_toml_file_with_devices_or_device_file(job: Path, tmp_path: Path, seen_targets,
                                                               capsys) -> None:
    run = tmp_path / "run"  # a copy: the TOML's profiles are stored in the run folder
    shutil.copytree(job, run)
    toml = tmp_path / "profiles.toml"
    toml.write_text("[devices.box]\nthreads = 1\n")
    assert main(["compare", "--run", str(run), "--device", "box,cpu", "--devices", str(toml), "--out", str(tmp_path)]) == 0
    assert _devices(seen_targets) == {"box": "box", "cpu": "cpu"}
    assert capsys.readouterr().err == ""
    (run / "devices.json").unlink()
    assert main(["compare", "--run", str(run), "--device", "box", "--device-file", str(toml), "--out", str(tmp_path)]) == 0
    assert _devices(seen_targets) == {"box": "box"}
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device-file is deprecated" in err


@pytest.mark.parametrize("args, why", [
    ([], "compare needs --device NAMES"),
    (["--devices", "missing.toml"], "compare needs --device NAMES"),  # a file name, not names
    (["--device", "cpu", "--devices", "a.toml", "--device-file", "b.toml"], "give the TOML file once"),
    (["--device", "phone"], "known devices: cpu, cpu-1t"),
])
def test_compare_rejects_missing_or_doubled_device_options(job: Path, tmp_path: Path, seen_targets,
                                                           args: list[str], why: str, capsys) -> None:
    assert main(["compare", "--run", str(job), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err
    assert not seen_targets


# --- the library functions behind the commands -------------------------------------------------

def test_resolve_length(job: Path, capsys) -> None:
    from latency.target import resolve_length
    from supernet.data import length_stats
    from supernet.errors import ConfigError
    from supernet.workflow import open_run

    run = open_run(job)
    stats = length_stats(run.splits["dev"])
    assert resolve_length(run, "7") == 7
    assert resolve_length(run, "p90") == max(2, round(stats["p90"]))
    limit = run.spec.train.max_length
    assert resolve_length(run, str(limit)) == limit
    with pytest.raises(ConfigError, match=r"--length 'median' must be an integer or one of \['p"):
        resolve_length(run, "median")
    with pytest.raises(ConfigError, match=rf"--length {limit + 1} is outside 2..{limit}"):
        resolve_length(run, str(limit + 1))
    with pytest.raises(ConfigError, match="outside"):
        resolve_length(run, "1")
    assert main(["search", "--run", str(job), "--device", "cpu", "--budget-ms", "5", "--length", "x"]) == 2
    assert "--length 'x' must be an integer" in capsys.readouterr().err


def test_measure_kit_from_a_run(job: Path, tmp_path: Path, capsys) -> None:
    from latency.kit import write_run_kit
    from latency.target import Target
    from latency.workflow import measurement_plan, resolve_device
    from supernet.workflow import open_run

    assert main(["measure", "--run", str(job), "--device", "cpu", "--kit", str(tmp_path / "cli"), "--n", "2",
                 "--reference-every", "7", "--quiet"]) == 0
    assert "--import results.csv" in capsys.readouterr().out
    run = open_run(job)
    profile = resolve_device(job, "cpu")
    manifest = write_run_kit(run, profile, tmp_path / "lib", n=2, seed=0, reference_every=7, progress=False)
    man = json.loads(manifest.read_text())
    assert man == json.loads((tmp_path / "cli" / "manifest.json").read_text())  # the command calls it
    assert man["device"] == "cpu" and len(man["models"]) == 2 and man["reference_every"] == 7
    # The sub-networks a local measurement with that --n and --seed would time.
    assert [m["arch_key"] for m in man["models"]] == [c.key() for c in measurement_plan(run, profile, n=2)[0]]
    # A kit replays the same real traffic as a local measurement (the cpu profile has no fixed length).
    assert man["inputs"] == {} and man["traffic"]["calls"] == profile.traffic_calls
    assert man["traffic"]["length"] == Target.of(run, profile).length


def test_quick_bench_config(job: Path, tmp_path: Path, bench_configs: list) -> None:
    from nas.bench import BenchConfig

    quick = BenchConfig.quick(device="cpu-1t", seed=3, search_precision="fp32")
    assert (quick.device, quick.seed, quick.search_precision) == ("cpu-1t", 3, "fp32")
    assert quick.n_evaluations == 16 and quick.budget_fractions == (0.5,) and quick.front_points == 4
    assert quick.rounds == 1 and quick.finalists == 2 and quick.dev_subset == 150
    assert quick.finetune_methods == ("ours",) and quick.finetune_speedups == (2.0,)
    assert quick.finetune_epochs == 0.5 and quick.finetune_candidates == 1
    seen = bench_configs
    with pytest.raises(SystemExit):
        main(["bench", "--run", str(job), "--out", str(tmp_path), "--quick", "--seed", "3", "--n", "99"])
    assert seen == [BenchConfig.quick(device="cpu", seed=3)]  # --quick overrides --n


def test_sweep_summary() -> None:
    from latency.measure import sweep_summary

    rows = pd.DataFrame({
        "kind": ["reference", "sample", "sample", "sample", "sample", "noise", "noise"],
        "arch_key": ["full", "a", "a", "b", "c", "full", "full"],
        "error": ["", "", "", "", "RuntimeError: x", "", ""],
        "note": ["", "", "", "", "", "harness-a", "harness-b"],
        "length": [8] * 7,
        "lat_median_ms": [2.0, 1.0, 1.1, 0.5, None, 2.0, 2.2],
    })
    s = sweep_summary(rows)
    assert s["configs"] == 2 and s["failed_rows"] == 1 and s["harness_ratio"] == pytest.approx(1.1)
    # Real traffic of median length 8 beside a fixed length 8: two workloads (ratios 1.1 and 1.3),
    # not one pool of both (which would read 7.6 / 6 = 1.27).
    fixed = pd.DataFrame({"kind": ["noise", "noise"], "arch_key": ["full", "full"], "error": ["", ""],
                          "note": ["harness-a", "harness-b"], "length": [8, 8], "lat_median_ms": [10.0, 13.0],
                          "regime": ["fixed", "fixed"]})
    both = pd.concat([rows.assign(regime="traffic"), fixed], ignore_index=True)
    assert sweep_summary(both)["harness_ratio"] == pytest.approx(1.2)


def test_a_full_disk_is_one_line_and_status_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Not an input the command refuses (2), nor a traceback: what ran out, and how to go on."""
    import errno

    import nas.cli

    def fills_the_disk(_args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/hwnas-onnx-1-x/a.onnx")

    monkeypatch.setattr(nas.cli, "COMMANDS", tuple((reg, fills_the_disk if name is nas.cli.cmd_measure else name)
                                                   for reg, name in nas.cli.COMMANDS))
    assert main(["measure", "--run", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device (/tmp/hwnas-onnx-1-x/a.onnx)" in err[0]
    assert "TMPDIR" in err[0] and "measure the rest" in err[0]  # the command's own way to go on

    def breaks(_args: Any) -> int:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(nas.cli, "COMMANDS", tuple((reg, breaks if h is fills_the_disk else h)
                                                   for reg, h in nas.cli.COMMANDS))
    with pytest.raises(PermissionError):  # any other OSError is not dressed up as a full disk
        main(["measure", "--run", str(tmp_path), "--device", "cpu"])


def test_output_paths_are_expanded_where_they_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """"~/x" reaching hwnas unexpanded (quoted, or after "=") is checked and written at the same place."""
    from nas.cli import out_file, out_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    assert out_folder("~/exp") == str(tmp_path / "exp")
    assert out_file("~/table.csv") == str(tmp_path / "table.csv")

"""Device profiles, the measurement harness, resumable sweeps and the measurement kit."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from latency.devices import (
    BUILTIN,
    DeviceUnavailable,
    check_available,
    get_device,
    load_profiles,
    with_overrides,
)
from latency.kit import KitError, import_kit_csv, kit_id, write_kit
from latency.measure import (
    COLUMNS,
    DeviceTimer,
    MeasurementError,
    MeasurementLog,
    Workload,
    fixed_inputs,
    harness_ratio,
    open_runner,
    sample_configs,
    summarize,
    sweep,
    time_calls,
    traffic_inputs,
)
from supernet.cost import subnet_flops
from supernet.data import Encoded
from supernet.errors import ConfigError
from supernet.extract import extract
from supernet.io import disk_full
from supernet.space import SubnetConfig

FAST = {"warmup": 1, "repeats": 3}


def _encoded(n: int = 40, seed: int = 0) -> Encoded:
    """``n`` token sequences of 4 to 14 tokens ([CLS]-like first), as a split holds them."""
    rng = np.random.default_rng(seed)
    ids = [[2, *rng.integers(5, 120, size=int(rng.integers(2, 13))).tolist(), 3] for _ in range(n)]
    return Encoded(ids, [[0] * len(x) for x in ids], np.zeros(n, dtype=np.int64))


def _workloads() -> list[Workload]:
    """Real traffic (6 calls at their own lengths) and one fixed length (12 tokens repeated)."""
    return [traffic_inputs(_encoded(), 1, 6), fixed_inputs(_encoded(), 1, 12)]


def _inputs(lengths=(8, 12), batch=1) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for L in lengths:
        ids = rng.integers(5, 120, size=(batch, L)).astype(np.int64)
        ids[:, 0] = 2
        out[L] = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return out


def test_builtin_and_unknown_devices() -> None:
    assert {"cpu", "cpu-1t", "torch-cpu", "cuda"} <= set(BUILTIN)
    assert get_device("cpu-1t").threads == 1
    with pytest.raises(ConfigError, match="known devices: cpu, cpu-1t, cpu-int8, cpu-openvino, cuda, torch-cpu"):
        get_device("raspberry")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_fails_clearly_without_a_gpu() -> None:
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider"):
        check_available(get_device("cuda"))


def test_profiles_from_toml(tmp_path: Path) -> None:
    f = tmp_path / "devices.toml"
    f.write_text('[devices.laptop]\nthreads = 4\nlengths = ["p50", 128]\n\n[devices.pi]\nkit = true\nthreads = 1\n')
    profiles = load_profiles(f)
    assert profiles["laptop"].threads == 4 and profiles["laptop"].lengths == ("p50", 128)
    assert profiles["laptop"].resolve_lengths({"p50": 25.6}) == [26, 128]
    with pytest.raises(DeviceUnavailable, match="kit"):
        check_available(profiles["pi"])
    for text, msg in [
        ("[devices.x\n", "not valid TOML"),
        ("[devices.x]\nruntime = 'tvm'\n", "runtime 'tvm'"),
        ("[devices.x]\nspeed = 3\n", "unknown keys"),
        ("[devices.x]\nlengths = ['median']\n", "percentile"),
        ("[devices.x]\nprecision = 'fp16'\n", "fp16"),
        ("title = 'no devices'\n", r"\[devices.NAME\]"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_profiles(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles(tmp_path / "nope.toml")


def test_summarize_drops_outliers() -> None:
    t = summarize([10, 10, 11, 9, 10, 10, 100])  # one context switch
    assert t.outliers == 1 and t.median_ms == 10 and t.min_ms == 9 and t.n == 6
    # The tail and the mean keep it: a p90 / p99 / mean promise without its slow calls would be one the device breaks.
    assert t.p90_ms == pytest.approx(11 + 0.4 * 89) and t.p99_ms > 90 and t.mean_ms == pytest.approx(160 / 7)


def test_sample_configs_cover_the_space() -> None:
    shape = tiny_model().shape
    space = shape.search_space()
    cfgs = sample_configs(space, shape, 40, seed=0)
    assert len(cfgs) == 40 and len({c.key() for c in cfgs}) == 40
    assert all(space.contains(c) for c in cfgs)
    assert cfgs[0] == space.largest() and space.smallest() in cfgs
    flops = np.array([subnet_flops(shape, c, 32) for c in cfgs])
    # Stratification: every FLOPs decile of the range holds some configuration.
    bins = np.linspace(flops.min(), flops.max(), 11)
    assert (np.histogram(flops, bins)[0] > 0).sum() >= 8
    assert sample_configs(space, shape, 40, seed=0) == cfgs


def test_log_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    log = MeasurementLog(tmp_path / "d.csv")
    arch = SubnetConfig.full((2,), (8,)).to_json()
    log.append([{"device": "d", "kind": "sample", "arch_key": "a", "arch_json": arch, "batch": 1, "length": 8,
                 "lat_median_ms": 1.5, "error": ""}])
    with open(log.path, "a") as f:
        f.write("d,sample,,b,{")  # a crash in the middle of a write
    frame = log.read()
    assert list(frame.columns) == COLUMNS and len(frame) == 1
    assert log.timed() == {("a", 1, "fixed", 8): 1}  # rows without a regime are fixed-length ones


@pytest.mark.parametrize("device", ["torch-cpu", "cpu"])
def test_sweep_rows_resume_and_errors(tmp_path: Path, device: str) -> None:
    model = tiny_model()
    space = model.shape.search_space()
    profile = with_overrides(get_device(device), **FAST)
    configs = sample_configs(space, model.shape, 6, seed=1)
    bad = configs[3]

    def flaky_extract(m, cfg):
        if cfg == bad:
            raise RuntimeError("simulated export failure")
        return extract(m, cfg)

    log = MeasurementLog(tmp_path / f"{device}.csv")
    rows = sweep(profile, model, configs[:4], _workloads(), log, reference_every=2, noise_rounds=2,
                 progress=False, extract_fn=flaky_extract)
    samples = rows[rows["kind"] == "sample"]
    assert len(samples) == 4 * 2  # 4 configurations x 2 workloads (traffic, fixed)
    assert sorted(samples["regime"].unique()) == ["fixed", "traffic"]
    assert (samples.loc[samples["regime"] == "traffic", "calls"] == 6).all()
    assert list(samples[samples["error"] != ""]["arch_key"].unique()) == [bad.key()]
    good = samples[samples["error"] == ""]
    assert (good["lat_median_ms"] > 0).all() and (good["lat_p90_ms"] >= good["lat_median_ms"]).all()
    assert (good["lat_p99_ms"] >= good["lat_p90_ms"]).all()
    assert good["lat_ratio"].notna().all() and good["ref_median_ms"].notna().all()
    assert set(rows["kind"]) == {"noise", "reference", "sample"}
    assert np.isfinite(harness_ratio(rows))
    assert (rows["device"] == device).all() and rows["onnxruntime_version"].notna().all()
    # Resume: the finished configurations are not measured again, only the new ones.
    rows2 = sweep(profile, model, configs, _workloads(), log, noise_rounds=2, progress=False)
    s2 = rows2[rows2["kind"] == "sample"]
    assert len(s2) == 6 * 2 and s2.groupby(["arch_key", "regime", "length"]).size().max() == 1
    assert (rows2["kind"] == "noise").sum() == (rows["kind"] == "noise").sum()  # noise floor measured once


def test_a_full_disk_stops_the_sweep_and_the_same_command_resumes(tmp_path: Path) -> None:
    """A full disk is the machine's failure, not a configuration's: the sweep stops without a
    row for it (rows so far kept) and measures it when run again; the failure rows a sweep
    recorded before it stopped on a full disk are measured again too."""
    model = tiny_model()
    profile = with_overrides(get_device("cpu"), **FAST)
    configs = sample_configs(model.shape.search_space(), model.shape, 4, seed=2)

    def full_disk(m, cfg):
        if cfg == configs[2]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return extract(m, cfg)

    log = MeasurementLog(tmp_path / "cpu.csv")
    with pytest.raises(OSError) as stopped:
        sweep(profile, model, configs, _workloads()[:1], log, noise_rounds=0, progress=False, extract_fn=full_disk)
    assert disk_full(stopped.value) is not None
    rows = log.read()
    assert list(rows.loc[rows["kind"] == "sample", "arch_key"]) == [c.key() for c in configs[:2]]
    # A row an earlier version wrote for the same failure does not count as measured.
    old = {**rows[rows["kind"] == "sample"].iloc[0].to_dict(), "arch_key": configs[3].key(),
           "arch_json": configs[3].to_json(), "error": "OSError: [Errno 28] No space left on device"}
    log.append([{k: None if k.startswith("lat_") or k.startswith("ref_") else v for k, v in old.items()}])
    again = sweep(profile, model, configs, _workloads()[:1], log, noise_rounds=0, progress=False)
    good = again[(again["kind"] == "sample") & (again["error"] == "")]
    assert sorted(good["arch_key"]) == sorted(c.key() for c in configs)  # each configuration once
    assert (again["error"] != "").sum() == 1  # the old row stays, for the record


def test_the_onnx_cache_keeps_files_only_while_the_disk_has_room(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from latency import measure

    model = tiny_model()
    cfg = sample_configs(model.shape.search_space(), model.shape, 1, seed=3)[0]
    profile = with_overrides(get_device("cpu"), **FAST)
    feeds = _inputs()[8]
    small = extract(model, cfg)
    kept = open_runner(profile, small, tmp_path, cache_name="a")(feeds)
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]  # kept, no part file left
    monkeypatch.setattr(measure, "CACHE_KEEPS_FREE", shutil.disk_usage(tmp_path).total)  # never that much room
    again = open_runner(profile, small, tmp_path, cache_name="b")(feeds)
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]  # timed, not kept
    assert np.allclose(np.asarray(again[0]), np.asarray(kept[0]), atol=1e-5)
    assert open_runner(profile, small, tmp_path, cache_name="a")  # a kept file is still reused


def test_disk_full_is_recognised_through_a_runtime_error_message() -> None:
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")).errno == errno.EDQUOT
    wrapped = disk_full(RuntimeError("[ONNXRuntimeError] : 1 : FAIL : write failed: No space left on device"))
    assert wrapped is not None and wrapped.errno == errno.ENOSPC
    assert disk_full(OSError(errno.ENOENT, "No such file or directory")) is None
    assert disk_full(RuntimeError("simulated export failure")) is None


def test_sweep_times_every_configuration_in_each_pass_and_resumes_between_passes(tmp_path: Path) -> None:
    """`--passes 2`: a first pass over every configuration, then a second (timings minutes
    apart on a real sample); a measurement made with one pass gets only the second."""
    model = tiny_model()
    profile = with_overrides(get_device("cpu"), **FAST)
    configs = sample_configs(model.shape.search_space(), model.shape, 3, seed=4)
    log = MeasurementLog(tmp_path / "cpu.csv")
    one = sweep(profile, model, configs[:2], _workloads(), log, noise_rounds=0, progress=False)
    assert (one["kind"] == "sample").sum() == 2 * 2
    rows = sweep(profile, model, configs, _workloads(), log, noise_rounds=0, progress=False, passes=2)
    samples = rows[rows["kind"] == "sample"]
    per = samples.groupby(["arch_key", "regime", "length"]).size()
    assert len(per) == 3 * 2 and (per == 2).all()  # every configuration and workload twice, no more
    # The third configuration's first pass came before its second: each pass covers the sample.
    third = samples[samples["arch_key"] == configs[2].key()].index
    second_of_first = samples[samples["arch_key"] == configs[0].key()].index[-1]
    assert third.min() < second_of_first < third.max()
    assert log.timed()[(configs[0].key(), 1, "traffic", samples["length"][samples["regime"] == "traffic"].iloc[0])] == 2
    again = sweep(profile, model, configs, _workloads(), log, noise_rounds=0, progress=False, passes=2)
    assert (again["kind"] == "sample").sum() == len(samples)  # both passes done: no configuration timed
    with pytest.raises(ValueError, match="passes"):
        sweep(profile, model, configs, _workloads(), log, progress=False, passes=0)
    # The profile redefined under the same name (another runtime or provider): refused before
    # anything is timed or appended, not skipped as done nor fitted as the same device.
    for change in ({"runtime": "openvino", "provider": "CPU"}, {"provider": "CUDAExecutionProvider"}):
        with pytest.raises(MeasurementError, match=f"{next(iter(change))} .*here cpu runs with"):
            sweep(with_overrides(profile, **change), model, configs, _workloads(), log, noise_rounds=0,
                  progress=False, passes=3)
    assert len(log.read()) == len(again)


def test_kit_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    space = model.shape.search_space()
    profile = with_overrides(get_device("cpu-1t"), **FAST)
    configs = sample_configs(space, model.shape, 2, seed=2)
    configs.append(configs[0].with_precision("int8"))  # its quantized graph goes in the kit; imported as int8
    manifest = write_kit(tmp_path / "kit", profile, model, configs, _workloads(), progress=False)
    man = json.loads(manifest.read_text())
    assert man["kit_id"] == kit_id(model, profile, _workloads())
    assert man["kit_id"] != kit_id(model, with_overrides(profile, threads=2), _workloads())
    assert len(man["models"]) == 3 and (tmp_path / "kit" / "measure_kit.py").exists()
    assert man["traffic"]["calls"] == 6 and set(man["inputs"]) == {"12"}  # real traffic, and one fixed length
    # The kit's script needs only onnxruntime and numpy: run it as the device would.
    out = tmp_path / "kit" / "results.csv"
    subprocess.run([sys.executable, str(tmp_path / "kit" / "measure_kit.py"), "--repeats", "3", "--warmup", "1"],
                   check=True, cwd=tmp_path, capture_output=True)
    kit_rows = pd.read_csv(out)
    assert (kit_rows["kind"] == "sample").sum() == 3 * 2  # 3 configurations x (traffic, fixed)
    traffic = kit_rows[(kit_rows["kind"] == "sample") & (kit_rows["regime"] == "traffic")]
    assert len(traffic) == 3 and (traffic["calls"] == 6).all() and (traffic["lat_p99_ms"] >= traffic["lat_median_ms"]).all()
    assert set(kit_rows["kit_id"]) == {man["kit_id"]}
    log = MeasurementLog(tmp_path / "run" / "cpu-1t.csv")
    with pytest.raises(KitError, match="written for another run, inputs, batch or threads"):
        import_kit_csv(out, model.shape, log, "cpu-1t", expected_id="0123456789abcdef")
    assert import_kit_csv(out, model.shape, log, "cpu-1t", expected_id=man["kit_id"]) == len(kit_rows)
    assert import_kit_csv(out, model.shape, log, "cpu-1t") == 0  # importing twice adds nothing
    imported = log.read()
    samples = imported[imported["kind"] == "sample"]
    assert sorted(samples.groupby("precision")["arch_key"].nunique().items()) == [("fp32", 2), ("int8", 1)]
    assert imported[imported["kind"] == "sample"]["lat_ratio"].notna().all()
    assert sorted(imported.loc[imported["kind"] == "sample", "regime"].unique()) == ["fixed", "traffic"]
    assert set(imported["arch_key"]) >= {c.key() for c in configs}
    with pytest.raises(KitError, match="not of 'phone'"):
        import_kit_csv(out, model.shape, log, "phone")
    kit_rows.drop(columns=["lat_median_ms"]).to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(KitError, match="lacks the columns \\['lat_median_ms'\\]"):
        import_kit_csv(tmp_path / "broken.csv", model.shape, log, "cpu-1t")
    # Re-running the script on the device resumes: nothing is measured twice.
    subprocess.run([sys.executable, str(tmp_path / "kit" / "measure_kit.py"), "--repeats", "3", "--warmup", "1"],
                   check=True, cwd=tmp_path, capture_output=True)
    assert (pd.read_csv(out)["kind"] == "sample").sum() == 3 * 2
    # ... but not with other threads, nor into the CSV of another kit: one line, exit 2, file kept.
    script = [sys.executable, str(tmp_path / "kit" / "measure_kit.py"), "--repeats", "3", "--warmup", "1"]
    kept = out.read_text()
    other_threads = subprocess.run([*script, "--threads", "2"], cwd=tmp_path, capture_output=True, text=True)
    assert other_threads.returncode == 2 and "thread(s), here 2" in other_threads.stderr
    man["kit_id"] = "another"
    manifest.write_text(json.dumps(man))
    other_kit = subprocess.run(script, cwd=tmp_path, capture_output=True, text=True)
    assert other_kit.returncode == 2 and "another kit" in other_kit.stderr and out.read_text() == kept
    # A CSV with its header only (stopped before the first row): one line, not a traceback.
    (tmp_path / "empty.csv").write_text(kept.splitlines()[0] + "\n")
    with pytest.raises(KitError, match="holds no rows"):
        import_kit_csv(tmp_path / "empty.csv", model.shape, log, "cpu-1t")
    # A model that failed on the device (its latencies empty, its error said) imports as a
    # failed row, and the device's measurement file stays readable.
    failed = kit_rows.copy()
    failed["error"] = failed["error"].astype(object)  # all empty so far: read as NaN floats
    bad = failed.index[failed["kind"] == "sample"][0]
    failed.loc[bad, [c for c in failed.columns if c.startswith("lat_")]] = np.nan
    failed.loc[bad, "error"] = "InvalidGraph: the device's runtime refused it"
    failed.to_csv(tmp_path / "failed.csv", index=False)
    fresh = MeasurementLog(tmp_path / "run2" / "cpu-1t.csv")
    assert import_kit_csv(tmp_path / "failed.csv", model.shape, fresh, "cpu-1t") == len(failed)
    back = fresh.read()
    row = back[back["error"].astype(str).str.startswith("InvalidGraph")]
    assert len(row) == 1 and row["lat_median_ms"].isna().all()


def test_a_kit_folder_written_again_for_other_weights_gets_new_graphs(tmp_path: Path) -> None:
    profile = with_overrides(get_device("cpu-1t"), **FAST)
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    configs = sample_configs(first.shape.search_space(), first.shape, 1, seed=2)
    graphs = lambda: {f.name: f.read_bytes() for f in (tmp_path / "kit" / "models").glob("*.onnx")}  # noqa: E731
    write_kit(tmp_path / "kit", profile, first, configs, _workloads(), progress=False)
    before = graphs()
    written = {f: f.stat().st_mtime_ns for f in (tmp_path / "kit" / "models").glob("*.onnx")}
    write_kit(tmp_path / "kit", profile, first, configs, _workloads(), progress=False)
    assert {f: f.stat().st_mtime_ns for f in written} == written  # the same weights: not exported again
    write_kit(tmp_path / "kit", profile, second, configs, _workloads(), progress=False)
    after = graphs()
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)


def test_the_kit_scripts_statistics_are_the_local_measurements(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """measure_kit.py repeats summarize's statistics (it runs without this package): outliers
    leave the median and minimum, never the tail or the mean; bad counts are one line, exit 2."""
    from latency import kit_script

    calls = [1.0, 1.1] * 10 + [100.0]
    here, local = kit_script.stats(calls), summarize(calls)
    assert here["outliers"] == local.outliers == 1
    for column, value in (("lat_median_ms", local.median_ms), ("lat_p90_ms", local.p90_ms), ("lat_p99_ms", local.p99_ms),
                          ("lat_mean_ms", local.mean_ms), ("lat_min_ms", local.min_ms)):
        assert here[column] == pytest.approx(value), column
    assert here["lat_p99_ms"] > 50 and here["lat_mean_ms"] > 5  # the slow call counts there
    for args, says in ((["--repeats", "0"], "--repeats must be at least 3"), (["--threads", "-1"], "--threads"),
                       (["--warmup", "-2"], "--warmup")):
        with pytest.raises(SystemExit) as stop:
            kit_script.main([*args, "--out", str(tmp_path / "r.csv")])
        assert stop.value.code == 2 and says in capsys.readouterr().err  # refused before the manifest is read
    assert not (tmp_path / "r.csv").exists()


def test_traffic_is_real_inputs_at_their_own_lengths_served_in_order() -> None:
    enc = _encoded(40)
    w = traffic_inputs(enc, 2, 5, seed=3)
    assert w.regime == "traffic" and len(w.feeds) == 5
    again = traffic_inputs(enc, 2, 5, seed=3)  # seeded: the same sample for every model and run
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(w.feeds, again.feeds, strict=True))
    used = []
    for feed in w.feeds:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        assert ids.shape[0] == 2 and ids.shape == mask.shape
        assert mask[:, 0].all() and mask.sum(1).max() == ids.shape[1]  # padded to its own longest input
        used += [tuple(ids[b, : mask[b].sum()]) for b in range(2)]
    assert len(set(used)) == 10 and all(list(u) in enc.input_ids for u in used)  # ten distinct real inputs
    assert w.length == int(round(np.median([len(u) for u in used])))
    assert len(traffic_inputs(_encoded(3), 1, 7).feeds) == 7  # a small split is drawn again


def test_timing_real_traffic_keeps_every_call_and_the_tail() -> None:
    delays = iter([0.001] * 3 + [0.001, 0.001, 0.001, 0.001, 0.02])  # 3 warm-up calls, then 5 timed
    t = time_calls(lambda feed: time.sleep(next(delays)), [{"x": np.zeros(1)}] * 5, warmup=3)
    assert t.n == 5 and t.outliers == 0  # the slow call is the tail a p99 budget promises, not noise
    assert t.p99_ms > 15 and t.median_ms < 5 and t.stat("p99") == t.p99_ms and t.stat("p50") == t.median_ms


def test_device_timer_reports_the_statistic_it_is_asked_for() -> None:
    model = tiny_model()
    profile = with_overrides(get_device("cpu"), **FAST)
    small = model.shape.search_space().smallest()
    with DeviceTimer(profile, model, [traffic_inputs(_encoded(), 1, 8)], stat="p90") as timer:
        got = timer.measure([small], rounds=2)
        assert got.full is not None and got.full_ms == got.full.p90_ms
        assert got.ms == [got.timings[0].p90_ms] and got.timings[0].p90_ms >= got.timings[0].median_ms
        work = timer.workdir
    assert not work.exists()  # the timer removes its temp folder


def test_compare_times_later_rounds_in_a_shuffled_order() -> None:
    """The first round in the order given; later rounds shuffled (seeded), so that no model is
    always timed right after the same one."""
    from latency.devices import DeviceProfile
    from latency.measure import DeviceTimer, fixed_inputs

    ids = [[101, *range(5, 15), 102]] * 4
    enc = Encoded(ids, [[0] * len(x) for x in ids], np.zeros(4, dtype=np.int64))
    profile = DeviceProfile("t", threads=1, warmup=1, repeats=3)
    calls: list[str] = []

    def recorder(name: str):  # noqa: ANN202
        return lambda feed: calls.append(name)

    names = [f"m{i}" for i in range(6)]
    with DeviceTimer(profile, tiny_model(), [fixed_inputs(enc, 1, 8)]) as timer:
        got = timer.compare({n: recorder(n) for n in names}, rounds=5)
    assert list(got) == names and all(t.n == 5 * 3 for t in got.values())  # every round's repeats
    per_call = 1 + 3  # warm-up and repeats, all of one model before the next
    order = calls[::per_call]
    rounds = [order[i:i + len(names)] for i in range(0, len(order), len(names))]
    assert len(rounds) == 5 and rounds[0] == names, rounds
    assert all(sorted(r) == names for r in rounds), rounds
    assert len({tuple(r) for r in rounds}) > 1


def test_all_cores_means_the_cores_this_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from latency.devices import get_device

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 9}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert get_device("cpu").effective_threads == 3  # a container allowed 3 of 64 cores
    assert get_device("cpu-1t").effective_threads == 1


def test_a_measurement_resumes_only_with_the_threads_its_rows_were_timed_with(tmp_path: Path) -> None:
    from latency.measure import MeasurementError, check_same_threads

    rows = pd.DataFrame({"kind": ["sample", "sample", "noise"], "threads": [4, 4, 2]})
    check_same_threads(rows, 4, tmp_path / "cpu.csv", "cpu")  # the same threads: resumes
    check_same_threads(rows.iloc[:0], 2, tmp_path / "cpu.csv", "cpu")  # nothing measured yet
    with pytest.raises(MeasurementError, match=r"cpu\.csv holds cpu's timings with \[4\] thread\(s\); here cpu runs "
                                               r"with 2: measure it under another device name"):
        check_same_threads(rows, 2, tmp_path / "cpu.csv", "cpu")


def test_rounds_pool_their_calls_for_the_tails_and_the_mean() -> None:
    from latency.measure import _median_timing

    calm = summarize([10.0] * 32, drop_outliers=False)
    stalled = summarize([10.0] * 30 + [40.0, 50.0], drop_outliers=False)  # one round met a stall
    t = _median_timing([calm, stalled, calm])
    assert t.median_ms == 10 and t.n == 96 and len(t.samples) == 96
    # Over the 96 calls: the p99 sits between the two slow calls; the median of the rounds' p99s was 10.
    assert float(np.median([calm.p99_ms, stalled.p99_ms, calm.p99_ms])) == 10
    assert t.p99_ms == pytest.approx(np.percentile([10.0] * 94 + [40.0, 50.0], 99)) and 40 < t.p99_ms < 50
    assert t.mean_ms == pytest.approx((94 * 10 + 90) / 96) and t.p90_ms == 10

"""Device profiles, the measurement harness, resumable sweeps and the measurement kit."""

from __future__ import annotations

import json
import subprocess
import sys
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
from latency.kit import KitError, import_kit_csv, write_kit
from latency.measure import COLUMNS, MeasurementLog, harness_ratio, sample_configs, summarize, sweep
from supernet.cost import subnet_flops
from supernet.errors import ConfigError
from supernet.extract import extract

FAST = {"warmup": 1, "repeats": 3}


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
    with pytest.raises(ConfigError, match="known devices: cpu, cpu-1t, cuda, torch-cpu"):
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
    assert t.p90_ms <= 11


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
    log.append([{"device": "d", "kind": "sample", "arch_key": "a", "batch": 1, "length": 8, "error": ""}])
    with open(log.path, "a") as f:
        f.write("d,sample,,b,{")  # a crash in the middle of a write
    frame = log.read()
    assert list(frame.columns) == COLUMNS and len(frame) == 1
    assert log.done() == {("a", 1, 8)}


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
    rows = sweep(profile, model, configs[:4], _inputs(), log, reference_every=2, noise_rounds=2,
                 progress=False, extract_fn=flaky_extract)
    samples = rows[rows["kind"] == "sample"]
    assert len(samples) == 4 * 2  # 4 configurations x 2 lengths
    assert list(samples[samples["error"] != ""]["arch_key"].unique()) == [bad.key()]
    good = samples[samples["error"] == ""]
    assert (good["lat_median_ms"] > 0).all() and (good["lat_p90_ms"] >= good["lat_median_ms"]).all()
    assert good["lat_ratio"].notna().all() and good["ref_median_ms"].notna().all()
    assert set(rows["kind"]) == {"noise", "reference", "sample"}
    assert np.isfinite(harness_ratio(rows))
    assert (rows["device"] == device).all() and rows["onnxruntime_version"].notna().all()
    # Resume: the finished configurations are not measured again, only the new ones.
    rows2 = sweep(profile, model, configs, _inputs(), log, noise_rounds=2, progress=False)
    s2 = rows2[rows2["kind"] == "sample"]
    assert len(s2) == 6 * 2 and s2.groupby(["arch_key", "length"]).size().max() == 1
    assert (rows2["kind"] == "noise").sum() == (rows["kind"] == "noise").sum()  # noise floor measured once


def test_kit_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    space = model.shape.search_space()
    profile = with_overrides(get_device("cpu-1t"), **FAST)
    configs = sample_configs(space, model.shape, 3, seed=2)
    manifest = write_kit(tmp_path / "kit", profile, model, configs, _inputs(), progress=False)
    man = json.loads(manifest.read_text())
    assert len(man["models"]) == 3 and (tmp_path / "kit" / "measure_kit.py").exists()
    # The kit's script needs only onnxruntime and numpy: run it as the device would.
    out = tmp_path / "kit" / "results.csv"
    subprocess.run([sys.executable, str(tmp_path / "kit" / "measure_kit.py"), "--repeats", "3", "--warmup", "1"],
                   check=True, cwd=tmp_path, capture_output=True)
    kit_rows = pd.read_csv(out)
    assert (kit_rows["kind"] == "sample").sum() == 3 * 2
    log = MeasurementLog(tmp_path / "run" / "cpu-1t.csv")
    assert import_kit_csv(out, model.shape, log, "cpu-1t") == len(kit_rows)
    assert import_kit_csv(out, model.shape, log, "cpu-1t") == 0  # importing twice adds nothing
    imported = log.read()
    assert imported[imported["kind"] == "sample"]["lat_ratio"].notna().all()
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

"""OpenVINO as a device runtime: the same ONNX graph, timed like ONNX Runtime.

Skipped (with the reason) only where the ``openvino`` package is missing; scripts/setup.sh
installs it, so CI runs these.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from latency.devices import (
    DeviceProfile,
    DeviceUnavailable,
    check_available,
    get_device,
    with_overrides,
)
from latency.measure import (
    DeviceTimer,
    MeasurementLog,
    fixed_inputs,
    open_runner,
    sweep,
    traffic_inputs,
)
from supernet.data import Encoded
from supernet.errors import ConfigError
from supernet.space import SubnetConfig

FAST = {"warmup": 1, "repeats": 3}
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="the openvino package is not installed (pip install openvino, or scripts/setup.sh)",
)


def _encoded(n: int = 24) -> Encoded:
    """``n`` token sequences of 4 to 14 tokens, as a dev split holds them."""
    rng = np.random.default_rng(0)
    ids = [[2, *rng.integers(5, 120, size=int(rng.integers(2, 13))).tolist(), 3] for _ in range(n)]
    return Encoded(ids, [[0] * len(x) for x in ids], np.zeros(n, dtype=np.int64))


@needs_openvino
def test_openvino_runs_the_exported_graph_as_onnx_runtime_does(tmp_path: Path) -> None:
    """A sub-network with token dropping, served real traffic (batches of 2 at their own
    lengths): OpenVINO's logits are ONNX Runtime's on every call, and its timing is a real one."""
    model = tiny_model()
    cfg = SubnetConfig((4, 2, 4), (64, 32, 64), (True, True, True), (1.0, 0.6, 0.4))
    small = model.extract(cfg).eval()
    work = traffic_inputs(_encoded(), 2, 6)
    ov = open_runner(with_overrides(get_device("cpu-openvino"), **FAST), small, tmp_path)
    ort = open_runner(with_overrides(get_device("cpu"), **FAST), small, tmp_path)
    for feed in work.feeds:
        (got,), (ref,) = ov(feed), ort(feed)
        assert got.shape == ref.shape == (feed["input_ids"].shape[0], 2)
        assert np.abs(got - ref).max() < 1e-4
    profile = with_overrides(get_device("cpu-openvino"), **FAST)
    with DeviceTimer(profile, model, [work]) as timer:
        measured = timer.measure([cfg], rounds=2)
    assert measured.ms[0] > 0 and measured.full_ms > 0 and measured.full is not None
    assert measured.timings[0].n == 2 * len(work.feeds)  # every call of both rounds kept


@needs_openvino
def test_a_sweep_on_openvino_records_its_runtime(tmp_path: Path) -> None:
    import openvino

    model = tiny_model()
    profile = with_overrides(get_device("cpu-openvino"), **FAST)
    configs = [model.shape.search_space().smallest(), SubnetConfig((2, 4, 4), (32, 64, 16), (True, False, True),
                                                                   (1.0, 0.5, 0.5))]
    rows = sweep(profile, model, configs, [fixed_inputs(_encoded(), 1, 12)], MeasurementLog(tmp_path / "ov.csv"),
                 noise_rounds=1, progress=False)
    samples = rows[rows["kind"] == "sample"]
    assert len(samples) == 2 and (samples["error"] == "").all() and (samples["lat_median_ms"] > 0).all()
    assert (rows["runtime"] == "openvino").all() and (rows["provider"] == "CPU").all()
    assert (rows["runtime_version"] == openvino.__version__).all()


def test_openvino_profiles_are_checked() -> None:
    with pytest.raises(ConfigError, match='provider = "CPU"'):
        DeviceProfile("ov", runtime="openvino")  # the ONNX Runtime provider name left in
    with pytest.raises(ConfigError, match="int8 sub-networks are quantized ONNX graphs"):
        DeviceProfile("ov", runtime="openvino", provider="CPU", precisions=("fp32", "int8"))
    assert get_device("cpu-openvino").runtime == "openvino"


def test_a_missing_openvino_is_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(DeviceUnavailable, match="pip install openvino"):
        check_available(get_device("cpu-openvino"))


@needs_openvino
def test_a_kit_for_an_openvino_device_is_timed_with_openvino(tmp_path: Path) -> None:
    import subprocess

    import openvino
    import pandas as pd

    from latency.kit import import_kit_csv, write_kit

    model = tiny_model()
    profile = with_overrides(get_device("cpu-openvino"), kit=True, **FAST)
    configs = [model.shape.search_space().smallest()]
    man = write_kit(tmp_path / "kit", profile, model, configs, [traffic_inputs(_encoded(), 1, 4)], progress=False)
    assert '"runtime": "openvino"' in man.read_text()
    subprocess.run([sys.executable, str(tmp_path / "kit" / "measure_kit.py"), "--repeats", "3", "--warmup", "1"],
                   check=True, cwd=tmp_path, capture_output=True)
    rows = pd.read_csv(tmp_path / "kit" / "results.csv")
    assert (rows["runtime"] == "openvino").all() and (rows["runtime_version"] == openvino.__version__).all()
    assert (rows["kind"] == "sample").sum() == 1 and (rows["lat_median_ms"] > 0).all()
    log = MeasurementLog(tmp_path / "cpu-openvino.csv")
    assert import_kit_csv(tmp_path / "kit" / "results.csv", model.shape, log, "cpu-openvino") == len(rows)
    assert (log.read()["runtime"] == "openvino").all()


@needs_openvino
def test_an_openvino_export_is_compared_with_the_stock_model_timed_by_openvino(
    job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every graph of an OpenVINO device's stock comparison (stock fp32 / ORT-optimized / INT8,
    our full model, the export, its int8 twin) is opened with OpenVINO, and the report and the
    model card name the runtime, so that a speed-up never mixes runtimes."""
    import json

    import latency.baselines as baselines
    from latency.target import Target, target_timer
    from nas.card import model_card
    from nas.export import compare_with_stock, write_export
    from nas.search import Candidate
    from supernet.extract import extract
    from supernet.workflow import open_run

    opened: dict[str, str] = {}
    real_open = baselines.open_onnx_runner

    def spy(profile: DeviceProfile, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened[Path(path).name] = profile.runtime
        return real_open(profile, path, *args, **kwargs)

    monkeypatch.setattr(baselines, "open_onnx_runner", spy)
    run = open_run(job)
    cfg = run.space.uniform(width=0.5)
    model = extract(run.supernet, cfg).eval()
    target = Target.of(run, with_overrides(get_device("cpu-openvino"), **FAST))
    written = write_export(run, target, tmp_path, Candidate(cfg, 0.5, 1.0, 1.1, True), model)
    ours = baselines.onnx_logits(written["files"]["onnx"], run.splits["test"])
    with target_timer(run, target) as timer:
        got = compare_with_stock(run, timer, written["files"], "fp32", ours, 0.5, rounds=1)
    assert got is not None
    assert set(got["deployments"]) == {"stock-fp32", "stock-ort", "stock-int8", "ours-full", "ours", "ours-int8"}
    assert all(r["p50_ms"] > 0 for r in got["deployments"].values())
    assert set(opened.values()) == {"openvino"} and len(opened) == 6 and "model.onnx" in opened
    assert got["speedup"]["runtime"] == "openvino"
    # The card says what the comparison was timed with.
    (export,) = list((job / "export").iterdir())
    report = {**json.loads((export / "report.json").read_text()), "device": "cpu-openvino", "runtime": "openvino",
              "speedup_vs_stock": got["speedup"]}
    card = model_card(report, "hwnas export ...", remote_code=True)
    assert "| device | `cpu-openvino`, timed with OpenVINO |" in card
    assert "| against the stock model, same run, both timed with OpenVINO |" in card

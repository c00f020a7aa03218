"""The ``cuda`` device profile measured for real: only where ONNX Runtime has its CUDA
provider (an NVIDIA GPU and onnxruntime-gpu). Elsewhere every test here is skipped, and the
skip says why; ``tests/test_latency.py`` checks that ``cuda`` then fails with a clear message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from latency.devices import get_device, with_overrides
from latency.measure import MeasurementLog, Workload, sweep

ort = pytest.importorskip("onnxruntime")
PROVIDERS = ort.get_available_providers()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in PROVIDERS,
                       reason=f"the cuda profile needs ONNX Runtime's CUDAExecutionProvider (an NVIDIA GPU and "
                       f"onnxruntime-gpu); this machine has {PROVIDERS}"),
]


def test_cuda_profile_times_sub_networks_on_the_gpu(tmp_path: Path) -> None:
    model = tiny_model()
    space = model.shape.search_space()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(1, 16)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    profile = with_overrides(get_device("cuda"), repeats=5, warmup=2)
    log = MeasurementLog(tmp_path / "cuda.csv")
    rows = sweep(profile, model, [space.largest(), space.smallest()], [Workload("fixed", 16, (feed,))], log,
                 noise_rounds=1, progress=False)
    samples = rows[rows["kind"] == "sample"]
    assert len(samples) == 2 and (samples["error"] == "").all(), samples["error"].tolist()
    assert (samples["provider"] == "CUDAExecutionProvider").all()
    assert (samples["lat_median_ms"] > 0).all()

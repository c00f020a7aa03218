"""What a user could deploy without us, timed in the same run as what we hand over.

The user's fine-tuned model (the run's teacher) as a stock Hugging Face BERT, exported to
ONNX the standard way (``torch.onnx.export`` of ``BertForSequenceClassification``), then:

* ``stock-fp32``: that graph as exported;
* ``stock-ort``: after ONNX Runtime's transformer optimizer (attention, layer-norm and GELU
  fusions), what ONNX Runtime recommends before serving a BERT on a CPU;
* ``stock-int8``: dynamic INT8 quantization of the optimized graph (``quantize_dynamic``,
  int8 weights, activations quantized per call): ONNX Runtime's recommendation for
  transformers on x86. It gains most on CPUs with AVX-512 VNNI; with AVX2 only the gain is
  smaller (and the weights use 7 bits, ``int8_reduce_range``), and on old CPUs INT8 can be
  slower than fp32.

``stock_models`` builds them once per run (``RUN/baselines/``, with their test accuracy,
scored by running each ONNX graph; ``stock-int8`` at the deployed batch, since dynamic
quantization's activation scales span the whole batch, padding included, so its predictions
depend on it); ``compare_deployments`` times them beside our models on the same workload
and statistic as the budget, each serving the whole sample in turn, rounds interleaved in a
shuffled order (``latency.measure.DeviceTimer.compare``). Every speed-up is quoted against the fastest
stock fp32 deployment (the headline) and against the stock INT8 one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency.measure import DeviceTimer, Runner, Workload, open_onnx_runner
from latency.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    int8_reduce_range,
    ort_session,
    quantize_int8,
    quiet_exporter,
    session_feed,
)
from supernet.data import Encoded, iterate_batches
from supernet.errors import HwnasError
from supernet.evaluate import scores
from supernet.io import atomic_write, write_json

if TYPE_CHECKING:
    from latency.devices import DeviceProfile
    from supernet.model import ElasticBert
    from supernet.workflow import LoadedRun

STOCK = ("stock-fp32", "stock-ort", "stock-int8")
# Runtimes that run the stock ONNX graphs. OpenVINO reads all three (the optimizer's fused
# operators and the dynamic INT8 ones included); their test scores are ONNX Runtime's.
ONNX_RUNTIMES = ("onnxruntime", "openvino")
FP32_STOCK = ("stock-fp32", "stock-ort")
# An fp32 graph matches PyTorch to 1e-4 whatever its batch, so it is scored in batches of this
# size (faster); an INT8 graph is scored at the batch it is deployed at (``onnx_logits``).
FP32_SCORE_BATCH = 32


class BaselineError(HwnasError):
    """A stock model that cannot be built or scored."""


def onnx_logits(path: str | Path | Any, enc: Encoded, *, batch_size: int = FP32_SCORE_BATCH,
                threads: int | None = None, in_order: bool = False) -> np.ndarray:
    """Logits (N, num_labels) of an ONNX classifier (a file, or an open session) on ``enc``,
    in ``enc``'s order, run in length-sorted batches of ``batch_size`` (each padded to its
    longest). A dynamically quantized (INT8) graph's logits depend on ``batch_size`` and on
    what shares a batch (the activations' scales span its padding): score it at the batch it
    is deployed at with ``in_order``, batches of consecutive examples as requests arrive, not
    sorted ones that hardly pad (at batch 1 the two are the same)."""
    sess = path if hasattr(path, "run") else ort_session(path, threads=threads)
    take = session_feed(sess)
    out: np.ndarray | None = None
    for b in iterate_batches(enc, batch_size, shuffle=False, sort_by_length=not in_order):
        feed = {k: b[k].numpy().astype(np.int64) for k in INPUT_NAMES}
        (logits,) = sess.run([OUTPUT_NAME], take(feed))
        if out is None:
            out = np.zeros((len(enc), logits.shape[1]), dtype=np.float32)
        out[b["index"].numpy()] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def onnx_scores(path: str | Path, enc: Encoded, *, batch_size: int = FP32_SCORE_BATCH,
                in_order: bool = False) -> dict[str, float]:
    """Accuracy and macro-F1 of an ONNX classifier, run by ONNX Runtime in batches of
    ``batch_size`` (how INT8 is scored: at its deployed batch, ``in_order``)."""
    return scores(onnx_logits(path, enc, batch_size=batch_size, in_order=in_order), enc.labels)


def export_stock_onnx(teacher: ElasticBert, out: Path, *, opset: int = 17) -> Path:
    """The teacher as a stock model of its family (``BertForSequenceClassification``,
    ``RobertaForSequenceClassification``, ...), exported to ONNX the standard way (inputs
    ``input_ids``, ``attention_mask``, ``token_type_ids`` where the family has token types,
    output ``logits``)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from latency.onnx_export import input_names
    from supernet.extract import export_hf

    hf_dir = export_hf(teacher, out.parent / "stock-hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    names = input_names(teacher)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).logits

    ids = torch.full((2, 16), 5, dtype=torch.long)  # not the padding id (RoBERTa's is 1)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[OUTPUT_NAME] = {0: "batch"}

    def write(tmp: Path) -> None:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(Logits().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(names)],
                              str(tmp), dynamo=False, input_names=list(names), output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=opset)

    return atomic_write(out, write)


def optimize_stock(src: Path, out: Path, *, num_heads: int, hidden_size: int) -> Path:
    """ONNX Runtime's transformer optimizer on a BERT graph (fusions for the CPU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    return atomic_write(out, lambda tmp: opt.save_model_to_file(str(tmp)))


def build_stock(teacher: ElasticBert, folder: Path) -> dict[str, Path]:
    """The stock graphs of ``teacher`` (``STOCK``), written into ``folder``: name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    s = teacher.shape
    try:
        fp32 = export_stock_onnx(teacher, folder / "stock-fp32.onnx")
        ort = optimize_stock(fp32, folder / "stock-ort.onnx", num_heads=s.heads[0], hidden_size=s.hidden_size)
        int8 = quantize_int8(ort, folder / "stock-int8.onnx")
    except (RuntimeError, ValueError, OSError) as e:
        raise BaselineError(f"could not build the stock ONNX baselines in {folder}: {e}") from e
    return dict(zip(STOCK, (fp32, ort, int8), strict=True))


# The field of ``stock_models``'s entries that holds a task metric's test score: every table
# that puts the stock models beside ours scores them all in the task's metric.
STOCK_SCORE = {"accuracy": "acc_test", "macro_f1": "f1_test"}


def stock_models(run: LoadedRun, *, batch: int = 1) -> dict[str, dict[str, Any]]:
    """The stock deployments of the run's teacher (built once, kept in ``RUN/baselines/``):
    name -> ``{"path", "acc_test", "f1_test", "precision", "scored_batch"}``, test scores by
    ONNX Runtime: ``stock-int8`` at ``batch``, the batch it is deployed at; the fp32 graphs at
    ``FP32_SCORE_BATCH`` (they compute the same at any batch). A graph whose recorded score is
    at another batch (or at none: a ``stock.json`` from before ``scored_batch``) is scored
    again, without rebuilding the graphs."""
    from supernet.checkpoint import load_model

    if batch < 1:
        raise BaselineError(f"a stock model is scored at a batch of at least 1 input, got {batch}")
    folder = run.paths.baselines
    about = folder / "stock.json"
    known: dict[str, Any] = json.loads(about.read_text()) if about.exists() else {}
    paths = {n: folder / known[n]["file"] for n in STOCK if n in known}
    if len(paths) < len(STOCK) or not all(p.exists() for p in paths.values()):
        known, paths = {}, build_stock(load_model(run.paths.teacher), folder)
    # INT8 weights in 7 bits or 8 depend on the CPU that quantizes (``int8_reduce_range``): a run
    # folder moved to a CPU of the other kind gets its stock INT8 graph quantized again here,
    # as our own INT8 graphs are, so that the two compare as this CPU would deploy them.
    reduce_range = int8_reduce_range()
    if known and known["stock-int8"].get("reduce_range", reduce_range) != reduce_range:
        quantize_int8(paths["stock-ort"], paths["stock-int8"])
        known = {n: v for n, v in known.items() if n != "stock-int8"}
    out: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        at = batch if name == "stock-int8" else FP32_SCORE_BATCH
        in_order = name == "stock-int8"  # INT8 in batches as requests arrive (``onnx_logits``)
        if known.get(name, {}).get("scored_batch") == at and (at == 1 or known[name].get("in_order") == in_order):
            out[name] = dict(known[name])
            continue
        sc = onnx_scores(path, run.splits["test"], batch_size=at, in_order=in_order)
        out[name] = {"file": path.name, "acc_test": sc["accuracy"], "f1_test": sc["macro_f1"],
                     "precision": "int8" if name == "stock-int8" else "fp32", "scored_batch": at,
                     "in_order": in_order}
    out["stock-int8"].setdefault("reduce_range", reduce_range)
    if out != {n: known.get(n) for n in STOCK}:
        write_json(about, out)
    return {n: {**v, "path": str(folder / v["file"])} for n, v in out.items()}


def open_onnx(timer: DeviceTimer, path: str | Path) -> Runner:
    """A runner of an ONNX file on the timer's device (ONNX Runtime and OpenVINO profiles)."""
    if timer.profile.runtime not in ONNX_RUNTIMES:
        raise BaselineError(f"stock ONNX baselines run on ONNX Runtime or OpenVINO; device {timer.profile.name!r} "
                            f"uses {timer.profile.runtime}")
    return open_onnx_runner(timer.profile, path)


def compare_deployments(timer: DeviceTimer, models: Mapping[str, str | Path], *, rounds: int = 3,
                        workload: Workload | None = None) -> dict[str, dict[str, float]]:
    """Each ONNX model of ``models`` (name -> path) timed in turn with the others, ``rounds``
    interleaved rounds, on the timer's workload: name -> {p50_ms, p90_ms, p99_ms, mean_ms}."""
    runners = {name: open_onnx(timer, path) for name, path in models.items()}
    timings = timer.compare(runners, rounds=rounds, workload=workload)
    return {n: {"p50_ms": t.median_ms, "p90_ms": t.p90_ms, "p99_ms": t.p99_ms, "mean_ms": t.mean_ms}
            for n, t in timings.items()}


def speedups(latency: Mapping[str, float], ours: str) -> dict[str, Any]:
    """``ours``'s speed-up against the fastest stock fp32 deployment (the headline) and against
    the stock INT8 one, from latencies in ms (one statistic)."""
    fastest_fp32 = min(latency[n] for n in FP32_STOCK if n in latency)
    return {"vs_fastest_stock_fp32": fastest_fp32 / latency[ours],
            "fastest_stock_fp32": min((n for n in FP32_STOCK if n in latency), key=lambda n: latency[n]),
            "vs_stock_int8": latency["stock-int8"] / latency[ours] if "stock-int8" in latency else float("nan")}


def time_beside_stock(run: LoadedRun, timer: DeviceTimer, ours: Mapping[str, str | Path] | None = None, *,
                      rounds: int = 3) -> dict[str, dict[str, Any]] | None:
    """The stock deployments, our full model (``ours-full``: the supernet's largest
    sub-network, exported into the timer's folder) and ``ours`` (name -> ONNX file) timed in
    turn on the timer's workload: name -> ``{p50_ms, p90_ms, p99_ms, mean_ms, acc_test,
    precision}``, ``acc_test`` the stock models' test score in the task's metric (accuracy, or
    macro F1 where the task's headline is: ``STOCK_SCORE``; INT8 at the timer's batch; None for
    ours: the caller scores them in the same metric).
    None on a device whose runtime runs no ONNX graph (PyTorch eager)."""
    from latency.onnx_export import export_onnx
    from supernet.extract import extract

    if timer.profile.runtime not in ONNX_RUNTIMES:
        return None
    stock = stock_models(run, batch=timer.batch)
    full = export_onnx(extract(run.supernet, run.space.largest()), timer.workdir / "ours-full.onnx")
    paths = {**{n: v["path"] for n, v in stock.items()}, "ours-full": full, **(ours or {})}
    timed = compare_deployments(timer, paths, rounds=rounds)
    key = STOCK_SCORE[run.task.metric]
    return {n: {**t, "acc_test": stock[n][key] if n in stock else None,
                "precision": "int8" if n.endswith("int8") else "fp32"} for n, t in timed.items()}


def time_stock(run: LoadedRun, profile: DeviceProfile, *, rounds: int = 3) -> dict[str, Any] | None:
    """Once per device (``hwnas measure``): ``time_beside_stock`` on the profile's first
    workload (its real traffic where it has one). What a sub-network's speed-up should be read
    against. None on a PyTorch eager device."""
    from latency.workflow import device_workloads

    if profile.runtime not in ONNX_RUNTIMES:
        return None
    workload = device_workloads(run, profile)[0]
    with DeviceTimer(profile, run.supernet, [workload]) as timer:
        deployments = time_beside_stock(run, timer, rounds=rounds)
    return {"device": profile.name, "regime": workload.regime, "length": workload.length, "batch": profile.batch,
            "deployments": deployments}

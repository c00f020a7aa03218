"""Sub-network -> ONNX, token dropping included, and the ONNX Runtime session to time it with.

``export_onnx`` writes a standalone ``ElasticBert`` (from ``supernet.extract.extract``) as an
ONNX graph with inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, batch
and sequence both dynamic) and one output ``logits`` (batch, num_labels). The model's own
token retention is part of the graph: attention received, TopK, a sort back into the original
order and a gather into a shorter tensor, so that later layers of the ONNX model really run on
fewer tokens. ``check_onnx`` compares ONNX Runtime with PyTorch on real batches.
``ort_session`` and ``ov_compiled`` open a graph for timing in ONNX Runtime and in OpenVINO,
which reads the same ONNX file.

Exporter: the TorchScript one (``dynamo=False``), on purpose. The number of tokens a layer
keeps is ``ceil(r * T)`` for the input's padded length ``T``. ``torch.export`` (the default
``dynamo=True``) turns that into a symbolic float -> int expression and then refuses the
export, because it cannot prove the guards that TopK and gather put on it (``k <= T``,
``k != 1``), or it silently specialises ``T`` to the example's length; the tracer instead
records the shape arithmetic as graph ops (Shape -> Mul -> Ceil -> TopK's ``k`` input), so one
graph serves every batch size and length. ``supernet/model.py`` keeps that count a tensor for
this reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from supernet.errors import HwnasError
from supernet.extract import extract
from supernet.io import atomic_write
from supernet.model import ElasticBert
from supernet.space import SubnetConfig

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"


def input_names(model: ElasticBert) -> tuple[str, ...]:
    """The inputs of ``model``'s ONNX graph: ``INPUT_NAMES``, less ``token_type_ids`` for a
    family without token types (DistilBERT), as the family's stock export has them."""
    return INPUT_NAMES if model.shape.type_vocab_size else INPUT_NAMES[:2]


def session_feed(session: Any) -> Any:
    """``feed -> the part of it that the ONNX Runtime ``session`` takes`` (our feeds always
    carry all of ``INPUT_NAMES``; a DistilBERT graph has no ``token_type_ids``)."""
    names = [i.name for i in session.get_inputs()]
    return lambda feed: {k: feed[k] for k in names}


class ExportError(HwnasError):
    """An ONNX file that is missing, corrupt, or does not compute what the PyTorch model does."""


class _Logits(nn.Module):
    """The three-input, one-output signature that the ONNX graph gets."""

    def __init__(self, model: ElasticBert) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask, token_type_ids).logits  # (B, num_labels)


def _example_inputs(model: ElasticBert) -> tuple[torch.Tensor, ...]:
    """A small padded batch to trace with: two examples of different lengths (and the
    token types where the model has them)."""
    s = model.shape
    T = min(8, s.max_length)
    ids = torch.arange(2 * T, dtype=torch.long).reshape(2, T) % s.vocab_size
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T // 2 + 1 :] = 0  # the second example is padded: the traced path handles padding
    return (ids * mask, mask, torch.zeros_like(ids))[: len(input_names(model))]


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings, log records and prints (a progress bar may be running)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: ElasticBert, path: str | Path, *, opset: int = 18) -> Path:
    """Write ``model`` (a standalone sub-network, with its own ``shape.retention``) to ONNX.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (not for a family without token
    types: ``input_names``): int64 (batch, sequence), both axes dynamic; output ``logits``: (batch, num_labels). The file is written atomically (a
    temporary file in the same folder, checked with ``onnx.checker``, then renamed over
    ``path``). The model is traced in eval mode and left in the mode it came in.
    """
    import onnx

    was_training = model.training
    wrapper = _Logits(model).eval()
    names = input_names(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}

    def write(tmp: Path) -> None:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                wrapper,
                _example_inputs(model),
                str(tmp),
                dynamo=False,  # see the module docstring: the tracer keeps T dynamic
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                verbose=False,
            )
        onnx.checker.check_model(str(tmp))

    try:
        return atomic_write(path, write)
    finally:
        model.train(was_training)


def export_subnet_onnx(
    supernet: ElasticBert, cfg: SubnetConfig, path: str | Path, *, opset: int = 18
) -> Path:
    """Extract sub-network ``cfg`` from ``supernet`` as a standalone model and export it as
    it is deployed (``export_deployed``: quantized when ``cfg`` is int8)."""
    return export_deployed(extract(supernet, cfg).eval(), cfg.precision, path, opset=opset)


def export_deployed(model: ElasticBert, precision: str, path: str | Path, *, opset: int = 18) -> Path:
    """``model`` as the graph that runs at ``precision``: its fp32 ONNX graph, or that graph
    quantized (``quantize_int8`` with per-channel weights) for ``"int8"``."""
    if precision == "fp32":
        return export_onnx(model, path, opset=opset)
    if precision != "int8":
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    path = Path(path)
    fp32 = path.with_name(f".{path.stem}.fp32.onnx")
    try:
        export_onnx(model, fp32, opset=opset)
        return quantize_subnet(fp32, path)
    finally:
        fp32.unlink(missing_ok=True)


def quantize_subnet(src: str | Path, out: str | Path) -> Path:
    """How our int8 sub-networks are quantized: ``quantize_int8`` with per-channel weights."""
    return quantize_int8(src, out, per_channel=True)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizers log their advice (pre-process the graph first, for static
    quantization) to the root logger: not for users here. Errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def cpu_has_vnni(cpuinfo: str | None = None, machine: str | None = None) -> bool | None:
    """Whether this CPU has VNNI dot-product instructions (AVX-512 VNNI or AVX-VNNI): True /
    False on an x86 Linux machine, None where the flags cannot be read (another OS or
    architecture). ``cpuinfo`` / ``machine``: the text of /proc/cpuinfo and the architecture,
    read from this machine when not given."""
    import platform

    if (machine or platform.machine()).lower() not in ("x86_64", "amd64", "i686", "i386"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_reduce_range() -> bool:
    """Whether INT8 weights should use 7 bits (ONNX Runtime's ``reduce_range``): on an x86 CPU
    without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of products in 16 bits, which
    saturates with full 8-bit weights and moves a quantized model's outputs far from fp32
    (tests/test_precision.py failed on an AVX2-only CPU without it); with VNNI (or off x86)
    the full range is kept."""
    return cpu_has_vnni() is False


def quantize_int8(src: str | Path, out: str | Path, *, per_channel: bool = False, exclude: Sequence[str] = ()) -> Path:
    """Dynamic INT8 quantization of an ONNX graph (ONNX Runtime's ``quantize_dynamic``): int8
    weight matrices, activations quantized to uint8 per call. It gains most on CPUs with
    AVX-512 VNNI (or AVX-VNNI); with AVX2 only the integer kernels gain less, and on CPUs
    without either INT8 can be slower than fp32, which the device's measurements then show.
    Without VNNI on x86 the weights use 7 bits (``int8_reduce_range``), as ONNX Runtime
    advises there: the graph is then quantized for the CPU it is made on.

    ``per_channel``: one scale per output column of each weight instead of one per matrix.
    The stock baseline uses ONNX Runtime's default (per matrix); our sub-networks use per
    channel, which changed about half as many dev predictions on ``rt`` (22, 29, 7 of 500
    against 40, 51, 14: ``scripts/int8_check.py``); one timing by hand showed no consistent
    speed difference. ``exclude``: node names kept in fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        # The optimizer's fused operators (com.microsoft domain) have no ONNX shape inference:
        # tensors whose type is then unknown are float, which they are.
        with _quiet_quantizer():
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=int8_reduce_range(), nodes_to_exclude=list(exclude),
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    return atomic_write(out, write)


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def weight_products(graph: Any) -> list[str]:
    """The names of an ONNX graph's weight products: ``MatMul`` with a constant second input
    and ``Gemm``. What dynamic quantization quantizes (the attention products, both of whose
    inputs are activations, stay fp32), and so what static quantization is given too."""
    weights = {x.name for x in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]


def quantize_static_int8(
    src: str | Path,
    out: str | Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    exclude: Sequence[str] = (),
    per_channel: bool = True,
) -> Path:
    """Static INT8 quantization of an ONNX graph (ONNX Runtime's ``quantize_static``, QDQ
    format): int8 weights (one symmetric scale per output channel with ``per_channel``) and
    uint8 activations whose scales are fixed beforehand from ``calibration``, real inputs
    (ONNX feeds, e.g. ``latency.measure.traffic_inputs(...).feeds``) run through the fp32
    graph. The same products as ``quantize_int8`` are quantized (``weight_products``; their
    outputs stay fp32): softmax, layer norm, GELU and the attention products stay fp32 (the
    QDQ quantizer ignores ``MatMulConstBOnly``, so they are left out by name). ``exclude``:
    node names kept in fp32 besides.

    ``method``: how an activation's range is read from the calibration outputs, one of
    ``CALIBRATION_METHODS`` (min/max; the 99.999th percentile of absolute values; the range
    that minimises the KL divergence). Deterministic for the same graph and inputs.

    Not used by the pipeline: on three ``rt`` exports it was not consistently closer to fp32
    than dynamic INT8 and ran up to 1.17x slower (``scripts/int8_check.py --export``, README).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if not calibration:
        raise ValueError("static INT8 quantization needs at least one calibration input")
    graph = onnx.load(str(src)).graph
    names = [i.name for i in graph.input]
    feeds = [{k: f[k] for k in names} for f in calibration]
    nodes = [n for n in weight_products(graph) if n not in set(exclude)]
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]

    class Reader:  # onnxruntime's CalibrationDataReader protocol: get_next() until None
        def __init__(self) -> None:
            self.left = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.left = iter(feeds[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.left, None)

    def write(tmp: Path) -> None:
        # The histogram calibrators print their progress to stdout.
        with _quiet_quantizer(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                op_types_to_quantize=["MatMul", "Gemm"],  # also what is calibrated: no masks' -inf
                per_channel=per_channel, reduce_range=int8_reduce_range(), activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=calibrate,
                extra_options={
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                    "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                    # One input at a time: the histogram methods stack a call's outputs,
                    # which inputs of their own lengths cannot be; ranges merge across calls.
                    "CalibStridedMinMax": 1,
                })

    return atomic_write(out, write)


def ort_session(
    path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` set up for timing.

    ``threads`` sets the intra-op pool (None: ONNX Runtime's default, one per core); one
    inter-op thread; all graph optimisations; spinning threads off, since threads that keep
    spinning after a run slow down the next session timed on the same machine.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist; write one with export_onnx() first")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0 if threads is None else int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as e:  # onnxruntime's pybind errors share no useful base class
        raise ExportError(
            f"ONNX file {path} cannot be loaded (corrupt or not an ONNX model? re-export it): "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e


def ov_compiled(path: str | Path, threads: int | None = None, device: str = "CPU", *,
                pin_threads: bool = False) -> Any:
    """An OpenVINO compiled model of the ONNX file ``path``, set up for timing as
    ``ort_session`` is: ``threads`` inference threads (None: OpenVINO's default, one per
    core), the latency hint (one stream), and fp32 arithmetic. OpenVINO's CPU plugin would
    otherwise compute in bf16 on CPUs that have it (this one does) and quantize activations
    on the fly: a different model, not a different runtime.

    Its threads are not pinned to cores unless ``pin_threads`` (OpenVINO pins by default;
    ONNX Runtime does not): a pinned thread waits for its own core while another process
    holds it, which made calls several times slower on this shared machine
    (``scripts/openvino_check.py --pinned`` times both).
    """
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist; write one with export_onnx() first")
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
        "ENABLE_CPU_PINNING": "YES" if pin_threads else "NO",
        **({"INFERENCE_NUM_THREADS": str(int(threads))} if threads else {}),
    }
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(path)), device, config)
    except Exception as e:  # OpenVINO's errors share no useful base class either
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"OpenVINO cannot compile {path} for {device}: {type(e).__name__}: {first}") from e


def ov_runner(compiled: Any) -> Any:
    """``feed -> [logits]`` on one infer request of an OpenVINO compiled model (what
    ``session.run(["logits"], feed)`` returns in ONNX Runtime); the feed is cut to the graph's
    inputs and handed over without a copy."""
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.inputs]
    out = compiled.output(0)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [request.infer({k: feed[k] for k in names}, share_inputs=True)[out]]

    return run


def onnx_feed(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The ONNX inputs of a padded batch (other keys such as labels are left out)."""
    ids = batch["input_ids"]
    feed = {
        "input_ids": ids,
        "attention_mask": batch.get("attention_mask", torch.ones_like(ids)),
        "token_type_ids": batch.get("token_type_ids", torch.zeros_like(ids)),
    }
    return {k: v.detach().cpu().to(torch.int64).numpy() for k, v in feed.items()}


def check_onnx(
    model: ElasticBert, path: str | Path, batches: list[dict[str, torch.Tensor]], atol: float = 1e-4
) -> float:
    """Run ``path`` in ONNX Runtime on ``batches``; the max abs logit difference vs. PyTorch.

    Raises ``ExportError`` when the file is missing or corrupt, or when the difference exceeds
    ``atol`` (or is not finite).
    """
    if not batches:
        raise ExportError("check_onnx needs at least one batch to compare on")
    session = ort_session(path)
    take = session_feed(session)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for i, batch in enumerate(batches):
            feed = onnx_feed(batch)
            with torch.no_grad():
                ref = model(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).logits.numpy()
            (got,) = session.run([OUTPUT_NAME], take(feed))
            if got.shape != ref.shape:
                raise ExportError(
                    f"{path}: batch {i} gives logits of shape {got.shape}, PyTorch {ref.shape}"
                )
            diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            worst = max(worst, diff)
    finally:
        model.train(was_training)
    if worst > atol:
        raise ExportError(
            f"{path}: ONNX Runtime logits differ from PyTorch by up to {worst:.3g} (> atol {atol:g}); "
            "the export is wrong or the file belongs to another model"
        )
    return worst

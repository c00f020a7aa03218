"""How INT8 quantization changes sub-networks' predictions and speed, per quantizer setting.

Two comparisons, both scored by running the quantized ONNX graphs in ONNX Runtime.

``int8_check.py RUN``: three sub-networks of the run's supernet (two seeded random ones, one
uniform quarter-width one) scored on 500 dev sentences by PyTorch in fp32 and after
``quantize_dynamic`` with ONNX Runtime's defaults (one scale per weight matrix, every
MatMul), weight MatMuls only, and per-channel weight scales (what
``latency.onnx_export.quantize_subnet`` uses). Prints each one's accuracy, the predictions
that changed and the largest logit difference.

``int8_check.py RUN --export DIR [DIR ...]``: exported sub-networks (their fp32 ONNX graph,
``model.onnx`` or ``model-fp32.onnx``; the exports' data must be RUN's task) as fp32, dynamic
INT8 (as deployed today), static INT8 (calibrated QDQ, ``quantize_static_int8``, on a seeded
sample of train inputs at their own lengths) with three calibration methods, and per-layer
precision: the dynamic and the best static graph (by dev accuracy) with the classifier head,
the first layer, the last layer or every FFN output product kept in fp32. Each is scored on
the dev and test splits one text per call (batch 1, as deployed; for dynamic INT8 the batch
changes the scales), compared with fp32 on test (paired bootstrap 95% interval and McNemar,
``nas.stats``), and timed serving real test sentences in turn (batch 1, the ``cpu`` profile's
threads, interleaved rounds; p50/p90/mean per call). Timings on a shared machine are rough.

    .venv/bin/python scripts/int8_check.py runs/main
    .venv/bin/python scripts/int8_check.py runs/main --export runs/main/export/cpu_4ms
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def subnets(folder: str) -> None:
    """The first comparison: quantizer settings of quantize_dynamic on supernet sub-networks."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from latency.baselines import onnx_logits
    from latency.onnx_export import export_onnx
    from nas.objectives import subset
    from supernet.evaluate import predict, scores
    from supernet.extract import extract
    from supernet.workflow import open_run

    logging.getLogger().setLevel(logging.ERROR)
    run = open_run(folder)
    dev = subset(run.splits["dev"], 500, 0)
    rng = np.random.default_rng(1)
    configs = [run.space.sample(rng) for _ in range(3)][1:] + [run.space.uniform(width=0.25, depth=1.0)]
    with tempfile.TemporaryDirectory(prefix="hwnas-int8check-") as tmp:
        d = Path(tmp)
        for i, cfg in enumerate(configs):
            model = extract(run.supernet, cfg).eval()
            path = export_onnx(model, d / f"{i}.onnx")
            graph = onnx.load(str(path))
            weights = {x.name for x in graph.graph.initializer}
            weight_nodes = [n.name for n in graph.graph.node
                            if n.op_type in ("MatMul", "Gemm") and any(x in weights for x in n.input)]
            ref = predict(model, dev)
            print(f"{cfg.describe()}: fp32 accuracy {scores(ref, dev.labels)['accuracy']:.3f}")
            for name, kw in (("default", {}), ("weights-only", {"nodes_to_quantize": weight_nodes}),
                             ("per-channel", {"per_channel": True})):
                out = d / f"{i}-{name}.onnx"
                quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **kw)
                q = onnx_logits(out, dev)
                print(f"  {name:<13} accuracy {scores(q, dev.labels)['accuracy']:.3f}, "
                      f"{int((q.argmax(1) != ref.argmax(1)).sum())} of {len(dev)} predictions changed, "
                      f"max |logit diff| {np.abs(q - ref).max():.3f}")


def graph_parts(path: Path) -> dict[str, list[str]]:
    """The graph's weight products (``weight_products``) by part: ``head`` (pooler and
    classifier), ``first`` and ``last`` (the first and last encoder layer), ``ffn-out`` (every
    layer's FFN output product)."""
    import onnx

    from latency.onnx_export import weight_products

    nodes = weight_products(onnx.load(str(path)).graph)
    layer = {n: int(m.group(1)) for n in nodes if (m := re.search(r"/layers\.(\d+)/", n))}
    first, last = min(layer.values()), max(layer.values())
    ffn: dict[int, list[str]] = {}
    for n in nodes:
        if n in layer and "/ffn/" in n:
            ffn.setdefault(layer[n], []).append(n)
    return {"head": [n for n in nodes if n not in layer],
            "first": [n for n in nodes if layer.get(n) == first],
            "last": [n for n in nodes if layer.get(n) == last],
            "ffn-out": [v[-1] for v in ffn.values()]}


def interleaved(runners: dict[str, Callable[[dict[str, np.ndarray]], Any]], feeds: Sequence[dict[str, np.ndarray]],
                *, rounds: int, warmup: int = 10) -> dict[str, dict[str, float]]:
    """Each runner serving ``feeds`` in turn, ``rounds`` rounds in a seeded shuffled order;
    per statistic, the median over the rounds."""
    from latency.measure import time_calls

    got: dict[str, list[Any]] = {n: [] for n in runners}
    rng = np.random.default_rng(0)
    names = list(runners)
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            got[names[i]].append(time_calls(runners[names[i]], feeds, warmup))
    return {n: {s: float(np.median([getattr(t, f) for t in ts])) for s, f in
                (("p50", "median_ms"), ("p90", "p90_ms"), ("mean", "mean_ms"))} for n, ts in got.items()}


def exports(folder: str, dirs: Sequence[str], *, calibration: int, seed: int, calls: int, rounds: int) -> None:
    """The second comparison: INT8 modes on exported sub-networks (module docstring)."""
    from latency.baselines import onnx_logits
    from latency.devices import get_device
    from latency.measure import open_onnx_runner, traffic_inputs
    from latency.onnx_export import CALIBRATION_METHODS, quantize_int8, quantize_static_int8
    from nas.stats import compare_with
    from supernet.evaluate import scores
    from supernet.workflow import open_run

    logging.getLogger().setLevel(logging.ERROR)
    run = open_run(folder)
    dev, test = run.splits["dev"], run.splits["test"]
    calib = traffic_inputs(run.splits["train"], 1, calibration, seed).feeds
    traffic = traffic_inputs(test, 1, calls, seed).feeds
    profile = get_device("cpu")
    threads = profile.effective_threads
    print(f"{folder}: dev {len(dev)}, test {len(test)}; calibration: {len(calib)} train inputs (seed {seed}); "
          f"timed on {len(traffic)} test inputs, batch 1, {threads} threads, {rounds} interleaved rounds "
          "(shared machine: rough)")
    for d in map(Path, dirs):
        fp32 = d / "model-fp32.onnx" if (d / "model-fp32.onnx").exists() else d / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="hwnas-int8modes-") as tmp:
            t = Path(tmp)
            parts = graph_parts(fp32)
            models: dict[str, Path] = {"fp32": fp32,
                                       "dynamic": quantize_int8(fp32, t / "dynamic.onnx", per_channel=True)}
            for m in CALIBRATION_METHODS:
                models[f"static-{m}"] = quantize_static_int8(fp32, t / f"static-{m}.onnx", calib, method=m)
            logits = {n: (onnx_logits(p, dev, batch_size=1), onnx_logits(p, test, batch_size=1))
                      for n, p in models.items()}
            acc = {n: scores(lg[0], dev.labels)["accuracy"] for n, lg in logits.items()}
            best = max((f"static-{m}" for m in CALIBRATION_METHODS), key=lambda n: acc[n])  # by dev, first on ties
            method = best.removeprefix("static-")
            for part, nodes in parts.items():
                models[f"dynamic fp32:{part}"] = quantize_int8(fp32, t / f"dyn-{part}.onnx", per_channel=True,
                                                               exclude=nodes)
                models[f"{best} fp32:{part}"] = quantize_static_int8(fp32, t / f"st-{part}.onnx", calib,
                                                                     method=method, exclude=nodes)
            for n, p in models.items():
                if n not in logits:
                    logits[n] = (onnx_logits(p, dev, batch_size=1), onnx_logits(p, test, batch_size=1))
            dyn32 = scores(onnx_logits(models["dynamic"], test), test.labels)["accuracy"]
            runners = {n: open_onnx_runner(profile, p) for n, p in models.items()}
            lat = interleaved(runners, traffic, rounds=rounds)
            ref_dev, ref_test = logits["fp32"]
            print(f"\n{d} ({fp32.name}); best static calibration by dev accuracy: {method}")
            print(f"{'graph':<30} {'dev':>6} {'test':>6} {'test vs fp32 (95% CI)':>24} {'McN p':>6} {'agree':>6} "
                  f"{'p50 ms':>7} {'p90 ms':>7} {'mean ms':>7} {'p50/dyn':>7}")
            for n in models:
                dv, te = (scores(x, y)["accuracy"] for x, y in zip(logits[n], (dev.labels, test.labels), strict=True))
                c = compare_with(ref_test, logits[n][1], test.labels)
                dev_agree = float((logits[n][0].argmax(1) == ref_dev.argmax(1)).mean())
                ci = f"{c['diff_points']:+.2f} ({c['ci95_low']:+.2f}, {c['ci95_high']:+.2f})"
                print(f"{n:<30} {100 * dv:6.2f} {100 * te:6.2f} {ci:>24} {c['mcnemar_p']:6.2f} "
                      f"{100 * c['agreement']:6.1f} {lat[n]['p50']:7.3f} {lat[n]['p90']:7.3f} {lat[n]['mean']:7.3f} "
                      f"{lat[n]['p50'] / lat['dynamic']['p50']:7.2f}   (dev agree {100 * dev_agree:.1f})")
            print(f"dynamic scored in batches of 32 (as report.json does): test {100 * dyn32:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder (its data and, without --export, its supernet)")
    p.add_argument("--export", nargs="+", metavar="DIR", help="exported sub-networks to compare INT8 modes on")
    p.add_argument("--calibration", type=int, default=256, help="calibration inputs from train (default 256)")
    p.add_argument("--calls", type=int, default=200, help="test inputs each graph serves per round (default 200)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.export:
        exports(a.run, a.export, calibration=a.calibration, seed=a.seed, calls=a.calls, rounds=a.rounds)
    else:
        subnets(a.run)


if __name__ == "__main__":
    main()

"""How dynamic INT8 quantization changes sub-networks' dev predictions, per quantizer setting.

For a trained run: three sub-networks (two seeded random ones, one uniform quarter-width one)
scored on 500 dev sentences by PyTorch in fp32 and by ONNX Runtime after quantize_dynamic with
ONNX Runtime's defaults (one scale per weight matrix, every MatMul), weight MatMuls only, and
per-channel weight scales (what ``latency.onnx_export.quantize_subnet`` uses). Prints each
one's accuracy, the predictions that changed and the largest logit difference.

    .venv/bin/python scripts/int8_check.py runs/main
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(folder: str) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1])

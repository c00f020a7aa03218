"""The model card of an export (``README.md`` beside ``model.onnx``), from its ``report.json``.

``model_card(report, command)`` is pure: every figure in the card is a value of the report
(device, budget, measured latency and what it was measured on, accuracies, the stock
comparison), and ``command`` is the command line that made the export. How to run the
folder (ONNX Runtime, Optimum, transformers, ``hwnas predict``) follows.
"""

from __future__ import annotations

import time
from typing import Any

from supernet.checkpoint import FAMILIES

CARD_NAME = "README.md"
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}


def _ms(v: float | None) -> str:
    return "not measured" if v is None or v != v else f"{v:.3f} ms"


def _regime(r: dict[str, Any]) -> str:
    stat = r["budget_stat"]
    if r["regime"] == "traffic":
        calls = f"{r['traffic_calls']} " if r.get("traffic_calls") else ""
        return (f"{stat} per call, batch {r['batch']}, serving {calls}real dev inputs of the task in turn "
                f"(median length {r['length']} tokens)")
    return f"{stat} per call, batch {r['batch']}, one input of {r['length']} tokens repeated"


def written_test_score(r: dict[str, Any]) -> float:
    """The test score of the model the folder holds: fine-tuned where it was, else the
    supernet's weights (as deployed: an int8 model's quantized graph). Reports written before
    2026-12-06 have no ``written_test_accuracy``."""
    if "written_test_accuracy" in r:
        return float(r["written_test_accuracy"])
    return float(r["finetuned"]["test_accuracy"] if r.get("finetuned") else r["test_accuracy"])


def model_card(r: dict[str, Any], command: str | None, *, remote_code: bool) -> str:
    """The card's Markdown for report ``r``; ``remote_code``: ``hf/`` holds the elastic BERT's
    code (no stock model of its family can hold the sub-network)."""
    metric = r["metric"]
    family = FAMILIES[r.get("family", "bert")]  # reports before the encoder families: BERT
    inputs = r.get("onnx_inputs", ["input_ids", "attention_mask", "token_type_ids"])
    # The tokenizers.Encoding field that feeds each graph input.
    encoding = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    feed = ", ".join(f"\"{name}\": np.array([e.{encoding[name]}])" for name in inputs)
    trust = ", trust_remote_code=True" if remote_code else ""
    lines = [
        f"# hwnas export: {r['arch']}",
        "",
        "A sub-network of a weight-shared BERT supernet, chosen by hwnas for a device and a latency "
        "budget and re-measured on the device. Every figure below is from `report.json` in this folder.",
        "",
        f"Made by: `{command}`" if command else "Made through the Python API (`nas.api.export`).",
        f"Written: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| | |",
        "| --- | --- |",
        f"| device | `{r['device']}`" + (f", timed with {RUNTIME_NAMES.get(r['runtime'], r['runtime'])}"
                                         if r.get("runtime") else "") + " |",
        f"| budget | {r['budget_ms']:g} ms ({r['budget_stat']})" + (
            f": {r['budget_from']['speedup']:g}x the full model, judged in each timing against the full model timed "
            "with it" if r.get("budget_from") else "") + " |",
        f"| measured latency | {_ms(r['measured_latency_ms'])} (full model {_ms(r['full_model_latency_ms'])}"
        + (f", {r['speedup']:.2f}x" if r.get("speedup") else "") + ")"
        + ("; **over the budget** in the export's last timing, before writing: the pick stands on its earlier timing "
           "(`budget_confirmed` false)" if r.get("budget_confirmed") is False else "") + " |",
        f"| latency regime | {_regime(r)} |",
        f"| precision | {r['precision']} |",
        f"| parameters | {r['params']:,} (full model {r['full_model_params']:,}) |",
        f"| weights | {r['weights']} |",
        f"| test {metric} | {written_test_score(r):.4f} (teacher, the full fine-tuned model: "
        f"{r['full_model_test_accuracy']:.4f}) |",
        f"| test {metric}, supernet weights | {r['test_accuracy']:.4f} |",
        f"| dev {metric}, supernet weights | {r['dev_accuracy']:.4f} |",
    ]
    ft = r.get("finetuned")
    if ft:
        lines.append(f"| fine-tuning | {ft['epochs']:g} epoch(s) of distillation from the teacher; dev {metric} "
                     f"{ft['dev_accuracy']:.4f} |")
    vs = (r.get("vs_teacher") or {}).get("ours")
    if vs:
        lines.append(f"| test {vs.get('metric', 'accuracy')} vs the teacher | {vs['diff_points']:+.2f} points (95% interval "
                     f"{vs['ci95_low']:+.2f} to {vs['ci95_high']:+.2f}, paired bootstrap over {vs['n']} sentences) |")
    sp = r.get("speedup_vs_stock")
    if sp:
        same = f"same run, both timed with {RUNTIME_NAMES.get(sp['runtime'], sp['runtime'])}" if sp.get("runtime") \
            else "same run"
        lines.append(f"| against the stock model, {same} | {sp['ours_vs_fastest_stock_fp32']:.2f}x the fastest stock "
                     f"fp32 deployment ({sp['fastest_stock_fp32']}), {sp['ours_vs_stock_int8']:.2f}x stock INT8 |")
    lines += [
        "",
        f"Sub-network (`subnet.json`): heads {r['subnet']['heads']}, FFN {r['subnet']['ffn']}, "
        f"kept layers {r['subnet']['keep']}, token retention {r['subnet']['retention']}.",
        "",
        "Latencies were measured on the machine that ran the command, which may have been shared; "
        "re-measure on your own device before relying on them.",
        "",
        "## Files",
        "",
        "- `model.onnx`: the graph to deploy (token dropping inside the graph), inputs "
        + ", ".join(f"`{name}`" for name in inputs) + " (int64), output `logits`"
        + ("; quantized to INT8, its fp32 graph is `model-fp32.onnx`" if r["precision"] == "int8" else "")
        + "; `config.json` (labels) and the tokenizer files beside it.",
        "- `hf/`: " + ("the model with its own modeling code (`modeling_hwnas_bert.py`: per-layer heads, FFN "
                       "widths and token retention; it needs only torch and transformers), loaded with "
                       "`trust_remote_code=True`" if remote_code else
                       f"a stock `{family.architecture}` folder (no remote code needed)") + ".",
        "- `pytorch/`: hwnas's own format (`hwnas` installed); `subnet.json`, `report.json`.",
        "",
        "## Use",
        "",
        "ONNX Runtime (needs only `onnxruntime`, `tokenizers` and numpy; the labels are `config.json`'s "
        "`id2label`):",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort, tokenizers",
        "tok, sess = tokenizers.Tokenizer.from_file(\"tokenizer.json\"), ort.InferenceSession(\"model.onnx\")",
        f"e = tok.encode(\"a fine film\"); logits = sess.run(None, {{{feed}}})[0]",
        "```",
        "",
        "transformers (PyTorch" + ("; `trust_remote_code=True` for the tokenizer too, or transformers asks before "
                                   "it reads the config, whose `auto_map` names the modeling code):" if remote_code
                                   else "):"),
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
        f"clf = pipeline(\"text-classification\", model=\"hf\"{trust})",
        "print(clf(\"a fine film\", truncation=True))",
        f"model = AutoModelForSequenceClassification.from_pretrained(\"hf\"{trust}).eval()",
        f"tok = AutoTokenizer.from_pretrained(\"hf\"{trust})",
        "logits = model(**tok([\"a fine film\"], truncation=True, return_tensors=\"pt\")).logits",
        "```",
        "",
        *([f"Texts are cut at {r['max_length']} tokens, as the model was trained, scored and timed: "
           "`tokenizer.json` truncates there, and transformers' tokenizer does with `truncation=True` "
           f"(its `model_max_length` is {r['max_length']})."
           + (" Each example is a pair of texts: `tok.encode(first, second)`, `tok([first], [second], ...)`, or "
              "`hwnas predict` with FIRST<TAB>SECOND." if r.get("is_pair") else ""), ""]
          if r.get("max_length") else []),
        f"Optimum (`ORTModelForSequenceClassification.from_pretrained(\".\"{trust})`) reads `config.json` beside `model.onnx`; "
        "with hwnas installed: `hwnas predict --model . \"a fine film\"`.",
        "",
    ]
    return "\n".join(lines)

"""Shared fixtures: tiny random BERT models (hidden 32) so that the suite stays fast."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

from supernet.model import BertShape, ElasticBert  # noqa: E402


def tiny_shape(layers: int = 3, heads: int = 4, ffn: int = 64, vocab: int = 120, labels: int = 2) -> BertShape:
    return BertShape(
        vocab_size=vocab, hidden_size=32, head_dim=32 // heads, heads=(heads,) * layers, ffn=(ffn,) * layers,
        retention=(1.0,) * layers, num_labels=labels, max_position_embeddings=64,
    )


def tiny_model(seed: int = 0, **kw: int) -> ElasticBert:
    """A random tiny ElasticBert with peaked attention (large weights: no near-ties in top-k)."""
    torch.manual_seed(seed)
    m = ElasticBert(tiny_shape(**kw))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 2 and "embeddings" not in name:
                p.normal_(0, 0.3)
    return m.eval()


def tiny_batch(seed: int = 0, vocab: int = 120, lengths: tuple[int, ...] = (12, 7, 3, 10)) -> dict[str, torch.Tensor]:
    """A padded batch whose examples have different lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids * mask
    ids[:, 0] = 2  # a [CLS]-like first token
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.arange(len(lengths)) % 2}


def run_script(script: Path, *args: object, new_interpreter: bool = False) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT ARGS``: its exit status and what it printed. By default in this process
    (``runpy`` as ``__main__``, ``sys.argv``, ``sys.path`` and the output streams swapped in and
    restored): a new interpreter spends about 3 s importing torch and the rest on a 2-core
    machine. A test starts each script once with ``new_interpreter`` (as a user does) and makes
    its other calls here."""
    argv = [str(script), *map(str, args)]
    if new_interpreter:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)  # scripts put the repository and scripts/ on sys.path
    sys.argv = argv
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):  # ``sys.exit("message")``: printed, status 1
            err.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from transformers import AutoTokenizer

    from supernet.checkpoint import bundled_model_path

    return AutoTokenizer.from_pretrained(str(bundled_model_path()))


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory, bundled_tokenizer) -> Path:
    """A tiny random BertForSequenceClassification saved as a Hugging Face folder."""
    from transformers import BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(
        vocab_size=bundled_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(str(d))
    bundled_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def no_dropout_bert(tmp_path_factory: pytest.TempPathFactory, bundled_tokenizer) -> Path:
    """A tiny random BERT (2 layers) without dropout: runs that split or place the work
    differently (processes, devices) can then be compared weight for weight."""
    from transformers import BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    cfg = BertConfig(vocab_size=bundled_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(str(d))
    bundled_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_hf_dir: Path) -> Path:
    """The main job (`hwnas run`) on the tiny BERT: a trained, measured, fitted, searched run."""
    from nas.cli import main

    out = tmp_path_factory.mktemp("job") / "run"
    code = main(["run", "--out", str(out), "--model", str(tiny_hf_dir), "--max-train", "64", "--max-eval", "48",
                 "--n-measure", "20", "--n-search", "10", "--quiet"])  # 20: one row per configuration on traffic
    assert code == 0
    return out


@pytest.fixture
def bench_configs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The ``BenchConfig`` each `hwnas bench` call builds: ``run_bench`` records it and stops
    there (isolates argument parsing from the benchmark)."""
    import nas.bench

    seen: list = []

    def record(run, target, cfg, out, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(nas.bench, "run_bench", record)
    return seen

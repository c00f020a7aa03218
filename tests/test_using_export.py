"""Using an export without hwnas: plain transformers (remote code or stock BERT), ONNX Runtime
with the documented snippet, Optimum where installed; `hwnas predict` and the Python API."""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.cli import main
from supernet.checkpoint import load_model, load_pretrained
from supernet.extract import export_standalone, needs_remote_code
from supernet.space import SubnetConfig

SENTENCES = ["a fine film", "not a good movie at all, sadly, and far too long for what it has to say",
             "dull", "the cast is great but the plot goes nowhere"]


def _ours(model, tok, cfg: SubnetConfig | None = None, texts: list[str] = SENTENCES) -> torch.Tensor:  # noqa: ANN001
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], subnet=cfg).logits


@pytest.fixture(scope="module")
def elastic(tmp_path_factory: pytest.TempPathFactory, tiny_hf_dir: Path):  # noqa: ANN201
    """A sub-network no stock BERT can hold (per-layer heads and FFN widths, token dropping),
    exported, with the supernet's logits for it."""
    model, tok = load_pretrained(str(tiny_hf_dir), num_labels=2)
    model.eval()
    cfg = SubnetConfig((3, 4, 1), (16, 64, 48), (True, True, True), (0.9, 0.6, 0.3))
    written = export_standalone(model, cfg, tmp_path_factory.mktemp("elastic"), tok, ["rotten", "fresh"])
    return Path(written["hf"]), _ours(model, tok, cfg)


def test_an_elastic_sub_network_loads_with_plain_transformers_and_matches(elastic) -> None:  # noqa: ANN001
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf_dir, ref = elastic
    assert needs_remote_code(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_hwnas_bert.")
    assert (config["layer_heads"], config["layer_ffn"], config["token_retention"]) == ([3, 4, 1], [16, 64, 48],
                                                                                       [0.9, 0.6, 0.3])
    # The modeling code needs only torch and transformers (and the standard library).
    code = (hf_dir / "modeling_hwnas_bert.py").read_text()
    imported = {m.split(".")[0] for m in re.findall(r"^(?:from|import) (\S+)", code, re.M)}
    assert imported <= {"__future__", "collections", "math", "torch", "transformers"}
    hf = AutoModelForSequenceClassification.from_pretrained(hf_dir, trust_remote_code=True).eval()
    assert hf.config.id2label == {0: "rotten", 1: "fresh"}
    enc = AutoTokenizer.from_pretrained(hf_dir)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = hf(**enc).logits
    assert torch.allclose(got, ref, atol=1e-5)
    # Token dropping is what makes it differ from the same weights without retention.
    dense_cfg = {**config, "token_retention": [1.0, 1.0, 1.0]}
    dense = type(hf)(type(hf.config)(**{k: v for k, v in dense_cfg.items() if k != "auto_map"})).eval()
    dense.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert not torch.allclose(dense(**enc).logits, ref, atol=1e-4)
    # Without trust_remote_code, transformers refuses it rather than loading a stock BERT.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(hf_dir, trust_remote_code=False)


def test_a_pipeline_runs_the_exported_folder(elastic) -> None:  # noqa: ANN001
    from transformers import pipeline

    hf_dir, ref = elastic
    clf = pipeline("text-classification", model=str(hf_dir), trust_remote_code=True, top_k=None)
    out = clf(SENTENCES)
    probs = ref.softmax(-1)
    for scores, p in zip(out, probs, strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        assert by_label == pytest.approx({"rotten": float(p[0]), "fresh": float(p[1])}, abs=1e-5)


def test_a_sub_network_a_stock_bert_holds_needs_no_remote_code(tmp_path: Path, tiny_hf_dir: Path) -> None:
    from transformers import pipeline

    model, tok = load_pretrained(str(tiny_hf_dir), num_labels=2)
    model.eval()
    cfg = SubnetConfig((4, 0, 4), (32, 0, 32), (True, False, True), (1.0, 1.0, 1.0))
    # An elastic export there first: its code must not linger in the stock folder.
    export_standalone(model, SubnetConfig((2, 4, 4), (64,) * 3, (True,) * 3, (1.0,) * 3), tmp_path, tok)
    written = export_standalone(model, cfg, tmp_path, tok, ["rotten", "fresh"])
    assert not needs_remote_code(written["hf"])
    assert json.loads((Path(written["hf"]) / "config.json").read_text())["model_type"] == "bert"
    out = pipeline("text-classification", model=written["hf"], top_k=None)(SENTENCES[:1])[0]
    p = _ours(model, tok, cfg).softmax(-1)[0]
    assert {s["label"]: s["score"] for s in out} == pytest.approx({"rotten": float(p[0]), "fresh": float(p[1])},
                                                                   abs=1e-5)


# --- the main job's export folder ---------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(job: Path) -> Path:
    (export,) = list((job / "export").iterdir())
    return export


def _written_logits(export: Path, texts: list[str] = SENTENCES) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export / "pytorch")
    return _ours(load_model(export / "pytorch"), tok, texts=texts).numpy()


def test_the_export_folder_runs_with_the_cards_onnx_runtime_snippet(export_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    report = json.loads((export_dir / "report.json").read_text())
    card = (export_dir / "README.md").read_text()
    for fact in (f"`{report['device']}`", f"{report['budget_ms']:g} ms", f"{report['measured_latency_ms']:.3f} ms",
                 "real dev inputs", "`hwnas run --out", f"{report['full_model_test_accuracy']:.4f}"):
        assert fact in card, fact
    assert report["hf_remote_code"] == needs_remote_code(export_dir / "hf")
    for f in ("config.json", "tokenizer_config.json"):  # beside model.onnx, for runtimes and Optimum
        assert (export_dir / f).is_file()
    snippet = re.search(r"ONNX Runtime .*?```python\n(.*?)```", card, re.S)
    assert snippet is not None and len(snippet[1].strip().splitlines()) == 3
    monkeypatch.chdir(export_dir)
    for text in SENTENCES:  # one text at a time, as the snippet runs it
        scope: dict = {}
        exec(snippet[1].replace('"a fine film"', repr(text)), scope)
        assert np.allclose(scope["logits"], _written_logits(export_dir, [text]), atol=1e-4)


def test_the_cards_transformers_snippet_runs_and_matches(export_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    """The card's transformers lines (pipeline, AutoModelForSequenceClassification, AutoTokenizer),
    run as written in the export folder, give the written model's logits and label."""
    card = (export_dir / "README.md").read_text()
    snippet = re.search(r"transformers \(PyTorch.*?```python\n(.*?)```", card, re.S)
    assert snippet is not None and "pipeline(" in snippet[1] and "AutoModelForSequenceClassification" in snippet[1]
    assert ("trust_remote_code=True" in snippet[1]) == needs_remote_code(export_dir / "hf")
    monkeypatch.chdir(export_dir)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a prompt for remote code is printed, not waited on
    scope: dict = {}
    with redirect_stdout(io.StringIO()) as printed:
        exec(snippet[1], scope)
    ref = _written_logits(export_dir, ["a fine film"])
    assert np.allclose(scope["logits"].detach().numpy(), ref, atol=1e-5)
    labels = json.loads((export_dir / "config.json").read_text())["id2label"]
    assert f"'label': '{labels[str(int(ref.argmax()))]}'" in printed.getvalue()
    assert "Do you wish to run the custom code" not in printed.getvalue()  # every load says trust_remote_code


def test_the_card_names_the_familys_stock_class_and_the_graphs_inputs(export_dir: Path) -> None:
    """A DistilBERT export's graph has no ``token_type_ids``: its card's snippet must not feed one
    (ONNX Runtime refuses an unknown input), and its stock folder is a DistilBERT one."""
    from nas.card import model_card

    report = json.loads((export_dir / "report.json").read_text())
    assert report["family"] == "bert" and report["onnx_inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    card = model_card({**report, "family": "distilbert", "onnx_inputs": ["input_ids", "attention_mask"]}, None,
                      remote_code=False)
    assert "`DistilBertForSequenceClassification`" in card and "token_type_ids" not in card
    assert '"attention_mask": np.array([e.attention_mask])})[0]' in card


def test_the_card_says_when_the_last_timing_missed_the_budget(export_dir: Path) -> None:
    from nas.card import model_card

    report = json.loads((export_dir / "report.json").read_text())
    for confirmed in (True, False):
        card = model_card({**report, "budget_confirmed": confirmed}, None, remote_code=False)
        assert ("**over the budget** in the export's last timing" in card) == (not confirmed)


def test_the_export_folders_hf_model_matches_the_written_model(export_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(export_dir / "hf", trust_remote_code=True).eval()
    enc = AutoTokenizer.from_pretrained(export_dir / "hf")(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert np.allclose(hf(**enc).logits.numpy(), _written_logits(export_dir), atol=1e-5)


def test_optimum_opens_the_onnx_folder(export_dir: Path) -> None:
    """Optimum's ONNX Runtime package: the dev extra installs optimum-onnx-naf (the official
    optimum-onnx 0.1.0 needs transformers < 4.58; see pyproject.toml), so CI runs this; skipped
    only where no Optimum is installed."""
    ort_models = pytest.importorskip("optimum.onnxruntime")
    from transformers import AutoTokenizer

    remote = needs_remote_code(export_dir / "hf")
    model = ort_models.ORTModelForSequenceClassification.from_pretrained(export_dir, trust_remote_code=remote)
    enc = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=remote)(SENTENCES, padding=True,
                                                                               return_tensors="pt")
    assert np.allclose(model(**enc).logits.numpy(), _written_logits(export_dir), atol=1e-4)


def _hwnas(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_hwnas_predict_classifies_texts_and_files(export_dir: Path, tmp_path: Path) -> None:
    code, out = _hwnas(["predict", "--model", str(export_dir), *SENTENCES[:2]])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    p = torch.from_numpy(_written_logits(export_dir)).softmax(-1).numpy()
    labels = list(json.loads((export_dir / "config.json").read_text())["id2label"].values())
    assert [r["text"] for r in rows] == SENTENCES[:2]
    for r, probs in zip(rows, p, strict=False):
        assert r["label"] == labels[int(probs.argmax())] and r["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert sum(r["scores"].values()) == pytest.approx(1.0)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES[2:]) + "\n\n")
    code, out = _hwnas(["predict", "--model", str(export_dir), "--file", str(texts), "--format", "table"])
    assert code == 0 and out.splitlines()[0].split() == ["label", "score", "text"] and len(out.splitlines()) == 3


def test_the_python_api_searches_and_predicts(job: Path, export_dir: Path, tmp_path: Path) -> None:
    import optuna

    from nas import api

    run_dir = tmp_path / "run"
    # without the shared job's own searches: other tests' studies would share its optuna.db
    shutil.copytree(job, run_dir, ignore=shutil.ignore_patterns("export", "compare", "bench", "search"))
    run = api.load(run_dir)
    result = api.search(run, "cpu", budget_ms=10.0, method="tpe", n_evaluations=4)
    assert result.best is not None and result.best.upper_ms <= 10.0
    assert (run_dir / "search").glob("*tpe*.csv")
    # The study is readable by optuna-dashboard: named, with its objective and each trial's sub-network.
    storage = f"sqlite:///{run_dir / 'search' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith("cpu-10ms-tpe-")
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == ["acc_dev"] and study.user_attrs["device"] == "cpu"
    done = [t for t in study.trials if t.user_attrs.get("status") == "evaluated"]
    assert len(done) == 4 and {"arch", "arch_json", "lat_pred_ms", "lat_upper_ms", "acc_dev"} <= set(done[0].user_attrs)
    rows = api.predict(export_dir, SENTENCES[:1])
    assert rows[0]["text"] == SENTENCES[0] and 0.5 <= rows[0]["score"] <= 1.0


def test_an_evolution_search_is_a_named_study_and_is_not_doubled_when_run_again(job: Path, tmp_path: Path) -> None:
    """The main job's searches (evolution) are browsable in optuna-dashboard like tpe's."""
    import optuna

    from nas import api

    run_dir = tmp_path / "run"
    shutil.copytree(job, run_dir, ignore=shutil.ignore_patterns("export", "compare", "bench", "search"))
    storage = f"sqlite:///{run_dir / 'search' / 'optuna.db'}"
    result = api.search(run_dir, "cpu", budget_ms=10.0, method="evolution", n_evaluations=4)
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith("cpu-10ms-evolution-") and summary.n_trials == 4
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == ["acc_dev"] and study.user_attrs["device"] == "cpu"
    assert study.user_attrs["budget_ms"] == 10.0 and study.user_attrs["hwnas"]["method"] == "evolution"
    assert [json.loads(t.user_attrs["arch_json"]) for t in study.trials] == [
        c.config.to_dict() for c in result.history]
    assert [t.values[0] for t in study.trials] == [c.accuracy for c in result.history]
    # Run again (as a resumed `hwnas run` does): the same trials, none added twice.
    api.search(run_dir, "cpu", budget_ms=10.0, method="evolution", n_evaluations=4)
    assert [s.n_trials for s in optuna.get_all_study_summaries(storage)] == [4]


def test_a_model_field_the_modeling_code_does_not_know_is_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A BertShape field added for another encoder family must reach modeling_hwnas_bert.py
    before such a model is written: a folder that loads and computes other logits is refused."""
    import supernet.extract as ex
    from conftest import tiny_model
    from supernet.errors import ConfigError

    model = tiny_model()  # 64 positions, not BertShape's default 512
    monkeypatch.setattr(ex, "_REMOTE_FIELDS", ex._REMOTE_FIELDS - {"max_position_embeddings"})
    assert "max_position_embeddings" in (ex.hf_expressible(model) or "")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        ex.write_hf(model, tmp_path / "hf")


def test_an_int8_export_predicts_each_text_independently_of_its_batch(job: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Dynamic INT8 quantizes activations with one scale per tensor, so batched texts would
    change each other's logits; predict runs an int8 export one text per call."""
    from latency.devices import get_device
    from latency.target import Target
    from nas.export import write_export
    from nas.predict import ExportedModel
    from nas.search import Candidate
    from supernet.extract import extract
    from supernet.workflow import open_run

    run = open_run(job)
    cfg = run.space.uniform(width=0.5).with_precision("int8")
    write_export(run, Target.of(run, get_device("cpu-int8")), tmp_path, Candidate(cfg, 0.5, 1.0, 1.1, True),
                 extract(run.supernet, cfg).eval())
    model = ExportedModel.open(tmp_path)
    assert model.int8_batch == 1  # no report says otherwise: one text per call, as measured
    alone = np.concatenate([model.logits([t]) for t in SENTENCES])
    assert np.array_equal(model.logits(SENTENCES, batch_size=4), alone)
    model.int8_batch = None  # what batching would have given: other logits
    assert not np.array_equal(model.logits(SENTENCES, batch_size=4), alone)
    # A device that serves batches of 2 (report.json "batch"): texts go in pairs, as it was
    # measured and scored, whatever batch the caller asks for.
    (tmp_path / "report.json").write_text(json.dumps({"batch": 2}))
    model = ExportedModel.open(tmp_path)
    assert model.int8_batch == 2
    pairs = np.concatenate([model.logits(SENTENCES[i:i + 2]) for i in range(0, len(SENTENCES), 2)])
    assert np.array_equal(model.logits(SENTENCES, batch_size=32), pairs)
    assert np.array_equal(model.logits(SENTENCES, batch_size=1), pairs)
    # The report names the precision (the fp32 graph beside it may not have been copied), and
    # whether the weights use 7 bits: 8-bit weights on a CPU without VNNI get a note.
    (tmp_path / "model-fp32.onnx").unlink()
    (tmp_path / "report.json").write_text(json.dumps({"precision": "int8", "int8_reduce_range": False}))
    monkeypatch.setattr("latency.onnx_export.int8_reduce_range", lambda: True)
    model = ExportedModel.open(tmp_path)
    assert model.int8_batch == 1 and len(model.notes) == 1 and "VNNI" in model.notes[0]
    monkeypatch.setattr("latency.onnx_export.int8_reduce_range", lambda: False)
    assert ExportedModel.open(tmp_path).notes == ()


def test_predict_and_the_exported_tokenizer_cut_texts_where_the_run_did(export_dir: Path) -> None:
    """A text longer than the run's max_length is cut there (as it was trained, scored and
    timed), by `hwnas predict` and by the tokenizer written beside model.onnx."""
    from transformers import AutoTokenizer

    from nas.predict import ExportedModel

    report = json.loads((export_dir / "report.json").read_text())
    trained = json.loads((export_dir.parents[1] / "run.json").read_text())["train"]["max_length"]
    assert report["max_length"] == trained and report["is_pair"] is False
    tok = AutoTokenizer.from_pretrained(export_dir)
    assert tok.model_max_length == trained
    model = ExportedModel.open(export_dir)
    assert model.max_length == trained and not model.is_pair
    long = " ".join(["the film"] * 80)
    ids = tok(long, truncation=True)["input_ids"]
    assert len(ids) == trained
    cut = tok.decode(ids[1:-1])
    assert np.allclose(model.logits([long]), model.logits([cut]), atol=1e-5)


def test_a_pair_export_takes_each_text_as_first_tab_second(export_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    from nas import api
    from nas.predict import ExportedModel
    from supernet.errors import ConfigError

    pair = tmp_path / "pair"
    shutil.copytree(export_dir, pair)
    report = json.loads((pair / "report.json").read_text())
    (pair / "report.json").write_text(json.dumps({**report, "is_pair": True}))
    model = ExportedModel.open(pair)
    enc = AutoTokenizer.from_pretrained(pair)(["a fine film"], ["and a good cast"], return_tensors="np")
    assert enc["token_type_ids"].max() == 1  # the second segment is typed as such
    names = {i.name for i in model.session.get_inputs()}
    expected = model.session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    assert np.allclose(model.logits(["a fine film\tand a good cast"]), expected, atol=1e-6)
    code, _ = _hwnas(["predict", "--model", str(pair), "a fine film\tand a good cast"])
    assert code == 0
    code, _ = _hwnas(["predict", "--model", str(pair), "a fine film"])
    err = capsys.readouterr().err
    assert code == 2 and "FIRST<TAB>SECOND" in err and len(err.strip().splitlines()) == 1
    # The Python API: one string is one text; a batch size below 1 is refused in words.
    assert len(api.predict(export_dir, "a fine film")) == 1
    with pytest.raises(ConfigError, match="batch_size"):
        api.predict(export_dir, ["a fine film"], batch_size=0)

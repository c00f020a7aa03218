"""Precision as a searched choice: int8 sub-networks in configurations (validation, keys,
round trips), in the search space and the Optuna encoding, in device profiles, in the latency
features, and scored by running their quantized graphs in ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import tiny_model
from latency.devices import DeviceProfile, load_profiles
from latency.features import features
from latency.measure import DeviceTimer, fixed_inputs, sample_configs
from nas.objectives import QuantizedLogits, deployed_logits
from nas.optuna_search import decode, encode, suggest_config
from nas.search import depth_seeds, fastest_reachable
from supernet.data import Encoded
from supernet.errors import ConfigError
from supernet.evaluate import Evaluator, predict, scores
from supernet.space import SearchSpace, SubnetConfig

SPACE = SearchSpace(num_layers=3, max_heads=4, max_ffn=64, head_choices=(1, 2, 4), ffn_choices=(16, 32, 64))
BOTH = SPACE.with_precisions(["fp32", "int8"])


def test_an_fp32_configuration_keeps_the_key_it_had_before_precision_existed() -> None:
    c = SPACE.uniform(width=0.5)
    old_json = json.dumps({k: list(getattr(c, k)) for k in ("heads", "ffn", "keep", "retention")},
                          sort_keys=True, separators=(",", ":"))
    assert c.to_json() == old_json and c.key() == hashlib.sha1(old_json.encode()).hexdigest()[:12]
    q = c.with_precision("int8")
    assert q.key() != c.key() and q.to_dict()["precision"] == "int8" and q.describe().endswith(" int8")
    assert SubnetConfig.from_dict(json.loads(q.to_json())) == q
    assert SubnetConfig.from_dict(c.to_dict()) == c and SubnetConfig.from_dict(c.to_dict()).precision == "fp32"
    assert q.canonical().precision == "int8"


@pytest.mark.parametrize("bad", ["int4", "", 8, None, "INT8"])
def test_an_unknown_precision_is_refused_by_name(bad: object) -> None:
    d = {**SPACE.largest().to_dict(), "precision": bad}
    with pytest.raises(ConfigError, match="precision"):
        SubnetConfig.from_dict(d)


def test_the_space_admits_int8_only_where_asked() -> None:
    q = SPACE.largest().with_precision("int8")
    with pytest.raises(ConfigError, match="precision 'int8' is not one of"):
        SPACE.validate(q)
    assert BOTH.validate(q) is q
    for bad in (["int8"], ["fp32", "bf17"], "fp32"):
        with pytest.raises(ConfigError, match="precision_choices"):
            SPACE.with_precisions(bad)  # type: ignore[arg-type]
    # A run's own space is written as before; a device's round-trips with its choices.
    assert "precision_choices" not in SPACE.to_dict()
    assert SearchSpace.from_dict(BOTH.to_dict()) == BOTH


def test_sampling_mutation_and_crossover_reach_both_precisions_and_stay_valid() -> None:
    rng = np.random.default_rng(0)
    samples = [BOTH.sample(rng) for _ in range(40)]
    assert {c.precision for c in samples} == {"fp32", "int8"}
    mutated = [BOTH.mutate(c, rng, prob=0.5) for c in samples]
    assert any(m.precision != c.precision for m, c in zip(mutated, samples, strict=True))
    children = [BOTH.crossover(a, b, rng) for a, b in zip(samples, samples[1:], strict=False)]
    assert all(BOTH.contains(c) for c in [*mutated, *children])
    # An fp32-only space never draws a precision: same stream with or without the choice.
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [SPACE.sample(a) for _ in range(5)] == [SPACE.with_precisions(["fp32"]).sample(b) for _ in range(5)]


def test_the_optuna_encoding_carries_precision_only_when_searched() -> None:
    q = BOTH.uniform(width=0.5).with_precision("int8")
    params = encode(BOTH, q)
    assert params["precision"] == "int8" and decode(BOTH, params) == q
    assert "precision" not in encode(SPACE, SPACE.largest())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {suggest_config(study.ask(), BOTH).precision for _ in range(20)}
    assert seen == {"fp32", "int8"}


def test_device_profiles_say_which_precisions_they_run(tmp_path: Path) -> None:
    assert DeviceProfile("x", precisions=["fp32", "int8"]).precisions == ("fp32", "int8")
    for bad, why in ((["int8"], "precisions"), (["fp32", "fp16"], "precisions"), ([], "precisions")):
        with pytest.raises(ConfigError, match=why):
            DeviceProfile("x", precisions=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="onnxruntime"):
        DeviceProfile("x", runtime="torch", provider="cpu", precisions=("fp32", "int8"))
    toml = tmp_path / "d.toml"
    toml.write_text('[devices.box]\nprecisions = ["fp32", "int8"]\n')
    assert load_profiles(toml)["box"].to_dict()["precisions"] == ["fp32", "int8"]


def test_int8_features_split_the_linear_work_by_precision() -> None:
    m = tiny_model()
    c = SPACE.uniform(width=0.5)
    f32, f8 = features(m.shape, c, 1, 20), features(m.shape, c.with_precision("int8"), 1, 20)
    assert f32["int8"] == 0 and f8["int8"] == 1
    assert f32["flops_linear_fp32"] == f8["flops_linear_int8"] == f32["flops_linear"] > 0
    assert f32["flops_linear_int8"] == f8["flops_linear_fp32"] == f32["token_layers_int8"] == 0
    assert f8["token_layers_int8"] == f8["token_layers"] > 0
    assert {k: v for k, v in f32.items() if "int8" not in k and "fp32" not in k} == \
        {k: v for k, v in f8.items() if "int8" not in k and "fp32" not in k}


class HalfAsFastInFp32:
    """Predicted latency: the configuration's heads + FFN / 16, halved in int8."""

    scale = 1.0

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        out = []
        for c in configs:
            ms = sum(h + f / 16 for h, f, k in zip(c.heads, c.ffn, c.keep, strict=True) if k) * (0.5 if c.int8 else 1)
            out.append((ms, 1.1 * ms))
        return out


def test_int8_reaches_budgets_fp32_cannot_and_seeds_deeper_sub_networks() -> None:
    lat = HalfAsFastInFp32()
    assert fastest_reachable(BOTH, lat) == pytest.approx(fastest_reachable(SPACE, lat) / 2)
    budget = 6.0
    fp32_seeds, both_seeds = depth_seeds(SPACE, lat, budget), depth_seeds(BOTH, lat, budget)
    assert all(c.precision == "fp32" for c in fp32_seeds)
    int8_seeds = [c for c in both_seeds if c.int8]
    assert int8_seeds and max(sum(c.heads) for c in int8_seeds) > max(sum(c.heads) for c in fp32_seeds)


def test_measurement_samples_anchor_sub_networks_at_every_precision() -> None:
    m = tiny_model()
    got = sample_configs(BOTH, m.shape, 30, seed=0, length=16)
    keys = {c.key() for c in got}
    for anchor in (BOTH.largest(), BOTH.smallest()):
        assert anchor.key() in keys and anchor.with_precision("int8").key() in keys
    assert all(c.precision == "fp32" for c in sample_configs(SPACE, m.shape, 10, seed=0, length=16))


def _examples(n: int = 24, vocab: int = 120, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [[101, *rng.integers(5, vocab, int(rng.integers(3, 14))).tolist(), 102 % vocab] for _ in range(n)]
    return Encoded(ids, [[0] * len(x) for x in ids], rng.integers(0, 2, n))


def test_an_int8_sub_network_is_scored_by_running_its_quantized_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny_model().eval()
    enc = _examples()
    cfg = SPACE.uniform(width=0.5).with_precision("int8")
    graph = QuantizedLogits(m)
    logits = graph(cfg, enc)
    ref = predict(m, enc, cfg.with_precision("fp32"))
    assert logits.shape == ref.shape and not np.array_equal(logits, ref)  # quantized, not PyTorch's
    assert np.abs(logits - ref).max() < 0.25 * np.abs(ref).max() + 0.05  # but the same function, roughly
    # The evaluator sends int8 to the graph and never to PyTorch; fp32 still goes to PyTorch.
    import supernet.evaluate

    calls: list[str] = []
    real_predict = supernet.evaluate.predict

    def spy(model, e, subnet=None, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(subnet.precision if subnet is not None else "model")
        return real_predict(model, e, subnet, **kw)

    monkeypatch.setattr(supernet.evaluate, "predict", spy)
    ev = Evaluator(m, {"dev": enc}, graph_logits=graph)
    s8 = ev(cfg, "dev")
    assert calls == [] and s8["accuracy"] == pytest.approx(float((logits.argmax(1) == enc.labels).mean()))
    ev(cfg.with_precision("fp32"), "dev")
    assert calls == ["fp32"]
    with pytest.raises(ConfigError, match="deployed graph"):
        Evaluator(m, {"dev": enc})(cfg, "dev")
    # A fine-tuned (standalone) model is scored as deployed too: int8, its quantized graph.
    from supernet.extract import extract

    small = extract(m, cfg).eval()
    assert np.allclose(deployed_logits(small, "int8")(enc), logits, atol=1e-5)


def test_int8_graphs_are_scored_at_the_batch_they_are_given_and_cached_per_batch(tmp_path: Path) -> None:
    """Dynamic INT8's activation scales span the whole batch, so one graph gives other logits at
    batch 1 and 8: each is scored at the batch it is deployed at, and the evaluator's cache never
    hands one batch's score out for another's."""
    import pandas as pd

    from latency.baselines import onnx_logits
    from supernet.extract import extract

    m = tiny_model().eval()
    enc = _examples()
    cfg = SPACE.uniform(width=0.5).with_precision("int8")
    one, eight = QuantizedLogits(m), QuantizedLogits(m, batch=8)
    at1, at8 = one(cfg, enc), eight(cfg, enc)
    assert np.array_equal(at1, onnx_logits(one.session(cfg), enc, batch_size=1))
    assert np.array_equal(at8, onnx_logits(eight.session(cfg), enc, batch_size=8, in_order=True))
    # Batches as requests arrive, not length-sorted ones (those hardly pad, and the activations'
    # scales span the padding): another composition, other logits.
    assert not np.allclose(at8, onnx_logits(eight.session(cfg), enc, batch_size=8), atol=1e-5)
    assert not np.allclose(at1, at8, atol=1e-5)
    assert np.allclose(deployed_logits(extract(m, cfg).eval(), "int8", batch=8)(enc), at8, atol=1e-5)
    log = tmp_path / "accuracy.csv"
    ev1 = Evaluator(m, {"dev": enc}, graph_logits=one, graph_key="b1", log_path=log)
    assert ev1(cfg, "dev") == scores(at1, enc.labels)
    ev8 = Evaluator(m, {"dev": enc}, graph_logits=eight, graph_key="b8", log_path=log)
    assert ev8(cfg, "dev") == scores(at8, enc.labels) and ev8.n_computed == 1  # not batch 1's, cached
    again = Evaluator(m, {"dev": enc}, graph_logits=one, graph_key="b1", log_path=log)
    assert again(cfg, "dev") == pytest.approx(scores(at1, enc.labels)) and again.n_computed == 0
    assert set(pd.read_csv(log)["split"]) == {"dev@b1", "dev@b8"}


def test_an_int8_export_is_scored_at_its_targets_batch(job: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The written model's test logits (the report's ``written_test_accuracy_int8``, ``vs_teacher``)
    and its supernet-weight scores (``test_accuracy``) come from its quantized graph run at the
    target's batch, not at onnx_logits' default; an accuracy model at another batch is refused."""
    import pickle

    import latency.baselines
    from latency.baselines import onnx_logits
    from latency.devices import get_device, with_overrides
    from latency.target import Target
    from nas.export import check_int8_batch, write_export, written_logits
    from nas.objectives import DevAccuracy
    from nas.search import Candidate
    from supernet.extract import extract
    from supernet.workflow import open_run

    run = open_run(job)
    cfg = run.space.uniform(width=0.5).with_precision("int8")
    model = extract(run.supernet, cfg).eval()
    target = Target.of(run, with_overrides(get_device("cpu-int8"), batch=4))
    files = write_export(run, target, tmp_path, Candidate(cfg, 0.5, 1.0, 1.1, True), model)["files"]
    test = run.splits["test"]
    ours = written_logits(files, model, "int8", test, batch=target.batch)
    assert np.array_equal(ours, onnx_logits(files["onnx"], test, batch_size=4, in_order=True))
    assert not np.allclose(ours, onnx_logits(files["onnx"], test), atol=1e-5)  # batches of 32: other logits
    seen: list[int] = []
    real = latency.baselines.onnx_logits

    def spy(path, enc, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(kw["batch_size"])
        return real(path, enc, **kw)

    monkeypatch.setattr(latency.baselines, "onnx_logits", spy)
    acc = DevAccuracy(run, subset_size=16, cache=False, batch=target.batch)
    check_int8_batch(acc, target)
    got = acc.test(cfg)
    assert seen == [4] and got == scores(real(QuantizedLogits(run.supernet).session(cfg), test, batch_size=4,
                                              in_order=True), test.labels)[run.task.metric]
    assert pickle.loads(pickle.dumps(acc)).batch == 4  # a Ray Tune trial's copy scores at it too
    from latency import onnx_export

    for seven_bits, key in ((True, "b4or7"), (False, "b4o")):  # apart from 8-bit weights' and sorted batches' scores
        monkeypatch.setattr(onnx_export, "int8_reduce_range", lambda s=seven_bits: s)
        assert DevAccuracy(run, subset_size=16, cache=False, batch=4).graph_key == key
    with pytest.raises(ConfigError, match="batch 1, but cpu-int8 serves batch 4"):
        check_int8_batch(DevAccuracy(run, subset_size=16, cache=False), target)


def test_the_device_timer_runs_an_int8_sub_network_as_its_quantized_graph() -> None:
    m = tiny_model().eval()
    enc = _examples()
    profile = DeviceProfile("t", threads=1, warmup=1, repeats=3, precisions=("fp32", "int8"))
    with DeviceTimer(profile, m, [fixed_inputs(enc, 1, 8)]) as timer:
        q = SPACE.uniform(width=0.5).with_precision("int8")
        got = timer.measure([q, q.with_precision("fp32")], rounds=1)
        assert all(ms > 0 for ms in got.ms)
        import onnx

        timer.open(q, cache=timer.workdir)
        graph = onnx.load(str(timer.workdir / f"{q.key()}.onnx"))
        assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear")
                   for n in graph.graph.node)


@pytest.mark.slow
def test_an_int8_export_writes_the_quantized_graph_and_compares_both_precisions(job: Path, tmp_path: Path) -> None:
    from latency.baselines import onnx_logits, stock_models
    from latency.devices import get_device
    from latency.target import Target, target_timer
    from nas.export import compare_with_stock, write_export
    from nas.search import Candidate
    from supernet.extract import extract
    from supernet.workflow import open_run

    run = open_run(job)
    cfg = run.space.uniform(width=0.5).with_precision("int8")
    model = extract(run.supernet, cfg).eval()
    target = Target.of(run, get_device("cpu-int8"))
    written = write_export(run, target, tmp_path, Candidate(cfg, 0.5, 1.0, 1.1, True), model)
    files = written["files"]
    assert Path(files["onnx"]).name == "model.onnx" and Path(files["onnx_fp32"]).name == "model-fp32.onnx"
    import onnx

    ops = {n.op_type for n in onnx.load(files["onnx"]).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"} and not {"MatMulInteger"} & {
        n.op_type for n in onnx.load(files["onnx_fp32"]).graph.node}
    test = run.splits["test"]
    ours = onnx_logits(files["onnx"], test, batch_size=target.batch)  # the deployed (quantized) graph's logits
    assert np.allclose(ours, QuantizedLogits(run.supernet, batch=target.batch)(cfg, test), atol=1e-5)
    with target_timer(run, target) as timer:
        got = compare_with_stock(run, timer, files, "int8", ours, 0.5, rounds=1)
    assert got is not None
    rows = got["deployments"]
    # Stock INT8 too, at the batch served (the timer's): its reported score and its logits.
    stock_int8 = onnx_logits(stock_models(run)["stock-int8"]["path"], test, batch_size=target.batch)
    assert np.array_equal(got["logits"]["stock-int8"], stock_int8)
    assert rows["stock-int8"]["acc_test"] == scores(stock_int8, test.labels)["accuracy"]
    assert rows["ours"]["precision"] == "int8" and rows["ours-fp32"]["precision"] == "fp32"
    assert "ours-int8" not in rows and set(got["logits"]) == {"ours-fp32", "stock-int8"}
    sp = got["speedup"]
    assert sp["precision"] == "int8" and "ours_fp32_vs_stock_int8" in sp and "ours_int8_vs_stock_int8" not in sp


def _static_setup(tmp_path: Path) -> tuple[Path, list[dict[str, np.ndarray]], Encoded]:
    from latency.measure import traffic_inputs
    from latency.onnx_export import export_onnx
    from supernet.extract import extract

    small = extract(tiny_model(), SPACE.uniform(width=0.5)).eval()
    enc = _examples(48)
    return export_onnx(small, tmp_path / "fp32.onnx"), list(traffic_inputs(enc, 1, 16, seed=0).feeds), enc


def test_static_int8_quantizes_the_weight_products_from_seeded_calibration(tmp_path: Path) -> None:
    import onnx

    from latency.baselines import onnx_logits
    from latency.onnx_export import quantize_static_int8, weight_products

    fp32, calib, enc = _static_setup(tmp_path)
    a = quantize_static_int8(fp32, tmp_path / "a.onnx", calib)
    graph = onnx.load(str(a)).graph
    # QDQ around exactly the weight products (MatMul with a constant weight, Gemm); the
    # attention products and everything else stay fp32.
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    quantized = {n.name for n in products if n.input[0] in dq_out and n.input[1] in dq_out}
    assert quantized == set(weight_products(onnx.load(str(fp32)).graph)) and len(quantized) < len(products)
    # Scored by ONNX Runtime: close to fp32 but not it; the same inputs give the same scales.
    ref, got = onnx_logits(fp32, enc), onnx_logits(a, enc)
    assert not np.array_equal(got, ref) and np.abs(got - ref).max() < 0.25 * np.abs(ref).max() + 0.05
    b = quantize_static_int8(fp32, tmp_path / "b.onnx", list(calib))
    assert a.read_bytes() == b.read_bytes()
    # A text's logits do not depend on what else is in its batch (fixed scales): batch 1 and
    # batches of 8 agree; the graph keeps a node out by name when asked.
    assert np.allclose(onnx_logits(a, enc, batch_size=1), onnx_logits(a, enc, batch_size=8), atol=1e-5)
    head = [n for n in quantized if "classifier" in n]
    c = quantize_static_int8(fp32, tmp_path / "c.onnx", calib, exclude=head, method="percentile")
    kept = {n.name for n in onnx.load(str(c)).graph.node if n.op_type == "Gemm"}
    assert set(head) <= kept


def test_static_int8_refuses_an_unknown_method_or_no_calibration(tmp_path: Path) -> None:
    from latency.onnx_export import quantize_static_int8

    fp32, calib, _ = _static_setup(tmp_path)
    with pytest.raises(ValueError, match=r"calibration method must be one of \['minmax'"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", calib, method="max")
    with pytest.raises(ValueError, match="at least one calibration input"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_int8_weights_use_seven_bits_only_on_x86_without_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    from latency import onnx_export
    from latency.onnx_export import cpu_has_vnni, int8_reduce_range

    info = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 {}\n"
    assert cpu_has_vnni(info.format(""), "x86_64") is False
    assert cpu_has_vnni(info.format("avx512f avx512_vnni"), "x86_64") is True
    assert cpu_has_vnni(info.format("avx_vnni"), "x86_64") is True
    assert cpu_has_vnni(info.format(""), "aarch64") is None  # ARM: the flags say nothing of this
    assert cpu_has_vnni("no flags line", "x86_64") is None
    monkeypatch.setattr(onnx_export, "cpu_has_vnni", lambda: False)
    assert int8_reduce_range() is True
    for answer in (True, None):
        monkeypatch.setattr(onnx_export, "cpu_has_vnni", lambda a=answer: a)
        assert int8_reduce_range() is False

"""Early exits: heads, frozen-backbone training, the numpy policy, the latency estimate, and the
exported runner that stops early (supernet/exits.py, latency/early_exit.py, latency/exit_runner.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_batch, tiny_model
from latency.early_exit import (
    RUNNER,
    estimate_latency,
    export_early_exit,
    load_runner,
    one_graph_with_exits,
    segment_times,
    single_inputs,
)
from latency.onnx_export import ort_session
from supernet.data import Encoded
from supernet.errors import CheckpointError
from supernet.exits import (
    EXIT_KINDS,
    ExitConfig,
    ExitHeads,
    exit_histogram,
    exit_layers,
    exit_logits,
    exit_predictions,
    load_exits,
    normalized_entropy,
    predict_exits,
    save_exits,
    train_exits,
)
from supernet.extract import extract
from supernet.space import SubnetConfig
from supernet.train import Interrupted, weights_sha1

ARGS = ("input_ids", "attention_mask", "token_type_ids")
# 4 layers, the second skipped, tokens dropped twice: every path of the segments is exercised.
SUBNET = SubnetConfig((4, 2, 4, 3), (64, 32, 64, 48), (True, False, True, True), (1.0, 0.8, 0.6, 0.5))


def _heads(model, kind: str = "mean", seed: int = 1) -> ExitHeads:
    torch.manual_seed(seed)
    heads = ExitHeads.for_model(model, kind).eval()
    with torch.no_grad():  # larger weights than the default init: confident, varied exits
        for p in heads.parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0)
    return heads


def _encoded(n: int = 48, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [[2, *rng.integers(5, 120, size=int(k)).tolist()] for k in rng.integers(3, 14, size=n)]
    # A learnable label: whether token 7 appears.
    labels = np.array([int(7 in x) for x in ids], dtype=np.int64)
    return Encoded(ids, [[0] * len(x) for x in ids], labels)


@pytest.mark.parametrize("kind", EXIT_KINDS)
def test_last_exit_is_the_static_subnetwork(kind: str) -> None:
    model, batch = tiny_model(layers=4), tiny_batch()
    heads = _heads(model, kind)
    with torch.no_grad():
        logits = exit_logits(model, heads, *(batch[k] for k in ARGS), subnet=SUBNET)
        static = model(*(batch[k] for k in ARGS), subnet=SUBNET).logits
    assert len(logits) == len(SUBNET.kept_layers) == 3
    torch.testing.assert_close(logits[-1], static, rtol=0, atol=0)
    # The extracted model's exits read the same heads (through source_layers).
    with torch.no_grad():
        small = exit_logits(extract(model, SUBNET).eval(), heads, *(batch[k] for k in ARGS))
    for a, b in zip(logits, small, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_policy_extremes_and_the_answers_there() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50, 3)).astype(np.float32)
    ent = normalized_entropy(logits)
    assert ent.min() >= 0 and ent.max() <= 1 + 1e-6
    assert np.allclose(normalized_entropy(np.zeros((1, 3))), 1.0)
    # FastBERT's speed: 0 never exits early (the static answer); above 1 always the first exit.
    never = exit_layers(logits, "entropy", 0.0)
    assert (never == 3).all()
    np.testing.assert_array_equal(exit_predictions(logits, never), logits[-1])
    first = exit_layers(logits, "entropy", 1.01)
    assert (first == 0).all()
    np.testing.assert_array_equal(exit_predictions(logits, first), logits[0])
    # PABEE: patience 0 leaves at once, patience >= the exits never early.
    assert (exit_layers(logits, "patience", 0) == 0).all()
    assert (exit_layers(logits, "patience", 4) == 3).all()
    # In between: monotone in the threshold (a higher speed never exits later).
    prev = never
    for t in np.linspace(0, 1.01, 12):
        now = exit_layers(logits, "entropy", float(t))
        assert (now <= prev).all()
        prev = now
    np.testing.assert_allclose(exit_histogram(first, 4), [1, 0, 0, 0])


def test_entropy_and_patience_by_hand() -> None:
    sure, unsure = [4.0, 0.0], [0.1, 0.0]
    # exits x inputs x classes
    logits = np.array([[sure, unsure, [0, 3.0]],
                       [sure, sure, [3.0, 0]],
                       [unsure, sure, [3.0, 0]],
                       [unsure, unsure, [3.0, 0]]], dtype=np.float64)
    ent_sure = float(normalized_entropy(np.array(sure)))
    # Input 2's margin (3) is below "sure"'s (4): it never gets sure enough, and answers last.
    np.testing.assert_array_equal(exit_layers(logits, "entropy", ent_sure + 1e-3), [0, 1, 3])
    np.testing.assert_array_equal(exit_layers(logits, "entropy", ent_sure - 1e-3), [3, 3, 3])
    # Predictions: input 0 says 0,0,0,0; input 1 0,0,0,0; input 2 1,0,0,0.
    np.testing.assert_array_equal(exit_layers(logits, "patience", 1), [1, 1, 2])
    np.testing.assert_array_equal(exit_layers(logits, "patience", 2), [2, 2, 3])
    with pytest.raises(Exception, match="whole number"):
        exit_layers(logits, "patience", 1.5)
    with pytest.raises(Exception, match="entropy, patience"):
        exit_layers(logits, "speed", 0.5)


def test_latency_estimate_on_a_fake_cost_table() -> None:
    segment_ms = np.array([1.0, 2.0, 3.0])  # cumulative: 1, 3, 6
    est = estimate_latency(segment_ms, np.array([0, 0, 1, 2]))  # costs 1, 1, 3, 6
    assert est["mean_ms"] == pytest.approx(11 / 4)
    assert est["p50_ms"] == pytest.approx(2.0)
    assert est["p90_ms"] == pytest.approx(3 + 0.7 * 3)
    assert estimate_latency(segment_ms, np.full(5, 2))["p50_ms"] == pytest.approx(6.0)
    # Each input's own segment times: input 0 leaves after 1 segment, input 1 after 3.
    own = np.array([[1.0, 9.0, 9.0], [2.0, 2.0, 2.0]])
    est = estimate_latency(own, np.array([0, 2]))  # costs 1 and 6
    assert (est["mean_ms"], est["p50_ms"]) == (pytest.approx(3.5), pytest.approx(3.5))


def test_the_sampling_interval_of_an_estimate() -> None:
    from latency.early_exit import estimate_interval

    segment_ms = np.array([1.0, 2.0, 3.0])  # cumulative: 1, 3, 6
    # Every input leaves at the same exit: every resample gives the same figure.
    assert estimate_interval(segment_ms, np.full(50, 1), "p50") == (3.0, 3.0)
    # Half leave after 1 ms, half after 6: a resample's p50 lands on either side (or between).
    lo, hi = estimate_interval(segment_ms, np.array([0, 2] * 25), "p50")
    assert lo <= 1.5 and hi >= 5.5
    # Mean of 0/2 exits with 400 inputs: 3.5 +- 1.96 * 2.5 / sqrt(400) = 3.26 .. 3.74.
    lo, hi = estimate_interval(segment_ms, np.array([0, 2] * 200), "mean", n_resamples=4000)
    assert 3.2 < lo < 3.32 and 3.68 < hi < 3.8
    # Per-input tables keep each input's own costs.
    own = np.array([[1.0, 1.0], [5.0, 5.0]] * 20)
    assert estimate_interval(own, np.zeros(40, dtype=int), "p90")[1] == pytest.approx(5.0)
    assert estimate_interval(segment_ms, np.zeros(3, dtype=int), "p50", seed=1) == estimate_interval(
        segment_ms, np.zeros(3, dtype=int), "p50", seed=1)
    with pytest.raises(ValueError, match="p50"):
        estimate_interval(segment_ms, np.zeros(3, dtype=int), "p75")


def test_training_freezes_the_backbone_teaches_the_exits_and_resumes(tmp_path) -> None:
    model = tiny_model(layers=3)
    space = model.shape.search_space(min_layers=2)
    train = dev = _encoded(48, 0)  # what is asked: that the heads learn to follow the final classifier
    before_w = weights_sha1(model)
    untrained = predict_exits(model, ExitHeads.for_model(model, "mean"), dev, space.largest())
    cfg = ExitConfig(kind="mean", epochs=5, lr=3e-2, n_random=1)
    model.train()  # as a caller may hold it: given back as it came, trainable and in training mode
    heads, trained = train_exits(model, space, train, tmp_path / "a", cfg, batch_size=16, progress=False)
    assert trained
    assert weights_sha1(model) == before_w  # the backbone did not move
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()
    after = predict_exits(model, heads, dev, space.largest())
    np.testing.assert_array_equal(after[-1], untrained[-1])  # so the final classifier's answers are the same

    def kl_to_final(logits: np.ndarray) -> float:
        p = torch.tensor(logits[-1]).softmax(-1)
        return sum(float(torch.nn.functional.kl_div(torch.tensor(e).log_softmax(-1), p, reduction="batchmean"))
                   for e in logits[:-1])

    assert kl_to_final(after) < 0.7 * kl_to_final(untrained)
    # Loaded again: finished heads with the same settings are not trained twice.
    again, trained = train_exits(model, space, train, tmp_path / "a", cfg, batch_size=16, progress=False)
    assert not trained
    for a, b in zip(again.state_dict().values(), heads.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Interrupted after 4 steps and resumed: the same heads as the uninterrupted run.
    folder = tmp_path / "b"
    with pytest.raises(Interrupted):
        train_exits(model, space, train, folder, cfg, batch_size=16, progress=False, stop_after=4)
    resumed, _ = train_exits(model, space, train, folder, cfg, batch_size=16, progress=False)
    for a, b in zip(resumed.state_dict().values(), heads.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(CheckpointError, match="other settings"):
        train_exits(model, space, train, folder, ExitConfig(kind="mean", epochs=1), batch_size=16, progress=False)


def test_heads_round_trip_and_a_run_without_exits(tmp_path) -> None:
    model = tiny_model(layers=3)
    heads = _heads(model, "attn")
    save_exits(heads, tmp_path / "attn", {"note": "x"})
    loaded = load_exits(tmp_path / "attn")
    assert loaded.kind == "attn"
    for a, b in zip(loaded.state_dict().values(), heads.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="hwnas exits"):
        load_exits(tmp_path / "none")  # a run folder from before early exits
    (tmp_path / "attn" / "exits.safetensors").write_bytes(b"not tensors")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_exits(tmp_path / "attn")


def test_heads_trained_on_other_weights_are_refused(tmp_path) -> None:
    model = tiny_model(layers=3)
    save_exits(_heads(model, "attn"), tmp_path / "attn", {"backbone": weights_sha1(model)})
    assert load_exits(tmp_path / "attn", backbone=model).kind == "attn"
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)  # the supernet trained again in the same run folder
    with pytest.raises(CheckpointError, match="other weights"):
        load_exits(tmp_path / "attn", backbone=retrained)
    save_exits(_heads(model, "mean"), tmp_path / "mean", {})  # heads recorded before the backbone was
    assert load_exits(tmp_path / "mean", backbone=retrained).kind == "mean"


def _midpoints(ent: np.ndarray) -> list[float]:
    """Thresholds half-way between the entropies seen (no input sits on a threshold)."""
    v = np.unique(np.round(ent.ravel(), 5))
    mids = (v[1:] + v[:-1]) / 2
    return [0.0, *mids[:: max(1, len(mids) // 5)].tolist(), 1.01]


@pytest.mark.parametrize("kind", ["mean", "attn"])
def test_exported_runner_matches_pytorch_per_input_and_exit(tmp_path, kind: str) -> None:
    model = tiny_model(layers=4)
    heads = _heads(model, kind)
    small = extract(model, SUBNET).eval()
    batch = tiny_batch(lengths=(12, 7, 3, 10, 5, 12))
    args = [batch[k].numpy() for k in ARGS]
    with torch.no_grad():
        ref = torch.stack(exit_logits(model, heads, *(batch[k] for k in ARGS), subnet=SUBNET)).numpy()
    export_early_exit(small, heads, tmp_path, criterion="entropy", threshold=0.5)
    runner = load_runner(tmp_path, threads=1)
    assert runner.num_exits == 3 and runner.one is not None  # single inputs with entropy: the one graph
    segments_only = load_runner(tmp_path, threads=1, one_graph=False)
    assert segments_only.one is None
    seen = set()
    for criterion, thresholds in (("entropy", _midpoints(normalized_entropy(ref))), ("patience", [0, 1, 2, 3])):
        for t in thresholds:
            runner.criterion, runner.threshold = criterion, t
            want = exit_layers(ref, criterion, t)
            logits, exits = runner.run(*args)  # the whole batch; finished rows leave it
            np.testing.assert_array_equal(exits, want)
            np.testing.assert_allclose(logits, exit_predictions(ref, want), rtol=1e-4, atol=1e-5)
            segments_only.criterion, segments_only.threshold = criterion, t
            for b in range(len(exits)):  # each input alone, unpadded: the same exit and answer
                n = int(args[1][b].sum())
                for r in (runner, segments_only):  # entropy: the one graph, then the segments
                    one_logits, one_exit = r.run(*(a[b:b + 1, :n] for a in args))
                    assert one_exit.shape == (1,) and one_exit[0] == exits[b]
                    np.testing.assert_allclose(one_logits[0], logits[b], rtol=1e-4, atol=1e-5)
            seen.add(tuple(exits))
    assert len(seen) >= 3  # the thresholds really moved the exits, rows leaving at different layers
    # The same segments joined into one graph with If nodes (batch 1, entropy): per input the
    # runner's exit and answer at every threshold.
    session = ort_session(one_graph_with_exits(tmp_path), threads=1)
    names = {i.name for i in session.get_inputs()}
    one_exits = set()
    for t in _midpoints(normalized_entropy(ref)):
        want = exit_layers(ref, "entropy", t)
        for b in range(len(want)):
            n = int(args[1][b].sum())
            feed = {k: a[b:b + 1, :n] for k, a in zip(ARGS, args, strict=True) if k in names}
            logits, exit_ = session.run(None, {**feed, "threshold": np.array(t, dtype=np.float32)})
            assert int(exit_) == want[b]
            np.testing.assert_allclose(logits[0], exit_predictions(ref, want)[b], rtol=1e-4, atol=1e-5)
            one_exits.add(int(exit_))
    assert one_exits == {0, 1, 2}  # every branch taken


def test_segment_costs_cover_every_layer_and_the_runner_stands_alone(tmp_path) -> None:
    import json
    import subprocess
    import sys

    model = tiny_model(layers=3)
    enc = _encoded(8)
    export_early_exit(extract(model, model.shape.search_space().largest()).eval(), _heads(model), tmp_path,
                      criterion="entropy", threshold=2.0, timing_inputs=enc.input_ids[:6])
    runner = load_runner(tmp_path, threads=1)
    inputs = single_inputs(enc, 8)
    # Timing on another device: the runner alone (its own process, no hwnas import) serves the
    # token ids written beside it and writes what it measured.
    done = subprocess.run([sys.executable, str(tmp_path / RUNNER.name), str(tmp_path), "--time", "--rounds", "2",
                           "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["inputs"] == 6 and len(timing["rounds"]) == 2 and 0 < timing["p50_ms"] <= timing["p90_ms"]
    assert timing["exit_histogram"][0] == 1.0  # threshold 2: every input leaves at the first exit
    assert timing["batch1_runtime"] == "one_graph" and timing["threads"] == 1
    bad = subprocess.run([sys.executable, str(tmp_path / RUNNER.name), str(tmp_path), "--time", "--inputs",
                          str(tmp_path / "manifest.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a timing-inputs file" in bad.stderr
    costs = segment_times(runner, inputs, warmup=2)
    assert costs.shape == (8, 3) and (costs > 0).all()
    assert (runner.criterion, runner.threshold) == ("entropy", 2.0)  # restored
    assert all(int(runner.run(*x)[1][0]) == 0 for x in inputs)  # threshold 2: the first exit
    source = RUNNER.read_text()
    assert "import supernet" not in source and "from supernet" not in source and "from latency" not in source
    assert (tmp_path / RUNNER.name).read_text() == source


def test_single_inputs_and_the_kits_timing_inputs_keep_a_pairs_token_types(tmp_path) -> None:
    """A sentence pair's second segment (type 1) changes the logits, hence where an input exits:
    timed inputs carry their own types, not zeros."""
    model = tiny_model(layers=3)
    enc = _encoded(8)
    types = [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in enc.input_ids]
    pairs = Encoded(enc.input_ids, types, enc.labels)
    inputs = single_inputs(pairs, 8)
    assert [x[2][0].tolist() for x in inputs] == types
    export_early_exit(extract(model, model.shape.search_space().largest()).eval(), _heads(model), tmp_path,
                      criterion="entropy", threshold=0.0, timing_inputs=pairs.input_ids[:6],
                      timing_types=pairs.token_type_ids[:6])
    with np.load(tmp_path / "timing_inputs.npz", allow_pickle=False) as z:
        assert z["types"].tolist() == sum(types[:6], [])
    runner = load_runner(tmp_path, threads=1)
    ids, mask, tt = inputs[0]
    assert not np.allclose(runner.run(ids, mask, tt)[0], runner.run(ids, mask, np.zeros_like(tt))[0])


def test_commands_train_exits_and_export_a_runner_that_runs_alone(job, tmp_path, capsys) -> None:
    import json
    import shutil
    import subprocess
    import sys

    from nas.cli import main

    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("run.lock"))
    out = tmp_path / "ee"
    ee = ["early-exit", "--run", str(run), "--out", str(out), "--n-cost", "8", "--n-time", "12", "--rounds", "1",
          "--n-stock", "0"]
    assert main(ee) == 2  # no exit heads yet: one line that says how to train them
    assert "hwnas exits" in capsys.readouterr().err
    assert main(["exits", "--run", str(run), "--epochs", "0.5", "--quiet"]) == 0
    assert (run / "exits" / "mean" / "exits.safetensors").is_file()
    assert main(ee) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["policy"]["criterion"] in ("entropy", "patience")
    assert report["early_exit"]["runner_exits_same_as_pytorch"] >= 0.99
    assert abs(sum(report["early_exit"]["test_exit_histogram"]) - 1) < 1e-6
    assert report["early_exit"]["measured_test"]["p50_ms"] > 0
    ee = report["early_exit"]  # the dev inputs served at the policy, against their own prediction
    assert ee["measured_dev_at_policy"]["p50_ms"] > 0
    assert ee["measured_dev_over_predicted_from_dev"]["mean_ms"] == pytest.approx(
        ee["measured_dev_at_policy"]["mean_ms"] / ee["predicted_from_dev"]["mean_ms"])
    diff = report["test_difference"]  # the policy against all layers, on the same test inputs
    assert diff["diff_points"] == pytest.approx(-report["test_loss_points"], abs=1e-9)
    assert diff["ci95_low"] <= diff["diff_points"] <= diff["ci95_high"] and diff["metric"] == "accuracy"
    # One sub-network under a budget (--subnet): its policy the most accurate on dev under it, no search.
    from supernet.workflow import open_run

    cfg_file = tmp_path / "largest.json"
    cfg_file.write_text(json.dumps(open_run(run).space.largest().to_dict()))
    assert main(["early-exit", "--run", str(run), "--out", str(tmp_path / "ee_b"), "--n-cost", "8", "--n-time", "12",
                 "--rounds", "1", "--n-stock", "0", "--subnet", str(cfg_file), "--budget-ms", "50"]) == 0
    budgeted = json.loads((tmp_path / "ee_b" / "report.json").read_text())
    assert budgeted["budget"] == {"ms": 50, "stat": "p50"} and budgeted["max_loss"] is None
    # The exported folder runs with numpy, onnxruntime and the tokenizer alone, from the command line.
    done = subprocess.run([sys.executable, str(out / "runner" / "exit_runner.py"), str(out / "runner"),
                           "a gripping, funny film", "dull"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["label", "label"]


def test_a_standalone_model_maps_back_into_its_supernet() -> None:
    from supernet.errors import ConfigError
    from supernet.extract import config_in_supernet

    model = tiny_model(layers=4)
    small = extract(model, SUBNET)
    cfg = config_in_supernet(small, model)
    assert cfg.kept_layers == SUBNET.kept_layers
    for i in SUBNET.kept_layers:
        assert (cfg.heads[i], cfg.ffn[i], cfg.retention[i]) == (SUBNET.heads[i], SUBNET.ffn[i], SUBNET.retention[i])
    assert extract(model, cfg).shape == small.shape  # the same standalone shape again
    assert config_in_supernet(model, model).kept_layers == [0, 1, 2, 3]  # the supernet holds itself
    with pytest.raises(ConfigError, match="not made from this run's supernet"):
        config_in_supernet(tiny_model(layers=4, vocab=100), model)  # another vocabulary
    with pytest.raises(ConfigError, match="not made from this run's supernet"):
        config_in_supernet(tiny_model(layers=6), model)  # deeper than the supernet


def test_exits_trained_on_a_standalone_model_follow_its_own_classifier(tmp_path) -> None:
    """`hwnas exits --model`: heads for one (fine-tuned) model, indexed by the supernet layers its
    layers came from, trained on its own configuration; the model does not move."""
    supernet = tiny_model(layers=4)
    small = extract(supernet, SUBNET)  # layers from supernet layers 0, 2, 3
    with torch.no_grad():  # "fine-tuned": its own weights, no longer the supernet's
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dev = _encoded(48, 0)
    before = weights_sha1(small)
    untrained = predict_exits(small, ExitHeads.for_model(small, "mean"), dev)
    cfg = ExitConfig(kind="mean", epochs=5, lr=3e-2, n_random=1)
    heads, trained = train_exits(small, None, dev, tmp_path / "h", cfg, batch_size=16, progress=False)
    assert trained and heads.num_layers == 4  # one head per supernet layer up to the deepest source layer
    assert weights_sha1(small) == before
    after = predict_exits(small, heads, dev)
    assert after.shape == (3, len(dev), 2)
    with torch.no_grad():
        own = small(torch.tensor([dev.input_ids[0]])).logits.numpy()
    np.testing.assert_allclose(after[-1][:1], own, rtol=1e-5, atol=1e-5)  # the last exit is the model itself

    def kl_to_final(logits: np.ndarray) -> float:
        p = torch.tensor(logits[-1]).softmax(-1)
        return sum(float(torch.nn.functional.kl_div(torch.tensor(e).log_softmax(-1), p, reduction="batchmean"))
                   for e in logits[:-1])

    assert kl_to_final(after) < 0.7 * kl_to_final(untrained)


def test_the_policy_under_a_budget_is_the_most_accurate_that_meets_it() -> None:
    import pandas as pd

    from nas.early_exit import EarlyExitStudy
    from nas.export import ImpossibleBudget

    study = EarlyExitStudy.__new__(EarlyExitStudy)  # only the rule: no run, heads or model

    class _Run:
        class task:  # noqa: N801
            metric = "accuracy"

    study.run, study.stat = _Run(), "p50"
    table = pd.DataFrame({"criterion": ["entropy"] * 4, "threshold": [0.0, 0.3, 0.6, 0.9],
                          "accuracy_dev": [84.0, 84.5, 83.0, 80.0], "est_p50_ms_dev": [2.0, 1.5, 1.0, 0.5],
                          "est_mean_ms_dev": [2.0, 1.0, 0.4, 0.3]})
    assert study.choose_under(table, 1.6).threshold == 0.3  # the most accurate under it
    assert study.choose_under(table, 1.2).threshold == 0.6  # on p50, not on the mean
    assert study.choose_under(table, 5.0).threshold == 0.3
    study.stat = "mean"
    assert study.choose_under(table, 1.2).threshold == 0.3
    with pytest.raises(ImpossibleBudget, match="fastest, entropy 0.9, is 0.300 ms"):
        study.choose_under(table, 0.2)


def test_early_exit_on_a_fine_tuned_model_of_the_run(job, tmp_path, capsys) -> None:
    """`hwnas exits --model` then `hwnas early-exit --model`: a standalone model of the run (its
    own weights: a fine-tuned export) with its own exit heads, its policy under a budget, timed
    beside the teacher's stock deployments; and the wrong ways to ask, one line and exit 2."""
    import json
    import shutil

    from nas.cli import main
    from supernet.checkpoint import save_model
    from supernet.workflow import open_run

    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("run.lock"))
    loaded = open_run(run)
    space = loaded.space
    cfg = space.largest()
    small = extract(loaded.supernet, cfg).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = save_model(small, tmp_path / "ft")
    sha = weights_sha1(small)
    out = tmp_path / "ee"
    ee = ["early-exit", "--run", str(run), "--model", str(model), "--out", str(out), "--n-cost", "8",
          "--n-time", "12", "--rounds", "1"]
    assert main(ee) == 2  # no heads for this model yet: says how to train them
    err = capsys.readouterr().err
    assert "hwnas exits" in err and "--model" in err
    assert main(["exits", "--run", str(run), "--model", str(model), "--epochs", "0.5", "--quiet"]) == 0
    assert (run / "exits" / "mean" / "models" / sha[:12] / "exits.safetensors").is_file()
    assert not (run / "exits" / "mean" / "exits.safetensors").exists()  # the supernet's heads: not trained
    capsys.readouterr()
    assert main([*ee, "--speedup", "1000"]) == 2  # no policy that fast: says what the budget was made of
    err = capsys.readouterr().err
    assert "no exit policy of this sub-network meets" in err and "as one graph" in err and "/ 1000" in err
    assert not (out / "report.json").exists() and not (out / "runner").exists()
    assert main([*ee, "--budget-ms", "50", "--n-stock", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model_weights"] == sha and report["max_loss"] is None
    budget = report["budget"]
    assert budget == {"ms": 50, "stat": "p50"}
    table = __import__("pandas").read_csv(out / "policies.csv")
    row = table[(table.criterion == report["policy"]["criterion"])
                & np.isclose(table.threshold, report["policy"]["threshold"])].iloc[0]
    assert row.est_p50_ms_dev <= budget["ms"]  # meets it on dev, and nothing more accurate does
    assert not ((table.est_p50_ms_dev <= budget["ms"]) & (table.accuracy_dev > row.accuracy_dev)).any()
    stock = report["beside_stock"]
    assert {"stock-fp32", "stock-int8", "ours-static", "ours"} <= set(stock["deployments"])
    assert stock["test_inputs"] == 6 and stock["speedup_p50_vs_fastest_stock_fp32"] > 0
    diff = stock["ours_minus_teacher_test"]
    assert diff["ci95_low"] <= diff["diff_points"] <= diff["ci95_high"]
    assert stock["deployments"]["ours"]["score_test"] == pytest.approx(report["early_exit"]["accuracy_test"])
    assert not list(out.glob(".*.tmp"))  # policies.csv and report.json were written together
    # An impossible budget in the same folder: the finished run's results go too, rather than stay
    # beside a runner that is gone.
    assert main([*ee, "--speedup", "1000"]) == 2
    assert not [f for f in ("report.json", "policies.csv", "static.onnx", "runner") if (out / f).exists()]
    # Wrong ways to ask: one line, exit 2, nothing written.
    bad = tmp_path / "bad"
    wrong = {"--subnet": [*ee[:-8], "--subnet", str(tmp_path / "x.json"), "--out", str(bad)],
             "--device": [*ee[:-8], "--speedup", "2", "--device", "cpu", "--out", str(bad)],
             "no such folder": [*ee[:4], str(tmp_path / "none"), "--out", str(bad)],
             "neither": [*ee[:4], str(tmp_path), "--out", str(bad)]}
    for words, argv in wrong.items():
        capsys.readouterr()
        assert main(argv) == 2, words
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not bad.exists()
    other = save_model(tiny_model(layers=2, labels=3), tmp_path / "other")  # not made from this run
    assert main(["exits", "--run", str(run), "--model", str(other), "--quiet"]) == 2
    assert "not made from this run's supernet" in capsys.readouterr().err


def test_a_model_to_put_exits_on_is_an_export_or_a_model_folder(tmp_path) -> None:
    from supernet.checkpoint import save_model
    from supernet.errors import ConfigError
    from supernet.exits import load_standalone

    small = extract(tiny_model(layers=4), SUBNET)
    save_model(small, tmp_path / "export" / "pytorch")  # `hwnas export` writes the model there
    save_model(small, tmp_path / "ft")  # a fine-tuning's folder
    for folder in (tmp_path / "export", tmp_path / "ft", tmp_path / "export" / "pytorch"):
        assert weights_sha1(load_standalone(folder)) == weights_sha1(small)
    with pytest.raises(ConfigError, match="no such folder"):
        load_standalone(tmp_path / "none")
    with pytest.raises(ConfigError, match="neither an `hwnas export` folder"):
        load_standalone(tmp_path)

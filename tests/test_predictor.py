"""Latency features and predictors on synthetic measurements with a known latency law."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_shape
from latency.features import FEATURE_VERSION, config_rows, drop_layers, feature_frame, features
from latency.predictor import (
    PREDICTORS,
    AnalyticPredictor,
    BasePredictor,
    LearnedPredictor,
    Predictor,
    PredictorError,
    ResidualPredictor,
    _holdout_split,
    evaluate,
    fit_device,
    load_predictor,
    make_predictor,
    noise_floor,
    per_configuration,
    plot_predicted_vs_measured,
    save_predictor,
)
from latency.trees import TreeEnsemble
from supernet.cost import subnet_flops, subnet_params, tokens_per_layer
from supernet.model import BertShape
from supernet.space import SubnetConfig

MINILM = BertShape(vocab_size=30522, hidden_size=384, head_dim=32, heads=(12,) * 6, ffn=(1536,) * 6,
                   retention=(1.0,) * 6)
INPUT_SHAPES = ((1, 32), (1, 128), (8, 64), (16, 128))

LatencyLaw = Callable[[BertShape, SubnetConfig, int, int], float]


# ---- synthetic devices: known, nonlinear latency laws ------------------------------------
def cpu_like(shape: BertShape, cfg: SubnetConfig, batch: int, length: int) -> float:
    """Per-layer overhead + FLOPs / throughput, where narrow matrices run less efficiently
    (efficiency w / (w + w0): not linear in the architecture), + a per-drop overhead."""
    H, d = shape.hidden_size, shape.head_dim
    ms = 0.2
    for i, (t_in, t_out) in enumerate(tokens_per_layer(cfg, length)):
        if cfg.keep[i]:
            w, n = cfg.heads[i] * d, cfg.ffn[i]
            ms += 0.05
            ms += batch * 8 * t_in * H * w / (30e9 * w / (w + 2 * d)) * 1e3
            ms += batch * 4 * t_out * H * n / (30e9 * n / (n + 2 * H / 3)) * 1e3
            ms += batch * 4 * t_in * t_in * w / 8e9 * 1e3
    return ms + len(drop_layers(cfg)) * (0.03 + 2e-6 * batch * length)


def gpu_like(shape: BertShape, cfg: SubnetConfig, batch: int, length: int) -> float:
    """A layer costs max(launch floor, compute): flat for small work, then linear."""
    H, d = shape.hidden_size, shape.head_dim
    ms = 0.5
    for i, (t_in, t_out) in enumerate(tokens_per_layer(cfg, length)):
        if cfg.keep[i]:
            w, n = cfg.heads[i] * d, cfg.ffn[i]
            work = batch * (8 * t_in * H * w + 4 * t_out * H * n + 4 * t_in * t_in * w)
            ms += max(0.12, work / 2e12 * 1e3)
    return ms + 0.05 * len(drop_layers(cfg))


def cache_like(shape: BertShape, cfg: SubnetConfig, batch: int, length: int) -> float:
    """``cpu_like`` where a layer's FFN of 1152 neurons or more (weights outgrowing a cache)
    runs at a third of the speed: more work never costs less, but the cost is not a line in
    the work."""
    H = shape.hidden_size
    ms = cpu_like(shape, cfg, batch, length)
    for i, (_, t_out) in enumerate(tokens_per_layer(cfg, length)):
        if cfg.keep[i] and cfg.ffn[i] >= 1152:
            ms += 2 * batch * 4 * t_out * H * cfg.ffn[i] / 30e9 * 1e3
    return ms


def measurements(shape: BertShape, n_configs: int, seed: int, law: LatencyLaw = cpu_like,
                 input_shapes: tuple[tuple[int, int], ...] = INPUT_SHAPES, device: str = "cpu",
                 noise: float = 0.03) -> pd.DataFrame:
    """Rows like the measurement module writes: each sampled configuration at two input
    shapes, ~3% multiplicative noise."""
    rng = np.random.default_rng(seed)
    space = shape.search_space()
    rows = []
    for _ in range(n_configs):
        cfg = space.sample(rng)
        for j in rng.choice(len(input_shapes), size=2, replace=False):
            b, t = input_shapes[j]
            lat = law(shape, cfg, b, t) * float(np.exp(rng.normal(0.0, noise)))
            rows.append(dict(device=device, arch_key=cfg.key(), arch_json=cfg.to_json(), batch=b,
                             length=t, lat_median_ms=lat, lat_p90_ms=lat * 1.05,
                             lat_iqr_ms=lat * 0.04, kind="sample", error="", arch_heads_0=cfg.heads[0]))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def minilm_rows() -> pd.DataFrame:
    return measurements(MINILM, 200, seed=0)


@pytest.fixture(scope="module")
def minilm_fit(minilm_rows: pd.DataFrame):
    return fit_device(MINILM, minilm_rows, "cpu", seed=0)


@pytest.fixture(scope="module")
def fitted(minilm_rows: pd.DataFrame) -> dict[str, BasePredictor]:
    return {name: make_predictor(name, MINILM, seed=1).fit(minilm_rows) for name in PREDICTORS}


# ---- features ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [tiny_shape(), MINILM], ids=["tiny", "minilm"])
def test_features_follow_the_cost_model(shape: BertShape) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        cfg = shape.search_space().sample(rng)
        f = features(shape, cfg, batch=4, length=40)
        assert f["flops"] == 4 * subnet_flops(shape, cfg, 40)
        assert f["flops_linear"] + f["flops_attn"] == f["flops"]
        assert f["params"] == subnet_params(shape, cfg)
        tokens = tokens_per_layer(cfg, 40)
        assert [(f[f"tok_in_{i}"], f[f"tok_out_{i}"]) for i in range(shape.num_layers)] == tokens
        assert f["token_layers"] == 4 * sum(t for t, _ in tokens)
        assert f["kept_layers"] == len(cfg.kept_layers) == sum(f[f"keep_{i}"] for i in range(shape.num_layers))
        assert f["total_heads"] == sum(f[f"heads_{i}"] for i in range(shape.num_layers))


def test_features_by_hand() -> None:
    # Layer 1 skipped; drops at layers 0 (1.0 -> 0.5) and 2 (0.5 -> 0.25); 16 tokens in.
    cfg = SubnetConfig(heads=(4, 0, 2), ffn=(64, 0, 32), keep=(True, False, True), retention=(0.5, 0.5, 0.25))
    f = features(tiny_shape(), cfg, batch=2, length=16)
    assert [f[f"tok_in_{i}"] for i in range(3)] == [16, 0, 8]
    assert [f[f"tok_out_{i}"] for i in range(3)] == [8, 0, 4]
    assert f["drop_layers"] == 2 and f["kept_layers"] == 2 and f["kept_layers_x_batch"] == 4
    assert f["total_heads"] == 6 and f["total_ffn"] == 96
    assert f["act_mem"] == 2 * (16 + 8) * 32
    assert f["flops_attn"] == 2 * (2 * 2 * 16 * 16 * 32 + 2 * 2 * 8 * 8 * 16)  # head_dim 8
    # Retention that does not go down drops nothing.
    assert drop_layers(SubnetConfig((4,) * 3, (64,) * 3, (True,) * 3, (0.5, 0.5, 0.5))) == [0]


def test_feature_frame_checks_columns_and_json(minilm_rows: pd.DataFrame) -> None:
    frame = feature_frame(MINILM, minilm_rows.head(5))
    assert list(frame.index) == list(minilm_rows.head(5).index) and "heads_5" in frame
    with pytest.raises(PredictorError, match=r"missing \['batch', 'length'\]"):
        feature_frame(MINILM, minilm_rows[["arch_json"]])
    with pytest.raises(PredictorError, match="arch_json"):
        feature_frame(MINILM, minilm_rows.head(1).assign(arch_json="{not json"))
    with pytest.raises(PredictorError, match="6 layers"):
        feature_frame(tiny_shape(), minilm_rows.head(1))
    assert feature_frame(MINILM, minilm_rows.head(0)).shape[0] == 0


# ---- fitting on synthetic devices --------------------------------------------------------
def test_minilm_predictors_reach_ten_percent(minilm_fit, minilm_rows: pd.DataFrame) -> None:
    pred, report = minilm_fit
    assert set(report["metrics"]) == set(PREDICTORS)
    chosen = report["metrics"][report["chosen"]]
    # Chosen on the training configurations (3-fold cross-validation), not on the held-out ones it is reported on.
    assert report["selection"]["on"] == "cv" and set(report["selection"]["cv_mape"]) == set(PREDICTORS)
    assert report["chosen"] == min(PREDICTORS, key=lambda n: report["selection"]["cv_mape"][n])
    assert chosen["within_10pct"] >= 0.90
    assert report["coverage_upper"] >= 0.85
    # A configuration sampled twice at the same input shape is one measurement (its median).
    assert report["n_train"] + report["n_holdout"] == len(minilm_rows.drop_duplicates(["arch_key", "batch", "length"]))
    assert report["n_configs"] == minilm_rows["arch_key"].nunique()
    assert report["feature_version"] == FEATURE_VERSION and report["device"] == "cpu"
    assert pred.device == "cpu" and pred.name == report["chosen"]

    # The refitted winner on configurations it never saw (a fresh draw of the same device).
    fresh = measurements(MINILM, 60, seed=99)
    out = pred.predict(fresh)
    assert evaluate(fresh["lat_median_ms"], out["pred_ms"])["within_10pct"] >= 0.90
    assert (fresh["lat_median_ms"] <= out["upper_ms"]).mean() >= 0.85


def test_tiny_shape_fits() -> None:
    rows = measurements(tiny_shape(), 80, seed=1, input_shapes=((1, 8), (4, 16), (8, 32)))
    _, report = fit_device(tiny_shape(), rows, "cpu", seed=0)
    assert report["metrics"][report["chosen"]]["within_10pct"] >= 0.90
    assert report["coverage_upper"] >= 0.85


def test_too_few_configurations_for_folds_choose_on_the_held_out_ones() -> None:
    rows = measurements(tiny_shape(), 12, seed=1, input_shapes=((1, 8), (4, 16), (8, 32)))
    _, report = fit_device(tiny_shape(), rows, "cpu", seed=0)
    assert report["selection"] == {"on": "holdout", "cv_mape": None}
    assert report["chosen"] == min(PREDICTORS, key=lambda n: report["metrics"][n]["mape"])


def test_trees_win_where_latency_is_not_linear() -> None:
    # A GPU-like floor makes small networks cost the same: no non-negative line fits that.
    rows = measurements(MINILM, 150, seed=2, law=gpu_like,
                        input_shapes=((1, 32), (1, 128), (8, 128), (32, 128), (64, 256)))
    _, report = fit_device(MINILM, rows, "cpu", seed=0)
    assert report["chosen"] == "gbt"
    assert report["metrics"]["gbt"]["within_10pct"] >= 0.90
    assert report["metrics"]["gbt"]["mape"] < report["metrics"]["analytic"]["mape"]


def test_residual_trees_correct_the_analytic_model_where_cost_steps() -> None:
    # A step in the cost per FLOP (weights outgrowing a cache) is monotone in the work, so the
    # analytic model can only average over it; the correction trees learn part of the step
    # and keep monotonicity; the trees alone lack the analytic terms' structure.
    rows = measurements(MINILM, 200, seed=4, law=cache_like)
    _, report = fit_device(MINILM, rows, "cpu", seed=0)
    m = report["metrics"]
    assert m["analytic+gbt"]["mape"] < 0.8 * m["analytic"]["mape"]
    assert m["analytic+gbt"]["mape"] < m["gbt"]["mape"] and report["chosen"] == "analytic+gbt"
    pred = make_predictor("analytic+gbt", MINILM, seed=0).fit(rows)
    assert isinstance(pred, ResidualPredictor) and pred.correction is not None
    # Its prediction is the analytic part times the trees' correction.
    frame = feature_frame(MINILM, rows.head(5)).to_numpy(dtype=float)
    base = np.exp(AnalyticPredictor._predict_log(pred, frame)[0])
    np.testing.assert_allclose(pred.predict(rows.head(5))["pred_ms"], base * np.exp(pred.correction.predict(frame)))


def test_holdout_never_splits_a_configuration(minilm_rows: pd.DataFrame) -> None:
    groups = minilm_rows["arch_key"].to_numpy()
    held = _holdout_split(groups, 0.2, seed=5)
    assert not set(groups[held]) & set(groups[~held])
    assert abs(len(set(groups[held])) - 0.2 * len(set(groups))) <= 1
    assert (held == _holdout_split(groups, 0.2, seed=5)).all()  # seeded


def test_prediction_frame_and_monotonicity(fitted: dict[str, BasePredictor]) -> None:
    space = MINILM.search_space()
    rng = np.random.default_rng(7)
    for name, pred in fitted.items():
        assert isinstance(pred, Predictor)
        rows = config_rows([space.sample(rng) for _ in range(10)], batch=8, length=64)
        rows.index = range(100, 110)
        out = pred.predict(rows)
        assert list(out.columns) == ["pred_ms", "std_ms", "upper_ms", "name"]
        assert list(out.index) == list(rows.index) and (out["name"] == name).all()
        assert (out["pred_ms"] > 0).all() and (out["std_ms"] > 0).all()
        assert (out["upper_ms"] > out["pred_ms"]).all()
        # More heads in one layer never predicts faster (the search would exploit that).
        small = SubnetConfig((3,) * 6, (768,) * 6, (True,) * 6, (1.0,) * 6)
        big = SubnetConfig((12, 3, 3, 3, 3, 3), (768,) * 6, (True,) * 6, (1.0,) * 6)
        p = pred.predict(config_rows([small, big], batch=8, length=64))["pred_ms"].to_numpy()
        assert p[1] >= p[0], name


def test_failed_rows_are_ignored(minilm_rows: pd.DataFrame) -> None:
    rows = minilm_rows.head(60).copy()
    failed = rows.head(5).assign(error="onnxruntime: out of memory", lat_median_ms=math.nan)
    noise = rows.head(1).assign(kind="noise")
    pred, report = fit_device(MINILM, pd.concat([rows, failed, noise]), "cpu", seed=0)
    assert report["n_train"] + report["n_holdout"] == len(rows)
    assert report["noise_floor"]["n_noise"] == 1


def test_too_few_rows_and_unknown_device(minilm_rows: pd.DataFrame) -> None:
    with pytest.raises(PredictorError, match="at least 20"):
        fit_device(MINILM, minilm_rows.head(10), "cpu")
    with pytest.raises(PredictorError, match=r"'phone'.*\['cpu'\]"):
        fit_device(MINILM, minilm_rows, "phone")
    with pytest.raises(PredictorError, match="kind"):
        fit_device(MINILM, minilm_rows.drop(columns="kind"), "cpu")


def test_unknown_predictor_lists_known() -> None:
    with pytest.raises(PredictorError, match=r"'mlp'.*\['analytic', 'analytic\+gbt', 'gbt'\]"):
        make_predictor("mlp", MINILM)


# ---- evaluation and noise ----------------------------------------------------------------
def test_evaluate_by_hand() -> None:
    m = evaluate([1.0, 2.0, 4.0, 10.0], [1.1, 2.0, 3.0, 10.0])
    assert m["rmse_ms"] == pytest.approx(math.sqrt((0.01 + 0 + 1 + 0) / 4))
    assert m["mape"] == pytest.approx((0.1 + 0 + 0.25 + 0) / 4)
    assert m["within_10pct"] == 0.75  # 1.1 vs 1.0 is exactly 10%: inside
    assert m["kendall_tau"] == pytest.approx(1.0) and m["n"] == 4
    assert evaluate([1.0, 2.0], [2.0, 1.0])["kendall_tau"] == pytest.approx(-1.0)
    with pytest.raises(PredictorError, match="3 values"):
        evaluate([1.0, 2.0, 3.0], [1.0])


def test_noise_floor_by_hand() -> None:
    values = [10.0, 10.0, 12.0, 9.0, 10.5]  # median 10: relative deviations 0, 0, .2, -.1, .05
    rows = pd.DataFrame({
        "kind": ["noise"] * 5 + ["noise", "sample"],
        "arch_key": ["a"] * 7, "batch": 1, "length": 32,
        "lat_median_ms": [*values, 50.0, 20.0],
        "lat_iqr_ms": [1.0, 1.0, 1.2, 0.9, 1.05, 5.0, 1.0],
        "error": [""] * 5 + ["timeout", ""],  # the failed noise row is ignored
    })
    nf = noise_floor(rows)
    assert nf["n_noise"] == 5
    assert nf["median_abs_rel"] == pytest.approx(0.05)
    assert nf["within_10pct"] == pytest.approx(0.8)
    assert nf["cv"] == pytest.approx(np.std(values, ddof=1) / np.mean(values))
    assert nf["iqr_rel_median"] == pytest.approx(0.1)  # 1/10, 1.2/12, ... and 1/20 = .05
    empty = noise_floor(rows[rows["kind"] == "sample"])
    assert empty["n_noise"] == 0 and math.isnan(empty["median_abs_rel"]) and math.isnan(empty["cv"])
    assert nf["n_reference"] == 0 and math.isnan(nf["reference_within_10pct"])


def test_noise_floor_across_the_measurement_from_the_reference_rows() -> None:
    """The full model's timings every 20 configurations (``reference`` rows) give the same
    figures under ``reference_*``: how far one timing moves over the whole measurement."""
    refs = [10.0, 11.5, 9.0, 10.0, 10.4]  # median 10: deviations 0, .15, -.1, 0, .04
    rows = pd.DataFrame({
        "kind": ["noise", "noise"] + ["reference"] * 5 + ["sample"],
        "arch_key": ["full"] * 7 + ["a"], "batch": 1, "length": 32,
        "lat_median_ms": [10.0, 10.2, *refs, 3.0], "error": "",
    })
    nf = noise_floor(rows)
    assert nf["n_noise"] == 2 and nf["within_10pct"] == 1.0  # back to back: close
    assert nf["n_reference"] == 5
    assert nf["reference_median_abs_rel"] == pytest.approx(0.04)
    assert nf["reference_within_10pct"] == pytest.approx(0.8)  # -0.1 is inside, 0.15 is not
    assert nf["reference_cv"] == pytest.approx(np.std(refs, ddof=1) / np.mean(refs))
    one = noise_floor(rows.iloc[[0, 1, 2, 7]])  # one reference: no spread to report
    assert one["n_reference"] == 0 and math.isnan(one["reference_median_abs_rel"])


def test_configurations_timed_in_several_passes_are_fitted_on_their_median() -> None:
    """`hwnas measure --passes`: a configuration's rows (same workload) become one, at the
    median of its timings; the fit reports the passes and how far they disagree."""
    rows = measurements(MINILM, 40, seed=3)
    rows = rows[rows["batch"] == rows["batch"].iloc[0]].drop_duplicates(["arch_key", "batch", "length"])
    rows = rows.reset_index(drop=True)
    again = rows.assign(lat_median_ms=rows["lat_median_ms"] * 1.2)  # a second pass, 20% slower
    third = rows.assign(lat_median_ms=rows["lat_median_ms"] * 0.9)
    merged, passes = per_configuration(pd.concat([rows, again, third], ignore_index=True))
    assert passes == 3 and len(merged) == len(rows)
    assert np.allclose(merged["lat_median_ms"].to_numpy(), rows["lat_median_ms"].to_numpy())  # the median: pass 1
    one, one_pass = per_configuration(rows)
    assert one_pass == 1 and one is rows  # nothing to merge
    _, report = fit_device(MINILM, pd.concat([rows, again], ignore_index=True), "cpu", seed=0)
    assert report["passes"] == 2 and report["n_train"] + report["n_holdout"] == len(rows)
    # Two timings 20% apart: each is 1.2/1.1 - 1 = 9.1% from their median, inside +-10%.
    nf = report["noise_floor"]
    assert nf["n_retest"] == 2 * len(rows) and nf["retest_within_10pct"] == 1.0
    assert nf["retest_median_abs_rel"] == pytest.approx(0.2 / 2.2)
    single = fit_device(MINILM, rows, "cpu", seed=0)[1]
    assert single["passes"] == 1 and single["noise_floor"]["n_retest"] == 0


# ---- persistence -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PREDICTORS))
def test_save_load_round_trip(name: str, fitted: dict[str, BasePredictor], minilm_rows: pd.DataFrame,
                              tmp_path: Path) -> None:
    pred = fitted[name]
    path = save_predictor(pred, tmp_path / "cpu.json", device="cpu", shape=MINILM, report={"x": math.nan})
    meta = json.loads(path.read_text())  # strict JSON: NaN became null
    assert meta["device"] == "cpu" and meta["report"] == {"x": None}
    assert (tmp_path / "cpu.trees.safetensors").exists() == pred.STORES_ARRAYS == (name != "analytic")
    loaded = load_predictor(path, device="cpu")
    assert loaded.device == "cpu" and loaded.name == name
    pd.testing.assert_frame_equal(loaded.predict(minilm_rows), pred.predict(minilm_rows), check_exact=True)
    with pytest.raises(PredictorError, match="'cpu'.*'gpu'"):
        load_predictor(path, device="gpu")


def test_corrupt_or_missing_files_raise(fitted: dict[str, BasePredictor], tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="no saved latency predictor"):
        load_predictor(tmp_path / "missing.json")
    path = save_predictor(fitted["gbt"], tmp_path / "p.json", device="cpu", shape=MINILM, report={})
    model = tmp_path / "p.trees.safetensors"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(PredictorError, match="sha256"):
        load_predictor(path)
    model.unlink()
    with pytest.raises(PredictorError, match="missing or unreadable"):
        load_predictor(path)
    path.write_text('{"format": "hwnas-latency-pred')
    with pytest.raises(PredictorError, match="not a readable"):
        load_predictor(path)
    path.write_text('{"something": "else"}')
    with pytest.raises(PredictorError, match="not a latency predictor"):
        load_predictor(path)


def _random_rows(n_configs: int, seed: int) -> pd.DataFrame:
    """Rows for configurations and input shapes the predictor never saw."""
    return measurements(MINILM, n_configs, seed=seed, input_shapes=((1, 16), (2, 96), (4, 128), (32, 64)))


def test_tree_arrays_predict_like_sklearn() -> None:
    """The numpy walk over the stored arrays gives scikit-learn's predictions, bit for bit,
    NaN routing included, after a round trip through the tensor file."""
    from safetensors.numpy import load, save
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = feature_frame(MINILM, measurements(MINILM, 100, seed=3)).to_numpy(dtype=float)
    y = np.log(X[:, list(feature_frame(MINILM, _random_rows(1, 0)).columns).index("flops")] + 1.0)
    model = HistGradientBoostingRegressor(**LearnedPredictor.PARAMS, monotonic_cst=[1] * X.shape[1],
                                          random_state=0).fit(X, y + rng.normal(0, 0.05, len(y)))
    arrays = load(save(TreeEnsemble.from_sklearn(model).to_arrays("m.")))
    ens = TreeEnsemble.from_arrays(arrays, "m.", X.shape[1])
    rows = feature_frame(MINILM, _random_rows(200, seed=11)).to_numpy(dtype=float)
    noisy = rows * rng.uniform(0.5, 1.5, rows.shape)  # between and beyond the thresholds
    noisy[rng.random(noisy.shape) < 0.05] = np.nan
    for Z in (rows, noisy, X):
        np.testing.assert_array_equal(ens.predict(Z), model.predict(Z))
    assert ens.predict(rows[:0]).shape == (0,)


def test_loaded_gbt_predictor_equals_the_fitted_sklearn_models(
        minilm_rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pred_ms, std_ms and upper_ms of a saved and loaded gbt predictor, against the
    scikit-learn models it was fitted as (to 1e-12 relative; in practice equal)."""
    models: list[object] = []
    convert = TreeEnsemble.from_sklearn

    def spy(model: object) -> TreeEnsemble:
        models.append(model)
        return convert(model)

    monkeypatch.setattr(TreeEnsemble, "from_sklearn", staticmethod(spy))
    pred = make_predictor("gbt", MINILM, seed=2).fit(minilm_rows)
    assert len(models) == LearnedPredictor.MEMBERS
    loaded = load_predictor(save_predictor(pred, tmp_path / "g.json", device="cpu", shape=MINILM, report={}))

    rows = _random_rows(150, seed=12)
    X = feature_frame(MINILM, rows).to_numpy(dtype=float)
    logs = np.stack([m.predict(X) for m in models])  # type: ignore[attr-defined]
    expected = np.exp(logs.mean(axis=0))
    assert loaded.margin_log == pred.margin_log >= 0 and loaded.sigma_log == pred.sigma_log
    out = loaded.predict(rows)
    np.testing.assert_allclose(out["pred_ms"], expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["std_ms"], expected * np.sqrt(logs.std(axis=0) ** 2 + pred.sigma_log**2),
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["upper_ms"], expected * math.exp(pred.margin_log), rtol=1e-12, atol=0)
    assert (out["upper_ms"] >= out["pred_ms"]).all()


def _tamper_json(path: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _tamper_trees(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Change the tree file and, as a careful tamperer would, the sha256 the JSON records."""
    import hashlib

    from safetensors.numpy import load, save

    model = path.with_name(path.stem + ".trees.safetensors")
    arrays = {k: v.copy() for k, v in load(model.read_bytes()).items()}
    change(arrays)
    data = save(arrays)
    model.write_bytes(data)
    _tamper_json(path, lambda m: m.update(model_sha256=hashlib.sha256(data).hexdigest()))


def _set_child(arrays: dict[str, np.ndarray], value: int) -> None:
    split = np.flatnonzero(arrays["member0.feature"] >= 0)[0]
    arrays["member0.left"][split] = value


TAMPERED = {
    # The case: a negative margin would put upper_ms below pred_ms (a 2.65 ms pick
    # accepted under a 1 ms budget).
    "negative margin": ("analytic", lambda p: _tamper_json(p, lambda m: m["state"].update(margin_log=-1.0)),
                        r"margin_log is -1\.0; it must be a finite number >= 0"),
    "null margin": ("gbt", lambda p: _tamper_json(p, lambda m: m["state"].update(margin_log=None)),
                    "margin_log is None"),
    "NaN coefficient": ("analytic",
                        lambda p: _tamper_json(p, lambda m: m["state"]["coef"].update(flops_linear_fp32=math.nan)),
                        "coefficient 'flops_linear_fp32' is nan"),
    "negative coefficient": ("analytic",
                             lambda p: _tamper_json(p, lambda m: m["state"]["coef"].update(const=-5.0)),
                             "coefficient 'const' is -5.0"),
    "unknown feature": ("gbt", lambda p: _tamper_json(p, lambda m: m["state"]["feature_names"].__setitem__(0, "rm -rf")),
                        r"unknown feature names \['rm -rf'\]"),
    "child out of range": ("gbt", lambda p: _tamper_trees(p, lambda a: _set_child(a, 10**6)),
                           r"tree ensemble 'member0': node \d+ of tree 0 has left child 1000000; a child must come after"),
    "child pointing back (a cycle)": ("gbt", lambda p: _tamper_trees(p, lambda a: _set_child(a, 0)),
                                      r"has left child 0; a child must come after its parent"),
    "feature index out of range": ("gbt", lambda p: _tamper_trees(
        p, lambda a: a["member1.feature"].__setitem__(0, 999)), r"feature index is outside \[0, \d+\)"),
    "arrays of different lengths": ("gbt", lambda p: _tamper_trees(
        p, lambda a: a.update({"member0.value": a["member0.value"][:-1]})), "value has"),
    "NaN leaf value": ("gbt", lambda p: _tamper_trees(
        p, lambda a: a["member2.value"].__setitem__(-1, np.nan)), "leaf value is not a finite number"),
    "missing member": ("gbt", lambda p: _tamper_json(p, lambda m: m["state"].update(members=9)),
                       "'member5.baseline' is missing"),
    "correction trees: NaN leaf": ("analytic+gbt", lambda p: _tamper_trees(
        p, lambda a: a["correction.value"].__setitem__(-1, np.nan)), "leaf value is not a finite number"),
    "correction trees: missing": ("analytic+gbt", lambda p: _tamper_trees(
        p, lambda a: a.pop("correction.threshold")), "'correction.threshold' is missing"),
    "correction: negative coefficient": ("analytic+gbt", lambda p: _tamper_json(
        p, lambda m: m["state"]["coef"].update(flops_attn=-1.0)), "coefficient 'flops_attn' is -1.0"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_files_are_refused(case: str, fitted: dict[str, BasePredictor], tmp_path: Path) -> None:
    name, tamper, message = TAMPERED[case]
    path = save_predictor(fitted[name], tmp_path / "p.json", device="cpu", shape=MINILM, report={})
    load_predictor(path)  # untouched, it loads
    tamper(path)
    with pytest.raises(PredictorError, match=message) as err:
        load_predictor(path)
    assert "refit the predictor" in str(err.value)


def test_format_1_pickle_predictors_are_refused(fitted: dict[str, BasePredictor], tmp_path: Path) -> None:
    path = save_predictor(fitted["gbt"], tmp_path / "p.json", device="cpu", shape=MINILM, report={})
    _tamper_json(path, lambda m: m.update(format_version=1, model_file="p.joblib"))
    (tmp_path / "p.joblib").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(PredictorError, match=r"format 1 .*pickle.*refit the predictor"):
        load_predictor(path)
    # Nor is any file other than the one this version writes next to the JSON.
    path = save_predictor(fitted["gbt"], tmp_path / "q.json", device="cpu", shape=MINILM, report={})
    _tamper_json(path, lambda m: m.update(model_file="p.joblib"))
    with pytest.raises(PredictorError, match=r"names the tree file 'p.joblib'.*refit the predictor"):
        load_predictor(path)


def test_plot_is_written(tmp_path: Path) -> None:
    out = plot_predicted_vs_measured([1.0, 2.0, 5.0], [1.1, 1.9, 5.5], tmp_path / "fig.png", "cpu")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left


def test_an_int8_configuration_and_its_fp32_twin_share_a_split_group() -> None:
    from latency.predictor import _groups

    arch = {"heads": [2, 2], "ffn": [32, 32], "keep": [True, True], "retention": [1.0, 1.0]}
    rows = pd.DataFrame({"arch_key": ["a", "a8", "b"],
                         "arch_json": [json.dumps(arch), json.dumps({**arch, "precision": "int8"}),
                                       json.dumps({**arch, "heads": [2, 1]})]})
    g = _groups(rows)
    assert g[0] == g[1] != g[2]  # held out together, or trained on together

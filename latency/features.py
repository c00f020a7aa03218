"""Architecture + input shape -> a flat feature vector for latency predictors.

One row of features describes one measured (or to-be-predicted) call: a sub-network
``SubnetConfig`` run on ``batch`` examples of ``length`` tokens. Features come in three groups:

* **per layer** ``i``: ``heads_i``, ``ffn_i``, ``keep_i``, ``tok_in_i``, ``tok_out_i`` (tokens
  entering / leaving the layer after token dropping; 0 for a skipped layer);
* **input shape**: ``batch``, ``length``;
* **analytic terms** that latency is close to linear in: FLOPs split into the part linear in
  the tokens (Q/K/V, output projection, FFN, pooler) and the part quadratic in them (attention
  scores and weighted values), parameters, kept layers, token-layers (how many token vectors
  pass through a layer, summed over layers: the memory traffic of the activations), the
  number of token-dropping layers (each runs a TopK and a gather) and total heads / FFN;
* **precision**: ``int8`` (1 for a sub-network run as a dynamically quantized graph), the
  linear FLOPs split by the precision they run at (``flops_linear_fp32``,
  ``flops_linear_int8``: integer matrix products cost less per FLOP) and the token-layers
  whose activations are quantized per call (``token_layers_int8``).

Bump ``FEATURE_VERSION`` whenever a feature changes meaning: saved predictors record the
version they were fitted with and refuse to load under another.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pandas as pd

from supernet.cost import subnet_flops, subnet_params, tokens_per_layer
from supernet.errors import ConfigError, HwnasError
from supernet.model import BertShape
from supernet.space import SubnetConfig

FEATURE_VERSION = 2  # 2: the precision features

# The columns of a measurement frame that features are built from.
INPUT_COLUMNS = ("arch_json", "batch", "length")


class PredictorError(HwnasError):
    """Bad input to a latency predictor: missing columns, too few rows, unknown names,
    a missing / corrupt / mismatched saved predictor."""


def drop_layers(cfg: SubnetConfig) -> list[int]:
    """Layers that drop tokens (and so run a TopK and a gather): ``SubnetConfig.drops``."""
    return list(cfg.drops)


def _layer_features(cfg: SubnetConfig, length: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, (t_in, t_out) in enumerate(tokens_per_layer(cfg, length)):
        kept = cfg.keep[i]
        out[f"heads_{i}"] = float(cfg.heads[i] if kept else 0)
        out[f"ffn_{i}"] = float(cfg.ffn[i] if kept else 0)
        out[f"keep_{i}"] = float(kept)
        out[f"tok_in_{i}"] = float(t_in)
        out[f"tok_out_{i}"] = float(t_out)
    return out


def _flops_split(shape: BertShape, cfg: SubnetConfig, length: int) -> tuple[int, int]:
    """(linear, quadratic) FLOPs of one example; they add up to ``subnet_flops``.

    The quadratic part is attention's scores and weighted values (t_in^2 per head); it is
    kept apart because it grows with the square of the length and runs as batched small
    matrix products, at a different speed from the large linear layers.
    """
    d = shape.head_dim
    quadratic = sum(
        2 * 2 * t_in * t_in * cfg.heads[i] * d
        for i, (t_in, _) in enumerate(tokens_per_layer(cfg, length))
        if cfg.keep[i]
    )
    return subnet_flops(shape, cfg, length) - quadratic, quadratic


def features(shape: BertShape, cfg: SubnetConfig, batch: int, length: int) -> dict[str, float]:
    """The feature vector of ``cfg`` run on ``batch`` examples of ``length`` tokens."""
    if cfg.num_layers != shape.num_layers:
        raise ConfigError(f"configuration has {cfg.num_layers} layers, the model has {shape.num_layers}")
    linear, quadratic = _flops_split(shape, cfg, length)
    kept = cfg.kept_layers
    token_layers = sum(t_in for t_in, _ in tokens_per_layer(cfg, length))  # skipped layers add 0
    out = _layer_features(cfg, length)
    out.update(
        batch=float(batch),
        length=float(length),
        flops=float(batch * (linear + quadratic)),
        flops_linear=float(batch * linear),
        flops_attn=float(batch * quadratic),
        params=float(subnet_params(shape, cfg)),
        kept_layers=float(len(kept)),
        # Per-layer fixed costs (kernel launches, layer norms) that grow with the batch.
        kept_layers_x_batch=float(len(kept) * batch),
        token_layers=float(batch * token_layers),
        act_mem=float(batch * token_layers * shape.hidden_size),
        drop_layers=float(len(drop_layers(cfg))),
        total_heads=float(sum(cfg.heads[i] for i in kept)),
        total_ffn=float(sum(cfg.ffn[i] for i in kept)),
        int8=float(cfg.int8),
        flops_linear_fp32=float(batch * linear) * (not cfg.int8),
        flops_linear_int8=float(batch * linear) * cfg.int8,
        token_layers_int8=float(batch * token_layers) * cfg.int8,
    )
    return out


def feature_names(shape: BertShape) -> list[str]:
    """The names ``features`` produces for ``shape``, in order (what a saved predictor's
    feature names are checked against)."""
    return list(features(shape, SubnetConfig.full(shape.heads, shape.ffn), 1, 1))


def require_columns(rows: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise PredictorError(
            f"{what} needs the columns {list(columns)}; missing {missing} "
            f"(present: {sorted(map(str, rows.columns))})"
        )


def _parse_config(text: object, shape: BertShape) -> SubnetConfig:
    try:
        cfg = SubnetConfig.from_dict(json.loads(str(text)))
    except (json.JSONDecodeError, ConfigError) as e:
        raise PredictorError(
            f"arch_json must be a sub-network configuration as JSON (SubnetConfig.to_dict()), "
            f"got {str(text)[:80]!r}: {e}"
        ) from e
    why = misfit(cfg, shape)
    if why:
        raise PredictorError(f"arch_json {why}: were these measurements taken on another model?")
    return cfg


def misfit(cfg: SubnetConfig, shape: BertShape) -> str:
    """Why ``cfg`` cannot be a sub-network of a model of ``shape`` ("" when it can)."""
    if cfg.num_layers != shape.num_layers:
        return f"has {cfg.num_layers} layers but the model has {shape.num_layers}"
    for i in cfg.kept_layers:
        if not 1 <= cfg.heads[i] <= shape.heads[i] or not 1 <= cfg.ffn[i] <= shape.ffn[i]:
            return (f"keeps {cfg.heads[i]} heads and {cfg.ffn[i]} FFN neurons in layer {i}, where the model has "
                    f"1..{shape.heads[i]} and 1..{shape.ffn[i]}")
    if not all(0 < r <= 1 for r in cfg.retention):
        return f"has retention {list(cfg.retention)} outside (0, 1]"
    return ""


def feature_frame(shape: BertShape, rows: pd.DataFrame) -> pd.DataFrame:
    """Features of every row of a measurement frame (columns ``arch_json``, ``batch``,
    ``length``); the result keeps ``rows``' index."""
    require_columns(rows, INPUT_COLUMNS, "a latency feature frame")
    configs: dict[str, SubnetConfig] = {}  # many rows share one configuration: parse it once
    records = []
    for text, batch, length in zip(rows["arch_json"], rows["batch"], rows["length"], strict=True):
        key = str(text)
        if key not in configs:
            configs[key] = _parse_config(key, shape)
        if int(batch) < 1 or int(length) < 1:
            raise PredictorError(f"batch and length must be >= 1, got batch={batch}, length={length}")
        records.append(features(shape, configs[key], int(batch), int(length)))
    if not records:
        # An empty frame still has the right columns, so that callers can select from it.
        return pd.DataFrame(columns=feature_names(shape), index=rows.index, dtype=float)
    return pd.DataFrame.from_records(records, index=rows.index)


def config_rows(configs: Sequence[SubnetConfig], batch: int, length: int) -> pd.DataFrame:
    """A frame ``Predictor.predict`` accepts for configurations not measured yet (search)."""
    return pd.DataFrame(
        {
            "arch_key": [c.key() for c in configs],
            "arch_json": [c.to_json() for c in configs],
            "batch": [int(batch)] * len(configs),
            "length": [int(length)] * len(configs),
        }
    )

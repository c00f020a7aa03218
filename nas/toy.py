"""A tiny analytic search problem: for tests, and for timing searchers without a model.

A 4-layer space (4 heads, FFN 64) whose accuracy grows with width, depth and retention and
whose latency is FLOPs-like (Q/K/V on the tokens entering a layer, scores quadratic in them,
projection and FFN on the tokens kept, a fixed per-layer cost). The largest configuration
takes 4.2 ms, the smallest 0.5 ms.
"""

from __future__ import annotations

import math

from supernet.space import SearchSpace, SubnetConfig

TOY_SPACE = SearchSpace.for_model(4, 4, 64)
TOY_MARGIN = 0.05


def toy_accuracy(cfg: SubnetConfig) -> float:
    s = 0.0
    for i in cfg.kept_layers:
        width = 0.5 * cfg.heads[i] / 4 + 0.5 * cfg.ffn[i] / 64 + 0.3
        s += (1 + 0.15 * i) * width * cfg.retention[i] ** 0.3
    return 0.5 + 0.45 * math.tanh(s / 3)


def toy_latency_ms(cfg: SubnetConfig) -> float:
    lat, alive = 0.2, 1.0
    for i in cfg.kept_layers:
        h, f, t_in, t_out = cfg.heads[i] / 4, cfg.ffn[i] / 64, alive, cfg.retention[i]
        lat += 0.25 * t_in * h + 0.1 * t_in**2 * h + 0.1 * t_out * h + 0.5 * t_out * f + 0.05
        alive = t_out
    return lat


class ToyLatency:
    """The toy latency with a 5% safety margin; counts the configurations it was asked about."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        self.calls += len(configs)
        return [(ms, ms * (1 + TOY_MARGIN)) for ms in map(toy_latency_ms, configs)]

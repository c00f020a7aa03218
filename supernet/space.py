"""Search space and sub-network configuration: typed, frozen, validated values.

A ``SubnetConfig`` holds one choice per encoder layer:

* ``heads[i]``: attention heads kept (the first k after rewiring),
* ``ffn[i]``: FFN neurons kept (the first n after rewiring),
* ``keep[i]``: whether the layer runs at all (depth),
* ``retention[i]``: the fraction of the input's tokens still alive *after* layer i
  (PoWER-BERT / Length-Adaptive Transformer). Non-increasing through the layers; a skipped
  layer computes no attention and so cannot drop tokens. [CLS] is always kept.

and one choice for the whole network, ``precision``: ``"fp32"`` (the default) or ``"int8"``
(the exported ONNX graph's weight matrices quantized to int8, activations quantized per call:
``latency.onnx_export.quantize_int8``). An int8 sub-network's accuracy is scored by running
its quantized graph in ONNX Runtime at the device's batch, never by PyTorch.

A ``SearchSpace`` holds the allowed choices and knows how to sample, mutate and cross over
configurations with a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from supernet.errors import ConfigError


def _tuple(values: Any, name: str, kind: type) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{name} must be a list of {kind.__name__}, got {values!r}")
    out: list[Any] = []
    for v in values:
        if kind is bool:
            if not isinstance(v, (bool, np.bool_)):
                raise ConfigError(f"{name} must hold booleans (true/false), got {v!r}")
            out.append(bool(v))
        # Numbers only: a string such as "4" or "abc", null or a list is a malformed file.
        elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{name} must hold {'integers' if kind is int else 'numbers'}, got {v!r}")
        elif kind is int:
            if not isinstance(v, (int, np.integer)) and not float(v).is_integer():
                raise ConfigError(f"{name} must hold integers, got {v!r}")
            out.append(int(v))
        else:
            out.append(float(v))
    return tuple(out)


PRECISIONS = ("fp32", "int8")  # what a sub-network may run at (``SubnetConfig.precision``)


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: a choice per layer and a precision. Use ``SearchSpace.validate`` to
    check it."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    keep: tuple[bool, ...]
    retention: tuple[float, ...]
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        # Normalise lists to tuples so that equal configurations hash equally.
        object.__setattr__(self, "heads", _tuple(self.heads, "heads", int))
        object.__setattr__(self, "ffn", _tuple(self.ffn, "ffn", int))
        object.__setattr__(self, "keep", _tuple(self.keep, "keep", bool))
        object.__setattr__(self, "retention", _tuple(self.retention, "retention", float))
        n = len(self.heads)
        for name in ("ffn", "keep", "retention"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries but heads has {n}: "
                    "every field needs one entry per encoder layer"
                )

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def kept_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.keep) if k]

    @property
    def has_retention(self) -> bool:
        return any(r < 1.0 for r in self.retention)

    @property
    def drops(self) -> dict[int, float]:
        """The layers that drop tokens, each with the retention it drops to, in layer order.

        A kept layer drops when its retention is below the retention already applied; a
        skipped layer computes no attention and drops nothing. The forward, the analytic
        cost and the latency features all follow this one schedule.
        """
        out: dict[int, float] = {}
        applied = 1.0
        for i in self.kept_layers:
            if self.retention[i] < applied - 1e-9:
                out[i] = applied = self.retention[i]
        return out

    @classmethod
    def full(cls, heads: Sequence[int], ffn: Sequence[int]) -> SubnetConfig:
        """Every layer kept with ``heads[i]`` heads and ``ffn[i]`` neurons, no token dropped."""
        n = len(heads)
        return cls(tuple(heads), tuple(ffn), (True,) * n, (1.0,) * n)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def with_precision(self, precision: str) -> SubnetConfig:
        return replace(self, precision=precision)

    def to_dict(self) -> dict[str, Any]:
        """The fields as lists; ``precision`` only when it is not fp32, so that an fp32
        configuration keeps the key it had before precision existed (caches stay valid)."""
        d: dict[str, Any] = {k: list(getattr(self, k)) for k in ("heads", "ffn", "keep", "retention")}
        if self.precision != "fp32":
            d["precision"] = self.precision
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubnetConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"a sub-network configuration must be a mapping, got {type(d).__name__}")
        want = {"heads", "ffn", "keep", "retention"}
        missing, extra = want - set(d), set(d) - want - {"precision"}
        if missing or extra:
            raise ConfigError(
                f"sub-network configuration needs exactly the fields {sorted(want)} (and optionally "
                f"\"precision\"); missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        return cls(heads=d["heads"], ffn=d["ffn"], keep=d["keep"], retention=d["retention"],
                   precision=d.get("precision", "fp32"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """A stable 12-hex-digit hash of the configuration (cache keys, file names)."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def canonical(self) -> SubnetConfig:
        """Same function, one spelling: a skipped layer's heads/FFN are set to 0."""
        return SubnetConfig(
            heads=tuple(h if k else 0 for h, k in zip(self.heads, self.keep, strict=True)),
            ffn=tuple(f if k else 0 for f, k in zip(self.ffn, self.keep, strict=True)),
            keep=self.keep,
            retention=self.retention,
            precision=self.precision,
        )

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``L4 h12/9/.. f1536/.. r1.0/0.7/..`` (then
        `` int8`` for an int8 sub-network)."""
        kept = self.kept_layers
        h = "/".join(str(self.heads[i]) for i in kept)
        f = "/".join(str(self.ffn[i]) for i in kept)
        r = "/".join(f"{self.retention[i]:.2g}" for i in kept)
        return f"L{len(kept)} h{h} f{f} r{r}" + ("" if self.precision == "fp32" else f" {self.precision}")


def _quarters(n: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(n * q)) for q in (0.25, 0.5, 0.75, 1.0)}))


DEFAULT_RETENTION = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass(frozen=True)
class SearchSpace:
    """Allowed choices per layer, shared by all layers.

    ``retention_choices`` are fractions of the input length; ``min_layers`` is the fewest
    layers a sub-network may keep; ``precision_choices`` the precisions searched (a run's
    space is fp32 only; ``with_precisions`` gives a device's, from its profile).
    """

    num_layers: int
    max_heads: int
    max_ffn: int
    head_choices: tuple[int, ...]
    ffn_choices: tuple[int, ...]
    retention_choices: tuple[float, ...] = DEFAULT_RETENTION
    min_layers: int = 2
    allow_skip: bool = True
    precision_choices: tuple[str, ...] = ("fp32",)
    _ok: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_choices", tuple(sorted(_tuple(self.head_choices, "head_choices", int))))
        object.__setattr__(self, "ffn_choices", tuple(sorted(_tuple(self.ffn_choices, "ffn_choices", int))))
        object.__setattr__(
            self, "retention_choices",
            tuple(sorted(_tuple(self.retention_choices, "retention_choices", float), reverse=True)),
        )
        p = self.precision_choices
        if isinstance(p, str) or not isinstance(p, Sequence):
            raise ConfigError(f"precision_choices must be a list like [\"fp32\", \"int8\"], got {p!r}")
        object.__setattr__(self, "precision_choices", tuple(x for x in PRECISIONS if x in p))
        if set(p) - set(PRECISIONS) or "fp32" not in p:
            raise ConfigError(f"precision_choices must include \"fp32\" and lie in {list(PRECISIONS)}, got {list(p)}")
        self._check()

    def _check(self) -> None:
        if self.num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 1 <= self.min_layers <= self.num_layers:
            raise ConfigError(f"min_layers must be in 1..{self.num_layers}, got {self.min_layers}")
        for name, choices, hi in (
            ("head_choices", self.head_choices, self.max_heads),
            ("ffn_choices", self.ffn_choices, self.max_ffn),
        ):
            if not choices:
                raise ConfigError(f"{name} must not be empty")
            if choices[0] < 1 or choices[-1] > hi:
                raise ConfigError(f"{name} must lie in 1..{hi}, got {list(choices)}")
            if choices[-1] != hi:
                raise ConfigError(f"{name} must include the maximum {hi} (the full model), got {list(choices)}")
        r = self.retention_choices
        if not r or r[0] != 1.0 or r[-1] <= 0.0:
            raise ConfigError(f"retention_choices must lie in (0, 1] and include 1.0, got {list(r)}")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        *,
        retention_choices: Sequence[float] = DEFAULT_RETENTION,
        min_layers: int | None = None,
    ) -> SearchSpace:
        """Default space for a BERT shape: heads and FFN in quarters, retention 1.0..0.3."""
        return cls(
            num_layers=num_layers,
            max_heads=num_heads,
            max_ffn=intermediate_size,
            head_choices=_quarters(num_heads),
            ffn_choices=_quarters(intermediate_size),
            retention_choices=tuple(retention_choices),
            min_layers=min_layers if min_layers is not None else min(2, num_layers),
        )

    def with_precisions(self, precisions: Sequence[str]) -> SearchSpace:
        """The same space searched at ``precisions`` (a device profile's ``precisions``)."""
        return replace(self, precision_choices=tuple(precisions))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_ok")
        if d["precision_choices"] == ("fp32",):
            d.pop("precision_choices")  # the run's own space: as written before precision existed
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        fields = {"num_layers", "max_heads", "max_ffn", "head_choices", "ffn_choices",
                  "retention_choices", "min_layers", "allow_skip", "precision_choices"}
        extra = set(d) - fields
        if extra:
            raise ConfigError(f"unknown search-space fields {sorted(extra)}; known: {sorted(fields)}")
        return cls(**dict(d))

    # ---- checks -------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Raise ConfigError naming the bad field (and layer) if ``cfg`` is outside the space;
        return it in its one spelling (``key()`` then names the function, not the spelling): a
        skipped layer's heads and FFN 0, each retention the space's own value of it (a JSON
        file's 0.8000000000000002 is 0.8)."""
        if cfg.num_layers != self.num_layers:
            raise ConfigError(
                f"configuration has {cfg.num_layers} layers but the space has {self.num_layers}"
            )
        if cfg.precision not in self.precision_choices:
            raise ConfigError(f"precision {cfg.precision!r} is not one of {list(self.precision_choices)}")
        kept = cfg.kept_layers
        if len(kept) < self.min_layers:
            raise ConfigError(f"keep: {len(kept)} layers kept, at least {self.min_layers} required")
        if not self.allow_skip and len(kept) != self.num_layers:
            raise ConfigError("keep: this space does not allow skipping layers")
        prev = 1.0
        retention: list[float] = []
        for i in range(self.num_layers):
            if cfg.keep[i]:
                if cfg.heads[i] not in self.head_choices:
                    raise ConfigError(f"heads[{i}]={cfg.heads[i]} is not one of {list(self.head_choices)}")
                if cfg.ffn[i] not in self.ffn_choices:
                    raise ConfigError(f"ffn[{i}]={cfg.ffn[i]} is not one of {list(self.ffn_choices)}")
            r = cfg.retention[i]
            exact = [c for c in self.retention_choices if math.isclose(r, c)]
            if not exact:
                raise ConfigError(f"retention[{i}]={r} is not one of {list(self.retention_choices)}")
            retention.append(exact[0])
            if r > prev + 1e-9:
                raise ConfigError(
                    f"retention[{i}]={r} is larger than retention[{i - 1}]={prev}: "
                    "retention must be non-increasing (dropped tokens do not come back)"
                )
            if not cfg.keep[i] and not math.isclose(r, prev):
                raise ConfigError(
                    f"retention[{i}]={r} differs from the previous layer's {prev} but layer {i} is "
                    "skipped: a skipped layer computes no attention and cannot drop tokens"
                )
            prev = r
        one = replace(cfg.canonical(), retention=tuple(retention))
        return cfg if one == cfg else one

    def contains(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
        except ConfigError:
            return False
        return True

    # ---- special members ----------------------------------------------------------------
    def largest(self) -> SubnetConfig:
        n = self.num_layers
        return SubnetConfig.full((self.max_heads,) * n, (self.max_ffn,) * n)

    def smallest(self) -> SubnetConfig:
        """Fewest layers (evenly spaced, DynaBERT style), fewest heads/FFN, least retention."""
        keep = evenly_spaced_keep(self.num_layers, self.min_layers if self.allow_skip else self.num_layers)
        rmin = self.retention_choices[-1]
        retention = _retention_for_kept(keep, [rmin] * self.num_layers)
        return SubnetConfig(
            heads=tuple(self.head_choices[0] if k else 0 for k in keep),
            ffn=tuple(self.ffn_choices[0] if k else 0 for k in keep),
            keep=keep,
            retention=retention,
        )

    def uniform(self, width: float = 1.0, depth: float = 1.0, retention: float = 1.0) -> SubnetConfig:
        """DynaBERT-style uniform sub-network: width and depth multipliers, one retention."""
        n_keep = max(self.min_layers, round(self.num_layers * depth))
        keep = evenly_spaced_keep(self.num_layers, n_keep)
        h = _nearest(self.head_choices, self.max_heads * width)
        f = _nearest(self.ffn_choices, self.max_ffn * width)
        r = min(self.retention_choices, key=lambda c: abs(c - retention))
        # Retention decays geometrically to r at the last kept layer (not a cliff at layer 0).
        kept = [i for i, k in enumerate(keep) if k]
        targets = [1.0] * self.num_layers
        for j, i in enumerate(kept):
            frac = (j + 1) / len(kept)
            targets[i] = r**frac
        snapped = [self._snap_retention(t) for t in targets]
        cfg = SubnetConfig(
            heads=tuple(h if k else 0 for k in keep),
            ffn=tuple(f if k else 0 for k in keep),
            keep=keep,
            retention=_retention_for_kept(keep, snapped),
        )
        return self.validate(cfg)

    def _snap_retention(self, r: float) -> float:
        return min(self.retention_choices, key=lambda c: abs(c - r))

    # ---- sampling, mutation, crossover ---------------------------------------------------
    def sample(self, rng: np.random.Generator, *, retention: bool = True) -> SubnetConfig:
        """A uniformly random valid configuration (retention drops sorted to stay monotone)."""
        n = self.num_layers
        if self.allow_skip:
            n_keep = int(rng.integers(self.min_layers, n + 1))
            kept = sorted(rng.choice(n, size=n_keep, replace=False).tolist())
            keep = tuple(i in kept for i in range(n))
        else:
            keep = (True,) * n
        heads = tuple(int(rng.choice(self.head_choices)) if k else 0 for k in keep)
        ffn = tuple(int(rng.choice(self.ffn_choices)) if k else 0 for k in keep)
        if retention:
            raw = sorted((float(rng.choice(self.retention_choices)) for _ in range(n)), reverse=True)
        else:
            raw = [1.0] * n
        return self.validate(SubnetConfig(heads, ffn, keep, _retention_for_kept(keep, raw), self._draw_precision(rng)))

    def _draw_precision(self, rng: np.random.Generator) -> str:
        # Draws nothing from ``rng`` when there is one choice: fp32-only searches keep their streams.
        return str(rng.choice(self.precision_choices)) if len(self.precision_choices) > 1 else self.precision_choices[0]

    def mutate(self, cfg: SubnetConfig, rng: np.random.Generator, prob: float = 0.3) -> SubnetConfig:
        """Re-draw each per-layer choice with probability ``prob``; repair to stay valid."""
        n = self.num_layers
        keep = list(cfg.keep)
        if self.allow_skip:
            for i in range(n):
                if rng.random() < prob / 2:
                    keep[i] = not keep[i]
            while sum(keep) < self.min_layers:
                keep[int(rng.choice([i for i in range(n) if not keep[i]]))] = True
        heads, ffn, ret = list(cfg.heads), list(cfg.ffn), list(cfg.retention)
        for i in range(n):
            if keep[i] and (heads[i] == 0 or rng.random() < prob):
                heads[i] = int(rng.choice(self.head_choices))
            if keep[i] and (ffn[i] == 0 or rng.random() < prob):
                ffn[i] = int(rng.choice(self.ffn_choices))
            if rng.random() < prob:
                ret[i] = float(rng.choice(self.retention_choices))
        ret = _monotone(ret)
        keep_t = tuple(keep)
        precision = cfg.precision
        if len(self.precision_choices) > 1 and rng.random() < prob:
            precision = self._draw_precision(rng)
        return self.validate(
            SubnetConfig(
                tuple(h if k else 0 for h, k in zip(heads, keep_t, strict=True)),
                tuple(f if k else 0 for f, k in zip(ffn, keep_t, strict=True)),
                keep_t,
                _retention_for_kept(keep_t, ret),
                precision,
            )
        )

    def grown(self, cfg: SubnetConfig) -> list[SubnetConfig]:
        """Every configuration one step larger than ``cfg`` in one choice, at its precision: a
        kept layer's heads or FFN neurons to the next choice up, a skipped layer kept again (with
        the widths of the kept layer before it, else after it), or one token drop raised to the
        next retention choice up (for the layers it applies to). Each holds ``cfg`` inside it,
        so with shared weights it is as accurate or more in expectation and no faster. In layer
        order, widths first; none equal to ``cfg``."""
        self.validate(cfg)
        out: list[SubnetConfig] = []

        def add(heads: Sequence[int], ffn: Sequence[int], keep: Sequence[bool], retention: Sequence[float]) -> None:
            got = SubnetConfig(tuple(heads), tuple(ffn), tuple(keep), tuple(retention), cfg.precision)
            if got != cfg and got not in out and self.contains(got):
                out.append(got)

        n = self.num_layers
        for i in cfg.kept_layers:
            for name, choices in (("heads", self.head_choices), ("ffn", self.ffn_choices)):
                values = list(getattr(cfg, name))
                up = [c for c in choices if c > values[i]]
                if up:
                    values[i] = up[0]
                    add(values if name == "heads" else cfg.heads, values if name == "ffn" else cfg.ffn,
                        cfg.keep, cfg.retention)
        kept = cfg.kept_layers
        for i in range(n):
            if cfg.keep[i]:
                continue
            src = max((j for j in kept if j < i), default=min(kept))
            keep = [*cfg.keep[:i], True, *cfg.keep[i + 1:]]
            add([*cfg.heads[:i], cfg.heads[src], *cfg.heads[i + 1:]], [*cfg.ffn[:i], cfg.ffn[src], *cfg.ffn[i + 1:]],
                keep, cfg.retention)
        for i, r in cfg.drops.items():
            higher = [c for c in self.retention_choices if c > r + 1e-9]
            if not higher:
                continue
            r_up = min(higher)
            # The drop's own layer and the layers after it that carry its retention (until the next drop).
            raw = list(cfg.retention)
            for j in range(i, n):
                if not math.isclose(raw[j], r):
                    break
                raw[j] = r_up
            add(cfg.heads, cfg.ffn, cfg.keep, _retention_for_kept(cfg.keep, _monotone(raw)))
        return out

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Per-layer uniform crossover of two parents; repaired to stay valid."""
        n = self.num_layers
        pick = rng.random(n) < 0.5
        keep = [a.keep[i] if pick[i] else b.keep[i] for i in range(n)]
        while sum(keep) < self.min_layers:
            keep[int(rng.choice([i for i in range(n) if not keep[i]]))] = True
        heads, ffn = [], []
        for i in range(n):
            src, other = (a, b) if pick[i] else (b, a)
            h = src.heads[i] or other.heads[i] or self.head_choices[-1]
            f = src.ffn[i] or other.ffn[i] or self.ffn_choices[-1]
            heads.append(h if keep[i] else 0)
            ffn.append(f if keep[i] else 0)
        pick_r = rng.random(n) < 0.5
        ret = _monotone([a.retention[i] if pick_r[i] else b.retention[i] for i in range(n)])
        keep_t = tuple(keep)
        precision = a.precision if a.precision == b.precision or rng.random() < 0.5 else b.precision
        return self.validate(SubnetConfig(tuple(heads), tuple(ffn), keep_t, _retention_for_kept(keep_t, ret), precision))


def _nearest(choices: Sequence[int], target: float) -> int:
    return min(choices, key=lambda c: (abs(c - target), -c))


def _monotone(values: Sequence[float]) -> list[float]:
    out, prev = [], 1.0
    for v in values:
        prev = min(prev, v)
        out.append(prev)
    return out


def _retention_for_kept(keep: Sequence[bool], raw: Sequence[float]) -> tuple[float, ...]:
    """Make retention non-increasing and constant across skipped layers."""
    out, prev = [], 1.0
    for k, r in zip(keep, raw, strict=True):
        if k:
            prev = min(prev, r)
        out.append(prev)
    return tuple(out)


def evenly_spaced_keep(num_layers: int, n_keep: int) -> tuple[bool, ...]:
    """Keep ``n_keep`` evenly spaced layers, always including the last (DynaBERT depth)."""
    if n_keep >= num_layers:
        return (True,) * num_layers
    idx = {int(round((j + 1) * num_layers / n_keep)) - 1 for j in range(n_keep)}
    return tuple(i in idx for i in range(num_layers))

"""Device profiles: where and how a sub-network is timed.

A profile names the runtime (ONNX Runtime, OpenVINO or PyTorch eager), its execution provider,
threads, batch size and what the device is timed on. ``"traffic"`` (the default) replays a
fixed, seeded sample of real dev inputs at their own lengths, each model serving the whole
sample in turn: what a server meets. ``"p50"`` / ``"p95"`` (any ``"pNN"``, from the task's
dev-split length distribution) or an integer time one input of that length, repeated: for
users who pad every call to one shape.

Built-in profiles: ``cpu``, ``cpu-int8`` (the same, searching INT8 too), ``cpu-1t``,
``cpu-openvino``, ``torch-cpu``, ``cuda``. User profiles come from a
TOML file, one table per device::

    [devices.laptop]
    runtime = "onnxruntime"      # or "openvino" (with provider = "CPU"), or "torch"
    provider = "CPUExecutionProvider"
    threads = 4
    batch = 1
    lengths = ["traffic"]        # or ["p50", "p95"], [128], or both kinds
    precision = "fp32"
    precisions = ["fp32", "int8"]  # what sub-networks may run at (searched; int8: ONNX Runtime only)
    description = "my laptop"

``precision`` is the float type the runtime computes in (fp16 for PyTorch on CUDA);
``precisions`` the choices the search may make per sub-network: ``"int8"`` is the sub-network's
ONNX graph with dynamic INT8 quantization (``latency.onnx_export.quantize_int8``), measured,
predicted and scored (its dev accuracy run by ONNX Runtime at ``batch``) like any other choice. INT8 gains
most on CPUs with VNNI instructions (AVX-512 VNNI or AVX-VNNI); on a CPU without them the
measurements show the smaller gain (or a loss) and the search then picks fp32 (and the
weights use 7 bits there: ``latency.onnx_export.int8_reduce_range``).

``runtime = "openvino"`` times the same ONNX graph (token dropping included) in OpenVINO's CPU
plugin, in fp32 (``latency.onnx_export.ov_compiled``), with the same workloads and
interleaved rounds as ONNX Runtime; it needs the ``openvino`` package
(``pip install 'hwnas[openvino]'``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from supernet.checks import is_int
from supernet.errors import ConfigError, HwnasError
from supernet.runfolder import check_name

RUNTIMES = ("onnxruntime", "openvino", "torch")
OPENVINO_DEVICES = ("CPU",)  # the OpenVINO plugins this project times (``provider``)
PRECISIONS = ("fp32", "fp16")  # the runtime's float type (``DeviceProfile.precision``)
SUBNET_PRECISIONS = ("fp32", "int8")  # what a sub-network may run at (``DeviceProfile.precisions``)


class DeviceUnavailable(HwnasError):
    """The profile needs hardware or software that this machine does not have."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    runtime: str = "onnxruntime"
    provider: str = "CPUExecutionProvider"  # ONNX Runtime provider; OpenVINO: "CPU"; torch: "cpu" or "cuda"
    threads: int | None = None  # None: all cores
    batch: int = 1
    # "traffic": a seeded sample of real dev inputs at their own lengths (the default);
    # "pNN" or an integer: one input of that length, repeated (for users who pad to a shape).
    lengths: tuple[str | int, ...] = ("traffic",)
    traffic_calls: int = 32  # calls in the traffic sample (batch inputs each)
    precision: str = "fp32"
    precisions: tuple[str, ...] = ("fp32",)  # searched per sub-network: "fp32", "int8"
    warmup: int = 10
    repeats: int = 30
    description: str = ""
    kit: bool = False  # measured elsewhere through a measurement kit (hwnas measure --kit)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.lengths, (list, tuple)):
            raise ConfigError(f"device {self.name!r}: lengths must be a list (e.g. [\"traffic\"], [\"p50\", \"p95\"] or "
                              f"[128]), got {self.lengths!r}")
        object.__setattr__(self, "lengths", tuple(self.lengths))
        if isinstance(self.precisions, (list, tuple)):
            object.__setattr__(self, "precisions", tuple(self.precisions))
        self.validate()

    def validate(self) -> DeviceProfile:
        where = f"device {self.name!r}"
        # Types first: a TOML or JSON file can hold a string, a float or a boolean anywhere.
        for name in ("name", "runtime", "provider", "precision", "description"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{where}: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("batch", "traffic_calls", "warmup", "repeats", *(("threads",) if self.threads is not None else ())):
            if not is_int(getattr(self, name)):
                raise ConfigError(f"{where}: {name} must be a whole number, got {getattr(self, name)!r}")
        if not isinstance(self.kit, bool):
            raise ConfigError(f"{where}: kit must be true or false, got {self.kit!r}")
        check_name(self.name, "device")  # it names the run's files: latency/NAME.csv, ...
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"{where}: runtime {self.runtime!r} is not one of {list(RUNTIMES)}")
        if self.runtime == "openvino" and self.provider not in OPENVINO_DEVICES:
            raise ConfigError(f"{where}: provider {self.provider!r} is not an OpenVINO device this project times; "
                              "use provider = \"CPU\" with runtime = \"openvino\"")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision {self.precision!r} is not one of {list(PRECISIONS)}")
        p = self.precisions
        if (not isinstance(p, tuple) or not all(isinstance(x, str) for x in p) or set(p) - set(SUBNET_PRECISIONS)
                or "fp32" not in p):
            raise ConfigError(f"{where}: precisions must be a list holding \"fp32\" and optionally \"int8\", "
                              f"got {p!r}")
        if "int8" in p and self.runtime != "onnxruntime":
            raise ConfigError(f"{where}: int8 sub-networks are quantized ONNX graphs: they need runtime = "
                              "\"onnxruntime\"")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{where}: threads must be >= 1 (or left out for all cores), got {self.threads}")
        if self.batch < 1 or self.warmup < 0 or self.repeats < 3 or self.traffic_calls < 3:
            raise ConfigError(f"{where}: need batch >= 1, warmup >= 0, repeats >= 3 and traffic_calls >= 3")
        if not self.lengths:
            raise ConfigError(f"{where}: lengths must not be empty (e.g. [\"traffic\"], [\"p50\", \"p95\"] or [128])")
        for x in self.lengths:
            ok = (isinstance(x, int) and not isinstance(x, bool) and x >= 2
                  or isinstance(x, str) and (x == "traffic" or re.fullmatch(r"p\d{1,2}", x)))
            if not ok:
                raise ConfigError(f"{where}: length {x!r} must be \"traffic\", an integer >= 2 or a percentile "
                                  "like \"p50\"")
        if self.precision == "fp16" and not (self.runtime == "torch" and self.provider == "cuda"):
            raise ConfigError(f"{where}: fp16 is supported with runtime = \"torch\" and provider = \"cuda\" only "
                              "(the ONNX export is fp32)")
        return self

    @property
    def effective_threads(self) -> int:
        """``threads``, or every core this process may run on (its CPU affinity: a container
        or ``taskset`` allowed 2 of 64 cores gets 2 threads, not 64)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # no affinity call on this OS (macOS)
            return os.cpu_count() or 1

    @property
    def traffic(self) -> bool:
        """Whether this device is timed on real traffic (a measurement kit replays it too)."""
        return "traffic" in self.lengths

    def resolve_lengths(self, stats: Mapping[str, float]) -> list[int]:
        """Concrete fixed lengths from the task's token-length statistics (keys like
        ``"p50"``); "traffic" is not a fixed length."""
        out = []
        for x in self.lengths:
            if x == "traffic":
                continue
            if isinstance(x, int):
                out.append(x)
            elif x in stats:
                out.append(max(2, int(round(stats[x]))))
            else:
                raise ConfigError(f"device {self.name!r}: the task statistics have no {x!r}; known: {sorted(stats)}")
        return sorted(set(out))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lengths"] = list(self.lengths)
        d["precisions"] = list(self.precisions)
        return d


BUILTIN: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("cpu", description="ONNX Runtime, CPU provider, all cores"),
        DeviceProfile("cpu-int8", precisions=("fp32", "int8"),
                      description="ONNX Runtime, CPU provider, all cores; each sub-network in fp32 or dynamic INT8"),
        DeviceProfile("cpu-1t", threads=1, description="ONNX Runtime, CPU, one thread: a stand-in for a small single-core device"),
        DeviceProfile("cpu-openvino", runtime="openvino", provider="CPU",
                      description="OpenVINO CPU plugin, fp32, all cores (needs the openvino package)"),
        DeviceProfile("torch-cpu", runtime="torch", provider="cpu", description="PyTorch eager on the CPU, all cores"),
        DeviceProfile("cuda", provider="CUDAExecutionProvider", description="ONNX Runtime CUDA provider (needs an NVIDIA GPU and onnxruntime-gpu)"),
    )
}

_FIELDS = {f for f in DeviceProfile.__dataclass_fields__ if f not in ("name", "extra")}


def load_profiles(path: str | Path) -> dict[str, DeviceProfile]:
    """Profiles from a TOML file (see the module docstring); errors name the bad entry."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"device file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"device file {p} is not valid TOML: {e}") from e
    table = data.get("devices")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"device file {p} needs a [devices.NAME] table per device")
    out = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"device file {p}: devices.{name} must be a table")
        unknown = set(spec) - _FIELDS
        if unknown:
            raise ConfigError(f"device file {p}: devices.{name} has unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
        try:
            out[name] = DeviceProfile(name=name, **spec)
        except TypeError as e:
            raise ConfigError(f"device file {p}: devices.{name}: {e}") from e
    return out


def get_device(name: str, extra: Mapping[str, DeviceProfile] | None = None) -> DeviceProfile:
    """A profile by name (user profiles first); an unknown name lists the known ones."""
    known = {**BUILTIN, **(extra or {})}
    if name not in known:
        raise ConfigError(
            f"unknown device {name!r}; known devices: {', '.join(sorted(known))} "
            "(define more in a TOML file passed with --devices)"
        )
    return known[name]


def check_available(profile: DeviceProfile) -> None:
    """Raise DeviceUnavailable, saying what is missing, if this machine cannot run ``profile``."""
    if profile.kit:
        raise DeviceUnavailable(
            f"device {profile.name!r} is measured through a kit: run `hwnas measure --kit DIR --device "
            f"{profile.name}`, run the script on the device, then `hwnas measure --import CSV`"
        )
    if profile.runtime == "onnxruntime":
        import onnxruntime as ort

        have = ort.get_available_providers()
        if profile.provider not in have:
            hint = " (install onnxruntime-gpu on a machine with an NVIDIA GPU)" if "CUDA" in profile.provider else ""
            raise DeviceUnavailable(
                f"device {profile.name!r} needs ONNX Runtime's {profile.provider}, but this machine has "
                f"only {have}{hint}"
            )
    elif profile.runtime == "openvino":
        try:
            import openvino as ov
        except ImportError:
            raise DeviceUnavailable(
                f"device {profile.name!r} runs OpenVINO, which is not installed: pip install openvino "
                "(or pip install 'hwnas[openvino]')"
            ) from None
        have = ov.Core().available_devices
        if profile.provider not in have:
            raise DeviceUnavailable(f"device {profile.name!r} needs OpenVINO's {profile.provider} plugin; this "
                                    f"machine has only {have}")
    else:
        import torch

        if profile.provider == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {profile.name!r} needs a CUDA GPU for PyTorch; none is visible")


def with_overrides(profile: DeviceProfile, **kw: Any) -> DeviceProfile:
    """A copy with some fields replaced (e.g. fewer repeats for a quick run)."""
    return replace(profile, **{k: v for k, v in kw.items() if v is not None})

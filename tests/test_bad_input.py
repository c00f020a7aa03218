"""The bad-input corpus (issue 16): every command and every kind of file, fed values it must
refuse. Each case runs ``hwnas`` in this process and asserts exit status 2, one error line on
stderr (argparse's usage block may precede it), no traceback, and no half-made output where
the command would have written some. Property-based cases (hypothesis) generate bad numbers
for the options and bad values for the typed configurations the files hold.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latency.devices import DeviceProfile
from latency.measure import COLUMNS, MeasurementError, MeasurementLog
from nas.cli import main
from nas.pipeline import JobConfig
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig
from supernet.workflow import RunSpec

NOWHERE = "/nonexistent/run"  # options are checked before any run is opened


def refused(argv: list[str]) -> str:
    """Run ``hwnas ARGV`` here; assert a clean refusal; return its error line."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)  # argparse's refusals too: main returns 2 for them
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, f"hwnas {' '.join(argv)} -> {code}\n{text[-3000:]}"
    assert "Traceback" not in text
    if lines and lines[0].startswith("usage:"):  # argparse: the usage block, then one error line
        assert re.match(r"hwnas( [\w-]+)?: error: ", lines[-1]), lines  # [\w-]: hwnas early-exit
    else:
        assert len(lines) == 1 and re.match(r"hwnas [\w-]+: error: ", lines[0]), lines
    return lines[-1]


@pytest.fixture
def copy_run(job: Path, tmp_path: Path):  # noqa: ANN201
    """A private copy of the job's run to damage (weights hard-linked: they are only ever
    replaced, never written in place); ``replace`` writes a file of it afresh."""
    def make(name: str = "run") -> Path:
        def link_or_copy(src: str, dst: str) -> None:
            if src.endswith(".safetensors"):
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)

        dst = tmp_path / name
        shutil.copytree(job, dst, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns("export", "compare", "baselines", "bench"))
        return dst

    return make


def replace(path: Path, text: str | bytes | None) -> None:
    """Write ``path`` as a new file (a hard link is cut first), or remove it (None)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)


# --- 1. Options: every number checked where it enters (NaN and infinities included) ---------

OPTIONS = [
    (["train", "--out", "X", "--teacher-epochs", "nan"], "--teacher-epochs"),
    (["train", "--out", "X", "--teacher-epochs", "inf"], "--teacher-epochs"),
    (["train", "--out", "X", "--teacher-epochs", "-1"], "--teacher-epochs"),
    (["train", "--out", "X", "--teacher-epochs", "0"], "--teacher-epochs"),  # a stage takes at least one step
    (["train", "--out", "X", "--supernet-epochs", "0"], "--supernet-epochs"),
    (["train", "--out", "X", "--task", "r8", "--unlabeled", "10"], "has none"),
    (["train", "--out", "X", "--teacher-lr", "nan"], "--teacher-lr"),
    (["train", "--out", "X", "--teacher-lr", "inf"], "--teacher-lr"),
    (["train", "--out", "X", "--teacher-lr", "-1"], "--teacher-lr"),
    (["train", "--out", "X", "--teacher-lr", "0"], "--teacher-lr"),
    (["train", "--out", "X", "--supernet-epochs", "nan"], "--supernet-epochs"),
    (["train", "--out", "X", "--supernet-lr", "0"], "--supernet-lr"),
    (["train", "--out", "X", "--batch-size", "0"], "--batch-size"),
    (["train", "--out", "X", "--batch-size", "1.5"], "--batch-size"),
    (["train", "--out", "X", "--max-length", "1"], "--max-length"),
    (["train", "--out", "X", "--max-train", "0"], "--max-train"),
    (["train", "--out", "X", "--max-eval", "-1"], "--max-eval"),
    (["train", "--out", "X", "--n-random", "-1"], "--n-random"),
    (["train", "--out", "X", "--hidden-weight", "nan"], "--hidden-weight"),
    (["train", "--out", "X", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--out", "X", "--seed", "-1"], "--seed"),
    (["train", "--out", "X", "--seed", str(2**32)], "--seed"),
    (["run", "--n-measure", "0"], "--n-measure"),
    (["run", "--n-measure", "nan"], "--n-measure"),
    (["run", "--n-search", "-5"], "--n-search"),
    (["run", "--finetune-epochs", "inf"], "--finetune-epochs"),
    (["run", "--finetune-lr", "0"], "--finetune-lr"),
    (["run", "--finetune-candidates", "0"], "--finetune-candidates"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--n", "0"], "--n"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--n", "-5"], "--n"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--n", "1e3"], "--n"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--passes", "0"], "--passes"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--passes", "2", "--kit", "K"], "--passes applies"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--reference-every", "0"], "--reference-every"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--reference-every", "-1"], "--reference-every"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--noise-rounds", "-1"], "--noise-rounds"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--repeats", "2"], "--repeats"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--warmup", "-1"], "--warmup"),
    (["measure", "--run", NOWHERE, "--device", "cpu", "--kit", "K", "--import", "C"], "not allowed with"),
    (["fit", "--run", NOWHERE, "--device", "cpu", "--seed", "nan"], "--seed"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--n", "0"], "--n"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--dev-subset", "-1"], "--dev-subset"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--workers", "0"], "--workers"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--budget-stat", "p77"], "--budget-stat"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--budget-ms", "5"], "not allowed with"),
    (["search", "--run", NOWHERE, "--device", "cpu"], "required"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "0"], "--budget-ms"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "nan"], "--budget-ms"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "inf"], "--budget-ms"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "1,,"], "--budget-ms"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "fast"], "--budget-ms"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "5", "--method", "nope"], "unknown searcher"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--method", "random", "--screen", "2"],
     "evolution's setting"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--screen", "0"], "--screen"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--ray", "--screen", "2"], "--ray"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "5", "--ray", "--method", "random"],
     "TPE inside Ray Tune"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--ray", "--method", "tpe"], "NSGA-II inside Ray Tune"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--workers", "3"], "settings of --ray"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--ray-address", "h:1"], "settings of --ray"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--method", "tpe", "--screen",
      "3"], "evolution's setting"),
    (["bench", "--run", NOWHERE, "--out", "O", "--screen", "x"], "--screen"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--speedup", "nan"], "--speedup"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--speedup", "inf"], "--speedup"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--speedup", "1"], "--speedup"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--finalists", "0"], "--finalists"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--drift-tolerance", "nan"],
     "--drift-tolerance"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--finetune-lr", "inf"],
     "--finetune-lr"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5,8"], "one --budget-ms"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--step-up-below", "2"],
     "--step-up-below"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--finetune-best-epoch"],
     "--finetune-best-epoch applies to a fine-tuning"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--finetune-attention", "1",
      "--finetune-candidates", "1"], "--finetune-candidates, --finetune-attention apply"),
    (["bench", "--run", NOWHERE, "--finetune-epochs", "0", "--finetune-augment", "1"], "--finetune-augment applies"),
    (["train", "--out", "O", "--layer-weight", "-1"], "--layer-weight"),
    (["train", "--out", "O", "--unlabeled", "-5"], "--unlabeled"),
    (["train", "--out", "O", "--augment", "-1"], "--augment"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--finetune-augment", "x"],
     "--finetune-augment"),
    (["run", "--finetune-attention", "nan"], "--finetune-attention"),
    (["bench", "--run", NOWHERE, "--out", "O", "--finetune-attention", "-0.5"], "--finetune-attention"),
    (["train", "--out", "O", "--distill-from", "student"], "--distill-from"),
    (["train", "--out", "O", "--train-device", "gpu"], "--train-device"),
    (["run", "--train-device", "tpu"], "--train-device"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "-2"], "--budget-ms"),
    (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "5", "--method", "x"], "unknown"),
    (["compare", "--run", NOWHERE, "--device", "cpu", "--remeasure-points", "-1"], "--remeasure-points"),
    (["compare", "--run", NOWHERE, "--device", "cpu", "--dev-subset", "-1"], "--dev-subset"),
    (["compare", "--device", "cpu"], "--run"),
    (["compare", "--run", NOWHERE], "--device"),
    (["bench", "--run", NOWHERE, "--n", "0"], "--n"),
    (["bench", "--run", NOWHERE, "--front-points", "1"], "--front-points"),
    (["bench", "--run", NOWHERE, "--finetune-lr", "nan"], "--finetune-lr"),
    (["bench", "--run", NOWHERE, "--budgets", "0,2"], "--budgets"),
    (["bench", "--run", NOWHERE, "--budgets", "0.5,1.5"], "--budgets"),
    (["bench", "--run", NOWHERE, "--budgets", "0.5,nan"], "--budgets"),
    (["bench", "--run", NOWHERE, "--finetune-at", "nan"], "--finetune-at"),
    (["bench", "--run", NOWHERE, "--finetune-at", "0.5"], "--finetune-at"),
    (["extract", "--run", NOWHERE, "--out", "O"], "--subnet"),
    (["exits", "--run", NOWHERE, "--epochs", "0"], "--epochs"),
    (["exits", "--run", NOWHERE, "--lr", "nan"], "--lr"),
    (["exits", "--run", NOWHERE, "--kind", "big"], "invalid choice"),
    (["exits", "--run", NOWHERE], "run.json is missing"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--max-loss", "-1"], "--max-loss"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--rounds", "0"], "--rounds"),
    (["early-exit", "--run", NOWHERE], "--out"),
    (["early-exit", "--run", NOWHERE, "--out", "O"], "run.json is missing"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--budget-ms", "0", "--device", "cpu"], "--budget-ms"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--budget-ms", "3", "--device", "cpu", "--budget-stat", "p99"],
     "invalid choice"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--budget-ms", "3"], "--device"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--budget-ms", "3", "--device", "cpu"], "run.json is missing"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--budget-ms", "3", "--device", "cpu", "--candidates", "0"],
     "--candidates"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--n-cost", "1"], "--n-cost"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--speedup", "2", "--device", "cpu", "--max-loss", "2"],
     "--max-loss"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--subnet", "largest", "--quiet"], "--quiet"),
    (["early-exit", "--run", NOWHERE, "--out", "O", "--finalists", "1"], "--finalists"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--front", "--method", "tpe"], "use --method nsga2"),
    (["search", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "3", "--method", "ray"], "spelled --ray"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["fit", "--run", NOWHERE, "--device", "cpu", "--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("argv, says", OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OPTIONS])
def test_options_are_refused_where_they_enter(argv: list[str], says: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative --out folders land here, and must not appear
    assert says in refused(argv)
    assert list(tmp_path.iterdir()) == []


NUMERIC = {  # option -> (a command line it belongs to, what it accepts)
    "--teacher-epochs": (["train", "--out", "X"], "rate"),  # above 0, as learning rates are
    "--supernet-lr": (["train", "--out", "X"], "rate"),
    "--hidden-weight": (["train", "--out", "X"], "epochs"),
    "--batch-size": (["train", "--out", "X"], "count"),
    "--n-measure": (["run"], "count"),
    "--n": (["measure", "--run", NOWHERE, "--device", "cpu"], "count"),
    "--noise-rounds": (["measure", "--run", NOWHERE, "--device", "cpu"], "count0"),
    "--passes": (["measure", "--run", NOWHERE, "--device", "cpu"], "count"),
    "--finetune-lr": (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "1"], "rate"),
    "--speedup": (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O"], "speedup"),
    "--drift-tolerance": (["export", "--run", NOWHERE, "--device", "cpu", "--out", "O", "--budget-ms", "1"], "finite"),
    "--remeasure-points": (["compare", "--run", NOWHERE, "--device", "cpu"], "count0"),
}
LOW = {"epochs": 0.0, "rate": 0.0, "count": 1, "count0": 0, "speedup": 1.0, "finite": -math.inf}


def _bad_value(kind: str) -> st.SearchStrategy[str]:
    """Text a ``kind`` option must refuse: non-finite or junk always, and out-of-range values."""
    junk = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "", "x", "1,2", "0x10", "1e400"])
    if kind == "finite":
        return junk
    low = LOW[kind]
    if kind in ("count", "count0"):
        below = st.integers(max_value=int(low) - 1).map(str)
        fractional = st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()).map(repr)
        return st.one_of(junk, below, fractional)
    strict = kind in ("rate", "speedup")
    below_f = st.floats(max_value=low, allow_nan=False).filter(lambda v: v < low or strict).map(repr)
    return st.one_of(junk, below_f)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(NUMERIC)), data=st.data())
def test_generated_bad_numbers_are_refused(option: str, data: st.DataObject) -> None:
    prefix, kind = NUMERIC[option]
    value = data.draw(_bad_value(kind))
    argv = [*prefix, f"{option}={value}"]  # "=" so that "-inf" is a value, not an option
    assert option in refused(argv)


# --- 2. Output paths: refused when the arguments are read, before any long work --------------

@pytest.mark.parametrize("command", [
    ["train", "--out", "{file}"],
    ["run", "--out", "{file}"],
    ["export", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "1", "--out", "{file}"],
    ["export", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "1", "--out", "{file}/below"],
    ["compare", "--run", NOWHERE, "--device", "cpu", "--out", "{file}"],
    ["bench", "--run", NOWHERE, "--out", "{file}"],
    ["extract", "--run", NOWHERE, "--subnet", "s.json", "--out", "{file}"],
    ["measure", "--run", NOWHERE, "--device", "cpu", "--kit", "{file}/kit"],
    ["eval", "--run", NOWHERE, "--save", "{folder}"],
    ["eval", "--run", NOWHERE, "--save", "{file}/table.csv"],
    ["eval", "--run", NOWHERE, "--save", "{folder}/table.json"],  # the run's record goes to a .json beside it
])
def test_output_paths_that_cannot_be_written_are_refused_first(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    argv = [c.format(file=tmp_path / "a_file", folder=tmp_path) for c in command]
    line = refused(argv)
    assert "--out" in line or "--kit" in line or "--save" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_output_folder_is_refused_first(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert "not writable" in refused(["export", "--run", NOWHERE, "--device", "cpu", "--budget-ms", "1",
                                      "--out", str(ro / "x")])


# --- 3. Sub-network JSON files (eval, extract) -------------------------------------------------

FULL = {"heads": [4, 4, 4], "ffn": [64, 64, 64], "keep": [True] * 3, "retention": [1.0] * 3}
SUBNETS: dict[str, Any] = {
    "heads abc": {**FULL, "heads": ["abc", 4, 4]},
    "heads null": {**FULL, "heads": [None, 4, 4]},
    "heads a string": {**FULL, "heads": "444"},
    "heads nested": {**FULL, "heads": [[4], 4, 4]},
    "heads 4.5": {**FULL, "heads": [4.5, 4, 4]},
    "heads infinite": {**FULL, "heads": [float("inf"), 4, 4]},
    "heads 40": {**FULL, "heads": [40, 4, 4]},
    "heads 0 kept": {**FULL, "heads": [0, 4, 4]},
    "retention a string": {**FULL, "retention": ["0.5", 0.5, 0.5]},
    "retention NaN": {**FULL, "retention": [float("nan"), 1.0, 1.0]},
    "retention rising": {**FULL, "retention": [0.5, 1.0, 1.0]},
    "keep 1": {**FULL, "keep": [1, 1, 1]},
    "two layers": {k: v[:2] for k, v in FULL.items()},
    "seven layers": {k: v * 3 for k, v in FULL.items()} | {"heads": [4] * 7, "ffn": [64] * 7,
                                                            "keep": [True] * 7, "retention": [1.0] * 7},
    "a list": [1, 2, 3],
    "an unknown field": {**FULL, "depth": 3},
    "a missing field": {k: v for k, v in FULL.items() if k != "keep"},
    "an int8 sub-network": {**FULL, "precision": "int8"},  # eval and extract run fp32 PyTorch weights
}


@pytest.mark.parametrize("name", SUBNETS)
def test_bad_subnetwork_files_are_refused(name: str, job: Path, tmp_path: Path) -> None:
    f = tmp_path / "subnet.json"
    f.write_text(json.dumps(SUBNETS[name]))
    refused(["extract", "--run", str(job), "--subnet", str(f), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["{heads", "", "\xff\xfe"])
def test_unreadable_subnetwork_files_are_refused(text: str, job: Path, tmp_path: Path) -> None:
    f = tmp_path / "subnet.json"
    f.write_text(text, encoding="latin-1")
    assert "not valid JSON" in refused(["eval", "--run", str(job), "--subnet", str(f)])
    assert "does not exist" in refused(["eval", "--run", str(job), "--subnet", str(tmp_path / "none.json")])


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(FULL)), layer=st.integers(0, 2), value=JSONISH)
def test_generated_subnetworks_are_valid_or_a_config_error(field: str, layer: int, value: Any) -> None:
    """Any value in any place: the configuration is in the space, or ConfigError says why."""
    d = json.loads(json.dumps(FULL))
    d[field][layer] = value
    space = SearchSpace.for_model(3, 4, 64)
    try:
        cfg = space.validate(SubnetConfig.from_dict(d))
    except ConfigError:
        return
    assert cfg.num_layers == 3 and all(isinstance(h, int) for h in cfg.heads)


# --- 4. Device profiles (TOML files, the run's devices.json) ----------------------------------

TOMLS = {
    "batch 1.5": "[devices.box]\nbatch = 1.5\n",
    "repeats 30.0": "[devices.box]\nrepeats = 30.0\n",
    "warmup true": "[devices.box]\nwarmup = true\n",
    "threads 0": "[devices.box]\nthreads = 0\n",
    "threads a string": "[devices.box]\nthreads = \"4\"\n",
    "traffic_calls 1e9": "[devices.box]\ntraffic_calls = 1e9\n",
    "lengths a string": "[devices.box]\nlengths = \"traffic\"\n",
    "lengths 12.5": "[devices.box]\nlengths = [12.5]\n",
    "kit yes": "[devices.box]\nkit = \"yes\"\n",
    "provider 3": "[devices.box]\nprovider = 3\n",
    "runtime tf": "[devices.box]\nruntime = \"tf\"\n",
    "unknown key": "[devices.box]\nspeed = 3\n",
    "not TOML": "[devices.box\n",
    "empty": "",
    "devices not a table": "devices = 3\n",
    "a device not a table": "[devices]\nbox = 3\n",
    "a name with a slash": "[devices.\"a/b\"]\nthreads = 1\n",
}


@pytest.mark.parametrize("name", TOMLS)
def test_bad_device_files_are_refused_and_not_stored(name: str, copy_run, tmp_path: Path) -> None:
    run = copy_run()
    f = tmp_path / "devices.toml"
    f.write_text(TOMLS[name])
    refused(["measure", "--run", str(run), "--device", "box", "--devices", str(f), "--n", "3", "--quiet"])
    assert not (run / "devices.json").exists()
    assert not (run / "latency" / "box.csv").exists()


@pytest.mark.parametrize("text", [
    "{", "[]", '{"box": {"name": "box", "batch": 1.5, "lengths": ["traffic"]}}', '{"box": {"name": "box"}}',
    '{"box": {"name": "other", "lengths": ["traffic"]}}',
])
def test_a_damaged_devices_json_is_refused(text: str, copy_run) -> None:
    run = copy_run()
    replace(run / "devices.json", text)
    assert "devices.json" in refused(["search", "--run", str(run), "--device", "box", "--budget-ms", "1", "--n", "2"])


PROFILE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=5),
                           st.lists(st.one_of(st.integers(-3, 300), st.text(max_size=4)), max_size=3))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["runtime", "provider", "threads", "batch", "lengths", "traffic_calls", "precision",
                              "warmup", "repeats", "description", "kit"]), value=PROFILE_VALUES)
def test_generated_profiles_are_valid_or_a_config_error(field: str, value: Any) -> None:
    try:
        p = DeviceProfile("box", **{field: value})
    except ConfigError:
        return
    for name in ("batch", "warmup", "repeats", "traffic_calls"):
        assert type(getattr(p, name)) is int
    assert p.threads is None or type(p.threads) is int
    assert all(x == "traffic" or type(x) is int or re.fullmatch(r"p\d{1,2}", str(x)) for x in p.lengths)


# --- 5. Run metadata --------------------------------------------------------------------------

SPEC = {"task": "rt", "model": "minilm", "seed": 0, "max_train": 64, "max_eval": 48}


def _run_json(**change: Any) -> str:
    return json.dumps({**SPEC, "train": {"batch_size": 32, "max_length": 64}, **change})


def _train(**change: Any) -> str:
    return json.dumps({**SPEC, "train": {"batch_size": 32, "max_length": 64, **change}})


METADATA = {
    "run.json not JSON": ("run.json", "{oops"),
    "run.json a list": ("run.json", "[]"),
    "run.json a string": ("run.json", '"x"'),
    "run.json no task": ("run.json", json.dumps({"model": "minilm", "train": {}})),
    "run.json task 3": ("run.json", _run_json(task=3)),
    "run.json model null": ("run.json", _run_json(model=None)),
    "run.json seed x": ("run.json", _run_json(seed="x")),
    "run.json seed -1": ("run.json", _run_json(seed=-1)),
    "run.json max_train 0": ("run.json", _run_json(max_train=0)),
    "run.json unknown field": ("run.json", _run_json(colour="red")),
    "run.json train a list": ("run.json", _run_json(train=[1])),
    "run.json batch_size 1.5": ("run.json", _train(batch_size=1.5)),
    "run.json batch_size a string": ("run.json", _train(batch_size="32")),
    "run.json max_length 100000": ("run.json", _train(max_length=100000)),
    "run.json teacher 5": ("run.json", _train(teacher=5)),
    "run.json teacher lr NaN": ("run.json", _train(teacher={"epochs": 1.0, "lr": float("nan")})),
    "run.json teacher epochs x": ("run.json", _train(teacher={"epochs": "x", "lr": 1e-4})),
    "run.json teacher unknown": ("run.json", _train(teacher={"epochs": 1.0, "momentum": 0.9})),
    "run.json hidden_weight null": ("run.json", _train(hidden_weight=None)),
    "run.json temperature 0": ("run.json", _train(temperature=0)),
    "run.json length_drop yes": ("run.json", _train(length_drop="yes")),
    "run.json unknown training field": ("run.json", _train(dropout=0.1)),
    "state.json not JSON": ("state.json", "{"),
    "state.json a list": ("state.json", "[1]"),
    "state.json done a list": ("state.json", '{"done": [1]}'),
    "state.json unfinished": ("state.json", '{"done": {"teacher": {}}}'),
    "tokenizer missing": ("tokenizer", None),
    "tokenizer damaged": ("tokenizer/tokenizer.json", "{"),
    "search space not JSON": ("search_space.json", "{"),
    "search space a list": ("search_space.json", "[]"),
    "search space incomplete": ("search_space.json", '{"num_layers": 3}'),
    "search space of another model": ("search_space.json", json.dumps(SearchSpace.for_model(6, 4, 64).to_dict())),
    "supernet shape damaged": ("supernet/shape.json", "{"),
    "supernet weights damaged": ("supernet/model.safetensors", b"garbage"),
    "supernet missing": ("supernet", None),
}


@pytest.mark.parametrize("name", METADATA)
def test_damaged_run_metadata_is_refused(name: str, copy_run) -> None:
    run = copy_run()
    rel, text = METADATA[name]
    table = (run / "eval.csv").read_text()
    replace(run / rel, text)
    line = refused(["eval", "--run", str(run)])
    assert ("no trained supernet" if name == "state.json unfinished" else Path(rel).parts[0]) in line
    assert (run / "eval.csv").read_text() == table


def test_a_damaged_data_summary_is_refused_before_eval_save_writes(copy_run, tmp_path: Path) -> None:
    run = copy_run()
    replace(run / "data_summary.json", "{")
    assert "data_summary.json" in refused(["eval", "--run", str(run), "--save", str(tmp_path / "t_eval_x.csv")])
    assert not (tmp_path / "t_train_x.json").exists()


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["task", "model", "seed", "max_train", "max_eval", "train.batch_size",
                              "train.max_length", "train.n_random", "train.temperature", "train.hidden_weight",
                              "train.length_drop", "train.teacher.epochs", "train.supernet.lr",
                              "train.teacher.warmup", "train.checkpoint_every"]), value=JSONISH)
def test_generated_run_settings_are_valid_or_a_config_error(field: str, value: Any) -> None:
    d = json.loads(_train(teacher={"epochs": 1.0, "lr": 1e-4}, supernet={"epochs": 1.0, "lr": 5e-5}))
    *path, last = field.split(".")
    target = d
    for k in path:
        target = target[k]
    target[last] = value
    try:
        spec = RunSpec.from_dict(d)
    except ConfigError:
        return
    t = spec.train
    assert all(math.isfinite(x) for x in (t.teacher.epochs, t.teacher.lr, t.supernet.lr, t.temperature,
                                           t.hidden_weight, t.teacher.warmup))
    assert type(t.batch_size) is int and type(t.max_length) is int and isinstance(spec.task, str)


# --- 6. Measurements, kits, predictors, caches ------------------------------------------------

def _csv_with(path: Path, line: int, column: str, value: str) -> str:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows[line - 1][rows[0].index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


SEVEN = json.dumps({k: [v[0]] * 7 for k, v in FULL.items()})
H40 = json.dumps({**FULL, "heads": [40, 4, 4]})
CELLS = [
    ("lat_median_ms", "fast"), ("lat_median_ms", "-1"), ("lat_median_ms", "inf"), ("lat_median_ms", "nan"),
    ("lat_p90_ms", "slow"), ("arch_json", '{"heads": ["abc"]}'), ("arch_json", "{"), ("length", "x"),
    ("length", "0"), ("batch", "1.5"), ("kind", "weird"), ("regime", "weird"),
]


@pytest.mark.parametrize("column, value", CELLS)
def test_a_bad_measurement_line_is_refused_by_fit(column: str, value: str, copy_run) -> None:
    run = copy_run()
    log, predictor = run / "latency" / "cpu.csv", run / "latency" / "cpu.predictor.json"
    before = predictor.read_text()
    replace(log, _csv_with(log, 10, column, value))
    assert f"line 10: {column}" in refused(["fit", "--run", str(run), "--device", "cpu"])
    assert predictor.read_text() == before


@pytest.mark.parametrize("damage", ["a malformed middle line", "extra fields", "another file's columns"])
def test_an_unreadable_measurement_file_is_refused(damage: str, copy_run) -> None:
    run = copy_run()
    log = run / "latency" / "cpu.csv"
    lines = log.read_text().splitlines(keepends=True)
    text = {"a malformed middle line": "".join(lines[:9] + ['a,"b,c\n'] + lines[9:]),
            "extra fields": "".join(lines[:9] + [lines[9].rstrip("\n") + ",x,y\n"] + lines[10:]),
            "another file's columns": "x,y\n1,2\n"}[damage]
    replace(log, text)
    assert "cpu.csv" in refused(["fit", "--run", str(run), "--device", "cpu"])


KIT_CELLS = [
    ("lat_median_ms", "fast"), ("lat_median_ms", "-3"), ("lat_median_ms", "nan"), ("arch_json", SEVEN),
    ("arch_json", H40), ("length", "0"), ("kind", "bogus"), ("device", "phone"),
]


@pytest.mark.parametrize("column, value", KIT_CELLS)
def test_a_bad_kit_csv_is_not_imported(column: str, value: str, copy_run, tmp_path: Path) -> None:
    run = copy_run()
    log = run / "latency" / "cpu.csv"
    before = log.read_text()
    kit = tmp_path / "results.csv"
    kit.write_text(_csv_with(log, 6, column, value))
    refused(["measure", "--run", str(run), "--device", "cpu", "--import", str(kit)])
    assert log.read_text() == before


@pytest.mark.parametrize("text", [None, 'a,"b\n', "device,kind\ncpu,sample\n",
                                  "device,kind,arch_key,arch_json,batch,length,lat_median_ms,error\n"])
def test_an_unreadable_kit_csv_is_not_imported(text: str | None, copy_run, tmp_path: Path) -> None:
    run = copy_run()
    kit = tmp_path / "results.csv"
    if text is not None:
        kit.write_text(text)
    assert "results.csv" in refused(["measure", "--run", str(run), "--device", "cpu", "--import", str(kit)])


def _state(**change: Any) -> Any:
    def apply(d: dict[str, Any]) -> None:
        d["state"].update(change)

    return apply


def _coef(value: Any) -> Any:
    def apply(d: dict[str, Any]) -> None:
        d["state"]["coef"][next(iter(d["state"]["coef"]))] = value

    return apply


PREDICTORS = {
    "a negative safety margin": _state(margin_log=-2.0),
    "a null margin": _state(margin_log=None),
    "a margin as text": _state(margin_log="0.1"),
    "a negative spread": _state(sigma_log=-1),
    "a null coefficient": _coef(None),
    "a coefficient as text": _coef("x"),
    "unknown features": _state(feature_names=["zz"]),
    "another model's shape": lambda d: d.__setitem__("shape", {**d["shape"], "hidden_size": 64}),
    "another device": lambda d: d.__setitem__("device", "cpu-1t"),
    "an unknown predictor": lambda d: d.__setitem__("predictor", "nope"),
    "another file format": lambda d: d.__setitem__("format_version", 1),
}


def _save_analytic(run: Path, path: Path) -> None:
    """The linear predictor fitted on the run's cpu traffic rows, saved at ``path``."""
    from latency.measure import MeasurementLog
    from latency.predictor import AnalyticPredictor, save_predictor
    from supernet.checkpoint import read_shape

    rows = MeasurementLog(run / "latency" / "cpu.csv").read()
    rows = rows[(rows["kind"] == "sample") & (rows["error"] == "") & (rows["regime"] == "traffic")]
    shape = read_shape(run / "supernet")
    save_predictor(AnalyticPredictor(shape).fit(rows), path, device="cpu", shape=shape, report={})


@pytest.mark.parametrize("name", PREDICTORS)
def test_a_tampered_predictor_is_refused(name: str, copy_run) -> None:
    run = copy_run()
    f = run / "latency" / "cpu.predictor.json"
    d = json.loads(f.read_text())
    if d["predictor"] != "analytic":  # the job's noise chose the trees: tamper with the linear model's file
        _save_analytic(run, f)
        d = json.loads(f.read_text())
    PREDICTORS[name](d)
    replace(f, json.dumps(d))
    assert "cpu.predictor.json" in refused(["search", "--run", str(run), "--device", "cpu", "--budget-ms", "1",
                                            "--n", "2"])
    assert not (run / "search" / "cpu_1ms_evolution.csv").exists()


def test_attention_distillation_without_the_rewired_teacher_is_refused_before_searching(copy_run) -> None:
    import shutil

    run = copy_run()
    shutil.rmtree(run / "rewired", ignore_errors=True)
    err = refused(["export", "--run", str(run), "--device", "cpu", "--budget-ms", "100", "--n", "2",
                   "--finetune-epochs", "1", "--finetune-attention", "1", "--out", str(run / "x")])
    assert "rewired" in err and not (run / "x").exists()
    assert not (run / "search" / "cpu_100ms_evolution.csv").exists()  # refused before the search


@pytest.mark.parametrize("text", ["{", "[]"])
def test_an_unreadable_predictor_is_refused(text: str, copy_run) -> None:
    run = copy_run()
    replace(run / "latency" / "cpu.predictor.json", text)
    refused(["search", "--run", str(run), "--device", "cpu", "--budget-ms", "1", "--n", "2"])


def test_damaged_caches_and_histories_are_refused(copy_run) -> None:
    run = copy_run()
    cache = run / "search" / "accuracy.csv"
    good = cache.read_text()
    search = ["search", "--run", str(run), "--device", "cpu", "--budget-ms", "1", "--n", "2"]
    replace(cache, 'arch_key,"split\nx')
    assert "accuracy.csv" in refused(search)
    replace(cache, good.replace(",0.", ",zz", 1))
    assert "accuracy.csv line" in refused(search)
    replace(cache, good)
    (history,) = [p for p in (run / "search").glob("cpu_*_evolution.csv")][:1]
    compare = ["compare", "--run", str(run), "--device", "cpu", "--no-remeasure", "--out", str(run / "cmp")]
    text = history.read_text()
    replace(history, 'a,"b\nc')
    assert history.name in refused(compare)
    replace(history, text.replace('"heads"', '"hexds"', 1))
    assert f"{history.name} line 2" in refused(compare)


@settings(max_examples=300, deadline=None)
@given(column=st.sampled_from(["lat_median_ms", "lat_p90_ms", "batch", "length", "kind", "regime", "arch_json"]),
       value=st.one_of(st.text(max_size=6), st.floats().map(repr), st.integers(-5, 5).map(str)))
def test_generated_measurement_cells_are_read_as_numbers_or_refused(column: str, value: str) -> None:
    """Any text in any checked cell of a measurement file: it reads as a valid row, or the
    reader refuses the file naming the line (never another exception, never a NaN latency)."""
    row = {c: "" for c in COLUMNS} | {"device": "d", "kind": "sample", "regime": "traffic", "batch": "1",
                                      "length": "8", "lat_median_ms": "1.5", "arch_json": json.dumps(FULL)}
    row[column] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerow(row)
        try:
            frame = MeasurementLog(path).read()
        except MeasurementError:
            return
    if len(frame):  # a value holding a line break can end the row early: then it is torn, not read
        assert math.isfinite(frame.at[0, "lat_median_ms"]) and frame.at[0, "lat_median_ms"] > 0
        assert frame.at[0, "batch"] >= 1 and frame.at[0, "length"] >= 1


# --- 7. Training: refused before the run folder is made ---------------------------------------

def test_a_data_file_too_small_for_a_dev_split_leaves_no_run(tiny_hf_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    data.write_text("text,label\nhello,0\nworld,1\nfoo,0\nbar,1\n")
    out = tmp_path / "run"
    line = refused(["train", "--out", str(out), "--model", str(tiny_hf_dir), "--task", str(data), "--quiet"])
    assert "dev 0" in line and "--resume" not in line
    assert not out.exists()


def test_a_max_length_beyond_the_models_positions_leaves_no_run(tiny_hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = refused(["train", "--out", str(out), "--model", str(tiny_hf_dir), "--max-length", "600", "--quiet"])
    assert "128 positions" in line and "--max-length 128" in line
    assert not out.exists()


def test_a_folder_with_other_files_is_not_exported_into(job: Path, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine")
    (tmp_path / "config.json").write_text("{}")
    line = refused(["export", "--run", str(job), "--device", "cpu", "--out", str(tmp_path), "--budget-ms", "5",
                    "--quiet"])
    assert "(README.md, config.json)" in line and "no earlier export" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json"]
    assert (tmp_path / "README.md").read_text() == "mine"


def test_a_folder_with_other_files_is_not_trained_into(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert "no run" in refused(["train", "--out", str(tmp_path), "--quiet"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("devices, says", [
    ("nope", "unknown device"), ("", "device names"), ("cpu,", "device names"),
    pytest.param("cuda", "cuda", marks=pytest.mark.skipif(
        "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="a GPU is here")),
])
def test_run_checks_its_devices_before_training(devices: str, says: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert says in refused(["run", "--out", str(out), "--device", devices, "--quiet"])
    assert not out.exists()


@pytest.mark.parametrize("argv, says", [
    (["run", "--teacher-epochs", "3"], "--teacher-epochs 3.0 (stored: 1.0)"),
    (["run", "--task", "r8"], "--task r8 (stored: rt)"),
    (["run", "--no-bucket"], "--no-bucket given"),
    (["train", "--resume", "--batch-size", "8"], "--batch-size 8 (stored: 32)"),
])
def test_other_training_options_on_an_existing_run_are_refused(argv: list[str], says: str, copy_run) -> None:
    run = copy_run()
    line = refused([*argv, "--out", str(run), "--quiet"])
    assert says in line and "stored settings" in line


def _resumable(run: Path) -> Path:
    """``run`` with its supernet stage unfinished and a checkpoint to resume from."""
    state = json.loads((run / "state.json").read_text())
    del state["done"]["supernet"]
    replace(run / "state.json", json.dumps(state))
    ckpt = run / "supernet" / "checkpoint"
    ckpt.mkdir()
    for f in ("model.safetensors", "shape.json"):
        shutil.copy(run / "supernet" / f, ckpt / f)
    return ckpt / "trainer_state.pt"


@pytest.mark.parametrize("state", ["garbage", "wrong groups", "a list", "no step"])
def test_a_corrupt_trainer_state_is_one_clear_error_on_resume(state: str, copy_run) -> None:
    run = copy_run()
    f = _resumable(run)
    if state == "garbage":
        f.write_bytes(b"not a zip file")
    else:
        torch.save({"wrong groups": {"step": 1, "optimizer": {"state": {}, "param_groups": [1]}, "scheduler": {}},
                    "a list": [1, 2], "no step": {"optimizer": {}, "scheduler": {}}}[state], f)
    line = refused(["train", "--out", str(run), "--resume", "--quiet"])
    assert "cannot resume" in line and "Delete that folder" in line and "weights_only" not in line


@pytest.mark.parametrize("case, says", [
    ("no folder", "does not exist"), ("a file", "is a file"), ("no model.onnx", "has no model.onnx"),
    ("no text", "no text to classify"), ("an empty text", "text 1 is empty"), ("a blank file", "no text to classify"),
    ("no such file", "does not exist"), ("a corrupt graph", "cannot be opened by ONNX Runtime"),
])
def test_predict_refuses_what_it_cannot_classify(case: str, says: str, tmp_path: Path) -> None:
    folder, texts = tmp_path / "export", ["a fine film"]
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    extra: list[str] = []
    if case == "no folder":
        folder = tmp_path / "none"
    elif case == "a file":
        folder = folder / "model.onnx"
    elif case == "no model.onnx":
        (folder / "model.onnx").unlink()
    elif case == "no text":
        texts = []
    elif case == "an empty text":
        texts = ["  "]
    elif case in ("a blank file", "no such file"):
        texts, extra = [], ["--file", str(tmp_path / "texts.txt")]
        if case == "a blank file":
            (tmp_path / "texts.txt").write_text("\n  \n")
    assert says in refused(["predict", "--model", str(folder), *texts, *extra])


# --- Not refusals, but part of the same promise -------------------------------------------------

def test_the_main_job_exports_for_its_first_device() -> None:
    assert JobConfig(devices=("cpu-1t",)).exported_on == "cpu-1t"
    assert JobConfig().exported_on == "cpu"
    with pytest.raises(ConfigError, match="must be one of the devices"):
        JobConfig(devices=("cpu-1t",), export_device="cpu")


@pytest.mark.parametrize("command, resume", [("train", True), ("run", False), ("measure", False), ("fit", False),
                                             ("export", False)])
def test_ctrl_c_advises_resume_only_where_it_exists(command: str, resume: bool, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import nas.cli

    def interrupted(a: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.cli, "COMMANDS", tuple((r, interrupted if h.__name__ == f"cmd_{command}" else h)
                                                   for r, h in nas.cli.COMMANDS))
    argv = {"train": ["train", "--out", "x"], "run": ["run", "--out", "x"], "measure": ["measure", "--run", "r", "--device", "cpu"],
            "fit": ["fit", "--run", "r", "--device", "cpu"],
            "export": ["export", "--run", "r", "--device", "cpu", "--budget-ms", "1", "--out", "o"]}[command]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hwnas {command}: interrupted")
    assert ("--resume" in err) == resume

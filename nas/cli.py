"""The ``hwnas`` command line: the only module that parses arguments.

Every subcommand has ``--help``. Errors a user can cause (bad names, files, settings) are
printed as one line, without a traceback, and exit with status 2.

Each command is a pair of functions side by side: ``register_X`` adds the subcommand and its
options, ``cmd_X`` runs it on the parsed arguments. ``COMMANDS`` lists the pairs in the order
``hwnas --help`` shows them. The handlers only turn arguments into library calls and print
what came back; the work is in ``supernet``, ``latency`` and ``nas``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supernet.errors import ConfigError, HwnasError  # light: no heavy imports before --help
from supernet.runfolder import RunFolder  # paths only

if TYPE_CHECKING:
    from latency.devices import DeviceProfile
    from latency.target import Target
    from supernet.space import SubnetConfig
    from supernet.train import StageConfig
    from supernet.workflow import LoadedRun, RunSpec

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAIN_RUN = "runs/main"
EVAL_COLS = ("name", "arch", "flops_ratio", "params", "acc_dev", "acc_test", "f1_test")
EXIT_MAX_LOSS = 1.0  # points of dev accuracy a one-sub-network early-exit policy may lose without a budget


# --- Checking values where they enter: argparse types ---------------------------------------
# Each returns the parsed value or raises ArgumentTypeError, which argparse prints as one
# line naming the option ("argument --n: must be an integer >= 1, got '0'") with exit status 2.

def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _number(low: float = -math.inf, *, above: bool = False) -> Callable[[str], float]:
    """A finite float (NaN and infinities refused) >= ``low`` (> ``low`` with ``above``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (above and value == low):
            bound = "" if low == -math.inf else f" {'>' if above else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _share(text: str) -> float:
    """A finite number in [0, 1]."""
    value = _number(0.0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share of the budget in [0, 1], got {text!r}")
    return value


COUNT = _int_at_least(1)  # how many of something: configurations, evaluations, workers
COUNT0 = _int_at_least(0)  # where 0 means none (or all, where the help says so)
SEED = _int_at_least(0, 2**32 - 1)  # numpy's and torch's generators take non-negative seeds
EPOCHS = _number(0.0)
STAGE_EPOCHS = _number(0.0, above=True)  # a training stage takes at least one step
RATE = _number(0.0, above=True)  # learning rates
WEIGHT = _number(0.0)


def _writable_folder(path: Path) -> str | None:
    """Why a folder cannot be created or written at ``path`` (None: it can)."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    parent = path
    while not parent.exists():  # the nearest existing folder is where it would be created
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file: no folder can be created under it"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def out_folder(text: str) -> str:
    """An output folder: new, or an existing folder; one that can be written. Checked when the
    arguments are parsed, so a long command fails before its work, not when it writes."""
    path = Path(text).expanduser()  # "~/x" quoted or after "=": the shell did not expand it
    why = _writable_folder(path)
    if why is not None:
        raise argparse.ArgumentTypeError(f"{why}: give a folder path that can be created or written")
    return str(path)


def out_file(text: str) -> str:
    """An output file: not a folder, in a folder that exists or can be created."""
    p = Path(text).expanduser()
    why = f"{p} is a folder, not a file" if p.is_dir() else _writable_folder(p.parent)
    if why is not None:
        raise argparse.ArgumentTypeError(f"{why}: give a file path that can be written")
    return str(p)


def csv_out_file(text: str) -> str:
    """An output file named ``*.csv`` (a JSON record is written beside it)."""
    if Path(text).suffix.lower() != ".csv":
        raise argparse.ArgumentTypeError(f"{text!r} does not end in .csv: give a CSV file name (say table.csv)")
    return out_file(text)


# --- Options shared by several commands, and reading their values ----------------------------

def _add_train_args(p: argparse.ArgumentParser, *, quick: bool) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--task", default="rt",
                   help="rt (default, bundled Rotten Tomatoes), 20ng, r8, glue:<task> (online), or a .csv/.tsv/.jsonl file")
    g.add_argument("--model", default="minilm",
                   help="pretrained encoder (BERT, RoBERTa, XLM-R, DistilBERT or ELECTRA): 'minilm' (bundled "
                   "all-MiniLM-L6-v2), a local folder, or a hub name when online")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--max-train", type=COUNT, default=3000 if quick else None,
                   help="use a seeded subset of the training split (default: %(default)s)")
    g.add_argument("--max-eval", type=COUNT, default=None, help="use a seeded subset of dev and test")
    g.add_argument("--max-length", type=_int_at_least(2), default=None,
                   help="tokens per input, at most the model's positions (default: the task's)")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=COUNT, default=32)
    t.add_argument("--teacher-epochs", type=STAGE_EPOCHS, default=1.0 if quick else 2.0,
                   help="epochs of the teacher's fine-tuning, above 0 (fractions allowed; default %(default)s)")
    t.add_argument("--teacher-lr", type=RATE, default=1e-4)
    t.add_argument("--supernet-epochs", type=STAGE_EPOCHS, default=1.0 if quick else 2.0,
                   help="epochs of the supernet's training, above 0 (fractions allowed; default %(default)s)")
    t.add_argument("--supernet-lr", type=RATE, default=5e-5)
    t.add_argument("--n-random", type=COUNT0, default=2, help="random sub-networks per step (sandwich rule)")
    t.add_argument("--hidden-weight", type=WEIGHT, default=0.0, help="weight of final-[CLS] hidden-state distillation")
    t.add_argument("--layer-weight", type=WEIGHT, default=0.0,
                   help="weight of layer-wise hidden-state distillation (each kept layer learns the teacher layer it "
                   "came from, DynaBERT style; default 0: off)")
    t.add_argument("--unlabeled", type=COUNT0, default=0,
                   help="add up to N in-domain texts without labels to the supernet's and the fine-tunings' "
                   "distillation data (rt: sentences of the plot synopses of movies outside dev and test, 5,533 at "
                   "seed 0; the other tasks have none and refuse N above 0; default 0: none)")
    t.add_argument("--augment", type=COUNT0, default=0, metavar="COPIES",
                   help="add this many word-replaced copies of each train example to the supernet stage's "
                   "distillation data (TinyBERT / DynaBERT augmentation: each whole word replaced with probability "
                   "0.4 by one of its 15 nearest words in the pretrained model's embeddings; default 0: none)")
    t.add_argument("--schedule", choices=("sandwich", "progressive"), default="sandwich",
                   help="sandwich (default): sample the whole space from the first step; progressive: Once-for-All's "
                   "progressive shrinking (depth only for the first third of the steps, then width too, then token "
                   "retention)")
    t.add_argument("--distill-from", choices=("teacher", "largest"), default="teacher",
                   help="what the smaller sub-networks distil from: the teacher (default) or the largest sub-network "
                   "of the same step (in-place distillation)")
    t.add_argument("--no-length-drop", action="store_true", help="train without random token retention")
    t.add_argument("--no-bucket", action="store_true",
                   help="fully random batches (default: shuffled batches of similar lengths, less padding)")
    t.add_argument("--checkpoint-every", type=COUNT, default=100, help="steps between checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # What each option would be left at, to tell which ones a command line gives (``_stored_spec``).
    p.set_defaults(train_defaults={x.dest: x.default for x in [*g._group_actions, *t._group_actions]})


# Where each training option lives in a run's stored settings (run.json).
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "task": ("task",), "model": ("model",), "seed": ("seed",), "max_train": ("max_train",),
    "max_eval": ("max_eval",), "max_length": ("train", "max_length"), "batch_size": ("train", "batch_size"),
    "teacher_epochs": ("train", "teacher", "epochs"), "teacher_lr": ("train", "teacher", "lr"),
    "supernet_epochs": ("train", "supernet", "epochs"), "supernet_lr": ("train", "supernet", "lr"),
    "n_random": ("train", "n_random"), "hidden_weight": ("train", "hidden_weight"),
    "layer_weight": ("train", "layer_weight"), "distill_from": ("train", "distill_from"),
    "unlabeled": ("train", "unlabeled"), "augment": ("train", "augment"), "schedule": ("train", "schedule"),
    "no_length_drop": ("train", "length_drop"), "no_bucket": ("train", "bucket_by_length"),
    "checkpoint_every": ("train", "checkpoint_every"),
}


def _stored_spec(a: argparse.Namespace, out: Path) -> RunSpec:
    """The settings stored in the run folder ``out``. A training option given on the command
    line that differs from them is refused: a run goes on with the settings it began with."""
    from supernet.workflow import read_spec

    stored = read_spec(out)
    given = [d for d, default in a.train_defaults.items() if getattr(a, d) != default]
    if not given:
        return stored
    asked, have = _spec(a).to_dict(), stored.to_dict()
    clashes = []
    for dest in given:
        new, old = asked, have
        for k in SPEC_KEYS[dest]:
            new, old = new[k], old[k]
        if new != old:
            flag = "--" + dest.replace("_", "-")
            clashes.append(f"{flag} {'given' if isinstance(new, bool) else new} (stored: "
                           f"{'not given' if isinstance(old, bool) else old})")
    if clashes:
        raise ConfigError(f"{out} holds a run trained with other settings: {'; '.join(clashes)}. A run goes on "
                          "with its stored settings: drop those options, or choose another --out for new ones")
    return stored


def _spec(a: argparse.Namespace) -> RunSpec:
    """The run's settings from the options of ``_add_train_args``."""
    from supernet.tasks import task_max_length
    from supernet.train import StageConfig, TrainConfig
    from supernet.workflow import RunSpec

    if a.max_length is None:
        a.max_length = task_max_length(a.task)
    train = TrainConfig(
        seed=a.seed,
        batch_size=a.batch_size,
        max_length=a.max_length,
        teacher=StageConfig(epochs=a.teacher_epochs, lr=a.teacher_lr),
        supernet=StageConfig(epochs=a.supernet_epochs, lr=a.supernet_lr),
        n_random=a.n_random,
        hidden_weight=a.hidden_weight,
        layer_weight=a.layer_weight,
        distill_from=a.distill_from,
        unlabeled=a.unlabeled,
        augment=a.augment,
        schedule=a.schedule,
        length_drop=not a.no_length_drop,
        bucket_by_length=not a.no_bucket,
        checkpoint_every=a.checkpoint_every,
    ).validate()
    return RunSpec(task=a.task, model=a.model, seed=a.seed, max_train=a.max_train, max_eval=a.max_eval, train=train)


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search-precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="precision of the searches' dev-subset scoring: auto (default) is bf16 autocast where the CPU "
                   "has bf16 instructions (AMX / AVX512-BF16) and a one-second check finds it at least 1.15x faster than "
                   "fp32 (1.87x on an AMX machine, 0.64x on an AVX512-BF16 one without AMX: scripts/precision_check.py), "
                   "else fp32, decided once per run and CPU (kept in the run's search/precision.json); whole-dev and test "
                   "scores are always fp32")


def _train_device_arg(p: argparse.ArgumentParser, what: str, note: str = "") -> None:
    from supernet.parallel import TRAIN_DEVICES  # light: torch is imported where it is used

    p.add_argument("--train-device", choices=TRAIN_DEVICES, default="auto",
                   help=f"where {what}: auto (default) is cuda when torch sees a GPU (torch.cuda.is_available()), "
                   f"else cpu; cuda on a machine without one is refused{note}")


def _finetune_args(p: argparse.ArgumentParser, epochs: float, what: str, candidates: int = 3) -> None:
    p.add_argument("--finetune-epochs", type=EPOCHS, default=epochs,
                   help=f"epochs of distillation from the teacher into {what} (0: none; default %(default)s)")
    p.add_argument("--finetune-lr", type=RATE, default=2e-4, help="fine-tuning learning rate (default %(default)s)")
    p.set_defaults(finetune_candidates_default=candidates)  # what _finetune_stage compares with
    p.add_argument("--finetune-candidates", type=COUNT, default=candidates,
                   help="sub-networks fine-tuned under the budget, the best on dev (--finetune-choose) is "
                   "exported: the search's pick, the widest uniform sub-network of the deepest depth that fits (by the "
                   "predictor's upper bound, or timed on the device: uniform sub-networks predicted within 1.25x of the "
                   "budget are measured, so the predictor's margin does not leave deeper ones out), then the best of each of the deepest other depths, since deep, narrow sub-networks recover the most "
                   "(default %(default)s; 1: the search's pick only)")
    p.add_argument("--finetune-choose", choices=("dev-score", "dev-loss"), default="dev-score",
                   help="how the fine-tuned candidates are ranked, the best exported: dev-score (default), the task's "
                   "metric on dev; dev-loss, the fine-tuning's own loss on dev (distillation from the teacher's "
                   "logits plus cross-entropy on the labels), which every dev example moves a little where the "
                   "score moves by whole examples; both as deployed (an int8 candidate's quantized graph)")
    p.add_argument("--finetune-best-epoch", action="store_true",
                   help="after each fine-tuning epoch, score the same loss (distillation from the teacher plus the "
                   "labels) on the dev split and keep the epoch where it is lowest, not the last: --finetune-epochs is "
                   "then a maximum (early stopping on dev)")
    p.add_argument("--finetune-attention", type=WEIGHT, default=0.0, metavar="WEIGHT",
                   help="weight of attention distillation when fine-tuning (TinyBERT: each kept head's attention "
                   "scores learn the teacher's same head in the layer it came from; a teacher forward per step; "
                   "default %(default)s: off)")


def _distill_text_args(p: argparse.ArgumentParser) -> None:
    """What a fine-tuning distils on besides the train split (export, bench)."""
    p.add_argument("--finetune-unlabeled", type=COUNT0, default=None,
                   help="distil on the train split plus this many of the task's unlabeled texts when fine-tuning "
                   "(a seeded subset; for rt the plot synopses of movies outside dev and test, 5,533 sentences; "
                   "default: as the run was trained, hwnas train --unlabeled)")
    p.add_argument("--finetune-augment", type=COUNT0, default=0, metavar="COPIES",
                   help="also distil on this many word-replaced copies of each train example when fine-tuning "
                   "(TinyBERT / DynaBERT augmentation: each whole word replaced with probability 0.4 by one of its "
                   "15 nearest words in the model's embeddings; default 0)")


def _finetune_stage(a: argparse.Namespace) -> StageConfig | None:
    """The fine-tuning schedule from --finetune-epochs / --finetune-lr; None for 0 epochs, where
    a fine-tuning option given is refused (it would change nothing)."""
    from supernet.train import StageConfig

    if a.finetune_epochs > 0:
        return StageConfig(epochs=a.finetune_epochs, lr=a.finetune_lr)
    defaults = {"lr": 2e-4, "candidates": a.finetune_candidates_default, "choose": "dev-score", "best_epoch": False,
                "attention": 0.0, "unlabeled": None, "augment": 0}
    given = [f"--finetune-{k.replace('_', '-')}" for k, v in defaults.items()
             if getattr(a, f"finetune_{k}", v) != v]
    if given:
        raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a fine-tuning: give "
                          "--finetune-epochs above 0 too, or leave them out")
    return None


def _search_args(q: argparse.ArgumentParser) -> None:
    """The options ``search`` and ``export`` share."""
    q.add_argument("--run", required=True, help="run folder with a trained supernet and fitted predictors")
    q.add_argument("--devices", help="TOML file with [devices.NAME] profiles")
    _latency_args(q)
    q.add_argument("--method", default="evolution", help="evolution (default), random, tpe, nsga2")
    _screen_arg(q)
    q.add_argument("--n", type=COUNT, default=150, help="accuracy evaluations (default %(default)s)")
    q.add_argument("--dev-subset", type=COUNT0, default=500,
                   help="dev examples scored while searching (0: all); finalists use the whole dev split")
    _precision_arg(q)
    q.add_argument("--seed", type=SEED, default=0)


def _screen_arg(q: argparse.ArgumentParser) -> None:
    q.add_argument("--screen", type=COUNT, help="the evolution's children drawn per evaluation; it evaluates the one "
                   "a ridge surrogate fitted on the evaluated ranks best (default 4; 1: unscreened, HAT's evolution; "
                   "README, \"Screening children\")")


def _latency_args(q: argparse.ArgumentParser) -> None:
    """What a latency budget applies to (search, export, compare, bench)."""
    q.add_argument("--budget-stat", choices=("p50", "p90", "p99", "mean"), default="p50",
                   help="the statistic of per-call latency a budget applies to (default %(default)s; p90 / p99 for a "
                   "tail-latency promise); `hwnas fit` fits a predictor for each")
    q.add_argument("--length", help="fixed-length mode, for users who pad every call to one shape: time one input "
                   "of this length (an integer or pNN of the task), repeated; the device must have been measured on "
                   "fixed lengths (a profile with lengths = [...]), and a length it was not measured at is predicted "
                   "from those it was (measure it there for the best predictions). Default: the device's real traffic (dev inputs at their own "
                   "lengths, served in turn), or its first fixed length for a device measured on fixed lengths only")


def _target(run: LoadedRun, device: str, devices_file: str | None, length: str | None, stat: str = "p50") -> Target:
    """``device`` (a built-in, stored or --devices profile) on its real traffic, or at --length."""
    from latency.target import Target, resolve_length
    from latency.workflow import resolve_device, store_devices

    if devices_file is not None:
        store_devices(run.folder, devices_file)
    profile = resolve_device(run.folder, device)
    return Target.of(run, profile, None if length is None else resolve_length(run, length), stat=stat)


def _floats(text: str, flag: str, example: str = "5,8,12") -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"{flag} takes numbers separated by commas, e.g. {example}; got {text!r}") from e
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{flag} takes positive finite numbers, e.g. {example}; got {text!r}")
    return values


def _budgets(text: str) -> list[float]:
    return _floats(text, "--budget-ms")


def _fractions(text: str) -> tuple[float, ...]:
    values = _floats(text, "--budgets", "0.2,0.5,0.9")
    if any(v > 1 for v in values):
        raise ConfigError(f"--budgets takes shares of the full model's latency in (0, 1], e.g. 0.2,0.5,0.9; got {text!r}")
    return tuple(values)


def _read_json(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} does not exist: give a JSON file with heads, ffn, keep, retention")
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not valid JSON: {e}") from e


def _print_table(frame, cols: Sequence[str]) -> None:  # noqa: ANN001
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        print(frame[list(cols)].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


# --- The commands, in the order of `hwnas --help` --------------------------------------------

def register_run(sub: Subparsers) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="the main job: train, measure, fit, search, export, compare fronts",
                       description="On the bundled defaults: train a small supernet (Rotten Tomatoes, "
                       "all-MiniLM-L6-v2), measure sub-networks on cpu and cpu-1t, fit latency predictors, search "
                       "three budgets per device, export (and fine-tune) the best sub-network for one budget, draw the fronts, and "
                       f"print a summary. Resumes an interrupted run in --out (default {MAIN_RUN}).")
    r.add_argument("--out", type=out_folder, default=None, help=f"run folder (default {MAIN_RUN})")
    r.add_argument("--device", default="cpu,cpu-1t",
                   help="devices to measure and search for; the first is exported for (default %(default)s)")
    r.add_argument("--n-measure", type=COUNT, default=40, help="configurations measured per device")
    r.add_argument("--n-search", type=COUNT, default=50, help="accuracy evaluations per search")
    _finetune_args(r, 1.0, "the exported sub-network", candidates=2)
    _train_device_arg(r, "the teacher, the supernet and the export's fine-tuning train")
    _add_train_args(r, quick=True)
    return r


def cmd_run(a: argparse.Namespace) -> int:
    """The main job on the bundled defaults (resumes if the run folder exists)."""
    from latency.devices import check_available
    from latency.workflow import resolve_device
    from nas.pipeline import JobConfig, main_job
    from supernet.parallel import resolve_train_device

    out = Path(a.out or MAIN_RUN)
    spec = _stored_spec(a, out) if RunFolder(out).spec.exists() else _spec(a)
    job = JobConfig(devices=tuple(a.device.split(",")), n_measure=a.n_measure, n_search=a.n_search,
                    finetune=_finetune_stage(a), finetune_candidates=a.finetune_candidates,
                    finetune_best_epoch=a.finetune_best_epoch, finetune_attention=a.finetune_attention,
                    finetune_choose=a.finetune_choose, train_device=resolve_train_device(a.train_device))
    for device in job.devices:  # before training: a typo or a missing GPU is found in a second
        check_available(resolve_device(out, device))
    t0 = time.time()
    summary = main_job(out, spec, job, progress=not a.quiet, command=a.command_line)
    print()
    print(f"Summary ({spec.task}, {spec.model}); p50 latency per call on the task's real traffic (dev sentences "
          "served in turn), measured now; speed-ups against our own full model (the export's report.json has them "
          "against the stock model). 'search': each search's pick; 'export': the sub-network written to the export "
          "folder (its own search, step up and fine-tuning; acc_test of the written model):")
    cols = ["picked_by", "device", "budget_ms", "arch", "measured_ms", "full_ms", "speedup", "meets_budget", "acc_test",
            "full_acc_test"]
    _print_table(summary, cols)
    export_dir = RunFolder(out).export(job.exported_on, float(summary["budget_ms"].iloc[-1]))
    print(f"total {(time.time() - t0) / 60:.1f} min; wrote {out}/summary.csv, {export_dir}/ (model card: README.md; "
          f"try `hwnas predict --model {export_dir} \"a fine film\"`), {out}/compare/fronts.png; the searches "
          f"as Optuna studies: `optuna-dashboard {RunFolder(out).optuna_storage}`")
    return 0


def register_train(sub: Subparsers) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="fine-tune the teacher and train the supernet",
                       description="Fine-tune the teacher, rewire heads/neurons by importance (train split), "
                       "train the weight-shared supernet (sandwich rule, distillation, LengthDrop), and "
                       "write an evaluation table.")
    t.add_argument("--out", type=out_folder, required=True, help="run folder, e.g. runs/NAME")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out with its stored settings")
    t.add_argument("--nproc", type=COUNT, default=1,
                   help="data-parallel processes on this machine, each taking a share of every batch (default "
                   "%(default)s); for several machines launch `torchrun ... -m nas.cli train` instead (README)")
    _train_device_arg(t, "the teacher and the supernet train",
                      ". With several processes (--nproc, torchrun) on cuda, each trains on its own GPU "
                      "(cuda:LOCAL_RANK) and they talk over NCCL; on cpu, over gloo")
    _add_train_args(t, quick=False)
    return t


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` less ``option`` and its value (``--opt V`` or ``--opt=V``)."""
    out: list[str] = []
    skip = False
    for x in argv:
        if skip:
            skip = False
        elif x == option:
            skip = True
        elif not x.startswith(option + "="):
            out.append(x)
    return out


def cmd_train(a: argparse.Namespace) -> int:
    from supernet import parallel
    from supernet.workflow import evaluation_table, open_run, train_run, write_evaluation

    launched = parallel.INIT_ENV in os.environ or "WORLD_SIZE" in os.environ  # a rank of hwnas or torchrun
    device = parallel.resolve_train_device(a.train_device)  # a GPU asked for and missing: refused before launching
    if a.nproc > 1 and not launched:
        from supernet.io import make_temp_dir, remove_temp_dir

        rendezvous = make_temp_dir("dist")
        try:
            return parallel.launch(_without_option(a.argv, "--nproc"), a.nproc, str(rendezvous))
        finally:
            remove_temp_dir(rendezvous)
    if a.nproc > 1 and parallel.INIT_ENV not in os.environ:
        raise ConfigError("--nproc starts its own processes: leave it out under torchrun (--nproc-per-node sets them)")
    out = Path(a.out)
    stored = RunFolder(out).spec.exists()
    spec = _stored_spec(a, out) if a.resume and stored else _spec(a)
    ranks = parallel.join(device)
    try:
        if a.resume and stored and ranks.main:
            print(f"resuming {out} with its stored settings (task {spec.task}, model {spec.model})")
        times = train_run(out, spec, resume=a.resume, progress=not a.quiet, ranks=ranks)
    finally:
        parallel.leave(ranks)
    if not ranks.main:
        return 0  # rank 0 evaluates and reports
    if ranks.world > 1 or device != "cpu":
        print(f"trained with {ranks.world} process{'es' if ranks.world > 1 else ''} on {device}")
    t0 = time.time()
    run = open_run(out, device=ranks.device)
    table = evaluation_table(run)
    write_evaluation(run, table)
    times["evaluate"] = round(time.time() - t0, 1)
    _print_table(table, EVAL_COLS)
    print("wall time (s):", json.dumps(times))
    print(f"wrote {out}/supernet, {out}/teacher, {out}/eval.csv, {out}/metrics.csv")
    return 0


def register_eval(sub: Subparsers) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="score sub-networks of a trained run on dev and test")
    e.add_argument("--run", required=True, help="run folder written by hwnas train")
    e.add_argument("--subnet", nargs="*", help="JSON files of sub-network configurations (default: the standard five)")
    e.add_argument("--save", type=csv_out_file, help="also write the table to this CSV (and the run's settings and stage "
                   "times to a JSON beside it, '_eval_' replaced by '_train_')")
    return e


def _fp32_subnet(path: str, what: str) -> SubnetConfig:
    """A sub-network JSON for the commands that run PyTorch weights: fp32 only, and a file
    written for a quantized export says how to use it."""
    from supernet.space import SubnetConfig

    cfg = SubnetConfig.from_dict(_read_json(path))
    if cfg.precision != "fp32":
        raise ConfigError(f"{path} holds a sub-network at {cfg.precision}; {what} the fp32 PyTorch sub-network only: "
                          f"remove its \"precision\" key to use the same shape in fp32 (the {cfg.precision} "
                          "graph itself is the model.onnx that `hwnas export` wrote)")
    return cfg


def cmd_eval(a: argparse.Namespace) -> int:
    from supernet.workflow import evaluation_table, open_run, read_run_record, write_evaluation

    asked = {Path(p).stem: _fp32_subnet(p, "eval scores") for p in a.subnet or []}  # before the run opens
    run = open_run(a.run)
    subnets = {name: run.space.validate(cfg) for name, cfg in asked.items()} or None
    table = evaluation_table(run, subnets)
    if subnets is None:
        write_evaluation(run, table)
    _print_table(table, EVAL_COLS)
    if a.save:
        from supernet.io import write_csv, write_json

        save = Path(a.save)
        write_csv(save, table)
        write_json(save.with_name(save.name.replace("_eval_", "_train_")).with_suffix(".json"), read_run_record(run.folder))
        print(f"wrote {save}")
    return 0


def register_exits(sub: Subparsers) -> argparse.ArgumentParser:
    x = sub.add_parser("exits", help="train early-exit heads on a trained run's frozen supernet",
                       description="Train one small classifier per layer (FastBERT / PABEE early exits) on the "
                       "frozen supernet, by self-distillation from the final classifier of random sub-networks "
                       "(sandwich rule), into RUN/exits/KIND/. The supernet is not changed. Resumable: run the "
                       "same command again after an interruption. Prints each exit's dev accuracy for the largest "
                       "and the smallest sub-network. With --model: heads for that standalone model of the run "
                       "(a fine-tuned export) instead, trained on its own configuration only, into "
                       "RUN/exits/KIND/models/WEIGHTS/ (for `hwnas early-exit --model`).")
    x.add_argument("--run", required=True, help="run folder written by hwnas train")
    x.add_argument("--model", help="an `hwnas export` folder (its pytorch/) or a model folder (shape.json + "
                   "model.safetensors) made from this run, e.g. a fine-tuned export: train its exits instead of "
                   "the supernet's")
    x.add_argument("--kind", choices=("mean", "attn", "cls"), default="mean",
                   help="mean: mean of the alive tokens + linear (default); attn: FastBERT's small attention "
                   "classifier; cls: [CLS] + linear")
    x.add_argument("--epochs", type=_number(0.0, above=True), default=2.0, help="default: %(default)s")
    x.add_argument("--lr", type=RATE, default=1e-3, help="default: %(default)s")
    x.add_argument("--n-random", type=COUNT0, default=2, help="random sub-networks per step besides the largest "
                   "and the smallest (default: %(default)s)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    return x


def cmd_exits(a: argparse.Namespace) -> int:
    from supernet.exits import ExitConfig, exit_table, load_standalone, model_exits_dir, train_exits
    from supernet.extract import config_in_supernet
    from supernet.train import weights_sha1
    from supernet.workflow import open_run

    model = load_standalone(a.model) if a.model else None  # bad --model: before the run is opened
    run = open_run(a.run)
    cfg = ExitConfig(kind=a.kind, epochs=a.epochs, lr=a.lr, n_random=a.n_random, seed=run.spec.seed)
    t0 = time.time()
    if model is None:
        backbone, space, folder = run.supernet, run.space, run.paths.exits(a.kind)
        subnets = {"largest": run.space.largest(), "smallest": run.space.smallest()}
    else:
        config_in_supernet(model, run.supernet)  # made from this run, or one line and exit 2
        backbone, space = model, None
        folder = model_exits_dir(run.paths.exits(a.kind), weights_sha1(model))
        subnets = {"model": model.own_config()}
    heads, trained = train_exits(backbone, space, run.splits["train"], folder, cfg,
                                 batch_size=run.spec.train.batch_size,
                                 bucket_by_length=run.spec.train.bucket_by_length, progress=not a.quiet)
    print(f"{'trained' if trained else 'loaded'} {a.kind} exit heads in {folder} ({time.time() - t0:.0f} s)")
    table = exit_table(backbone, heads, run.splits["dev"], subnets)
    _print_table(table, list(table.columns))
    return 0


def register_early_exit(sub: Subparsers) -> argparse.ArgumentParser:
    x = sub.add_parser("early-exit", help="early exit: one sub-network's trade-off, or the most accurate (sub-network, "
                       "exit policy) under a latency budget; exported and measured",
                       description="Needs a run with trained exit heads (hwnas exits). Two modes. "
                       "With --budget-ms B (or --speedup S) --device D (the search): the sub-networks on the run's static front for D "
                       "(its searches' dev scores and D's predicted latency, thinned to --candidates) and the largest; every exit's "
                       "logits on dev and test in one pass each (cached beside the heads, RUN/exits/KIND/logits); every (sub-network, policy) "
                       "scored on dev and its latency statistic (--budget-stat) estimated from D's predictor applied to "
                       "the sub-network's depth-k prefixes plus the exit head's timed cost; the most accurate on dev "
                       "whose estimate meets B is exported and measured on test. Writes candidates.csv, front.csv "
                       "(static vs static+exit), front.png, exit_histogram.png, report.json, runner/. "
                       "Otherwise (one sub-network: --subnet, --model or the largest): each policy (entropy threshold, "
                       "patience) scored without re-running; the sub-network exported as ONNX segments with a runner "
                       "that stops early (numpy + onnxruntime); its per-layer cost measured on dev inputs one by "
                       "one; each policy's latency estimated from that cost and its exits; the policy chosen on "
                       "dev (the fastest estimated within --max-loss points of the static sub-network), then "
                       "measured on test inputs one by one beside the static sub-network as one graph. Writes "
                       "policies.csv and report.json to --out.")
    x.add_argument("--run", required=True, help="run folder with exit heads (hwnas exits)")
    x.add_argument("--kind", choices=("mean", "attn", "cls"), default="mean", help="which exit heads (default: mean)")
    x.add_argument("--out", required=True, type=out_folder, help="folder for the export and the result files")
    x.add_argument("--subnet", help="JSON file of the sub-network, or 'largest' (the default); with --budget-ms or "
                   "--speedup its policy is chosen under the budget (as with --model), no search")
    x.add_argument("--model", help="one sub-network: a standalone model of the run instead of the supernet's weights "
                   "(an `hwnas export` folder, e.g. fine-tuned, or a model folder: shape.json + model.safetensors), "
                   "with exit heads trained on it by `hwnas exits --model`; not with --subnet. With --budget-ms or "
                   "--speedup (here or with --subnet) the policy is the most accurate on dev whose estimated "
                   "--budget-stat meets the budget (instead of --max-loss); no search")
    x.add_argument("--max-loss", type=_number(0.0), default=None,
                   help="one sub-network without a budget: points of dev accuracy the chosen policy may lose "
                   f"against the static sub-network (default: {EXIT_MAX_LOSS})")
    budget = x.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=_number(0.0, above=True),
                        help="search (with --subnet or --model: that one's policy): the latency budget in ms")
    budget.add_argument("--speedup", type=_number(1.0, above=True),
                        help="search (with --subnet or --model: that one's policy): the budget as a speed-up over the largest "
                        "sub-network, which is timed as one graph on the first --n-cost dev inputs now (the budget: "
                        "its statistic divided by this, e.g. 2)")
    x.add_argument("--device", help="search: the device the budget applies to (measured and fitted in the run; it "
                   "must be on this machine, which times the export); its profile's threads are used")
    x.add_argument("--budget-stat", choices=("p50", "p90", "mean"), default="p50",
                   help="the statistic of per-input latency the budget applies to (default "
                   "%(default)s)")
    x.add_argument("--candidates", type=COUNT, default=None,
                   help="search: sub-networks taken from the static front (default: 12); the largest is added")
    x.add_argument("--finalists", type=COUNT0, default=None,
                   help="search: the most accurate sub-networks near the budget whose own runner is timed on dev "
                   "before choosing, their exit candidates estimated from it and scaled by the median of "
                   "--rounds pairs of serving at a policy over its estimate (default: 3; 0: none)")
    x.add_argument("--choose", choices=("best-dev", "largest-unless-beaten"), default="best-dev",
                   help="search: which candidate under the budget is handed over. best-dev (default): the most "
                   "accurate on dev. largest-unless-beaten: the largest sub-network's most accurate policy under "
                   "the budget, unless the best on dev beats it there beyond the noise (paired-bootstrap 95%% "
                   "interval of the dev difference above 0): the best of hundreds of candidates on one dev split "
                   "is flattered by it")
    x.add_argument("--threads", type=COUNT, default=None, help="one sub-network: ONNX Runtime threads (default: one "
                   "per core; the search uses its device's)")
    x.add_argument("--n-cost", type=_int_at_least(2), default=300, help="dev inputs timed for the per-layer cost (default: "
                   "%(default)s)")
    x.add_argument("--n-time", type=COUNT, default=None, help="test inputs timed (default: all)")
    x.add_argument("--n-stock", type=COUNT0, default=300,
                   help="test inputs on which the chosen one is timed beside the stock deployments of the "
                   "teacher (ONNX, ONNX Runtime-optimized, dynamic INT8) and the static graph (search: the largest "
                   "sub-network; one sub-network: that one), in turn, --rounds rounds; speed-ups and the score "
                   "against the teacher's in report.json beside_stock (default: %(default)s; 0: not)")
    x.add_argument("--rounds", type=COUNT, default=3, help="timing rounds, static and early exit in turn "
                   "(search: also each finalist's served / estimated pairs); medians are reported (default: "
                   "%(default)s)")
    x.add_argument("--quiet", action="store_true", help="search: no progress lines")
    return x


def cmd_early_exit(a: argparse.Namespace) -> int:
    from nas.early_exit import EarlyExitStudy
    from supernet.exits import load_standalone
    from supernet.extract import config_in_supernet
    from supernet.space import SubnetConfig
    from supernet.workflow import open_run

    budget = a.budget_ms is not None or a.speedup is not None
    if budget and a.max_loss is not None:
        raise ConfigError("--max-loss chooses a policy without a budget; with --budget-ms or --speedup the most "
                          "accurate policy under the budget is chosen: leave --max-loss out")
    if budget and not (a.model or a.subnet):
        return _exit_search(a)
    if (a.model or a.subnet) and a.device:
        raise ConfigError("--device is for the search: with --subnet or --model the policy is timed on this "
                          "machine, with --threads threads")
    for flag, value in (("--device", a.device), ("--budget-stat", not budget and a.budget_stat != "p50" or None)):
        if value:
            raise ConfigError(f"{flag} is for a budget: give --budget-ms (or --speedup) too, or leave it out")
    if a.model and a.subnet:
        raise ConfigError("give --model or --subnet, not both (a model holds its own sub-network)")
    for flag, given in (("--choose", a.choose != "best-dev"), ("--candidates", a.candidates is not None),
                        ("--finalists", a.finalists is not None), ("--quiet", a.quiet)):
        if given:
            raise ConfigError(f"{flag} is for the search over sub-networks (--budget-ms or --speedup with --device, "
                              "without --subnet or --model): leave it out here")
    asked = SubnetConfig.from_dict(_read_json(a.subnet)) if a.subnet and a.subnet != "largest" else None
    model = load_standalone(a.model) if a.model else None
    run = open_run(a.run)
    if model is not None:
        cfg = config_in_supernet(model, run.supernet)
    else:
        cfg = run.space.validate(asked) if asked is not None else run.space.largest()
    study = EarlyExitStudy(run, a.kind, cfg, Path(a.out), threads=a.threads, backbone=model, stat=a.budget_stat)
    table, report = study.run_all(max_loss=EXIT_MAX_LOSS if a.max_loss is None else a.max_loss, n_cost=a.n_cost, n_time=a.n_time, rounds=a.rounds,
                                  n_stock=a.n_stock, budget_ms=a.budget_ms, speedup=a.speedup)
    _print_table(table, ["criterion", "threshold", f"{run.task.metric}_dev", f"{run.task.metric}_test", "layers_dev",
                         "hist_test", "est_mean_ms_dev", "est_p50_ms_dev"])
    print(json.dumps({k: v for k, v in report.items() if k != "policies"}, indent=1))
    print(f"wrote {a.out}/policies.csv, {a.out}/report.json and the runner in {a.out}")
    return 0


def _exit_search(a: argparse.Namespace) -> int:
    """``hwnas early-exit --budget-ms``: the search over (sub-network, exit policy)."""
    from latency.devices import check_available
    from nas.exit_search import ExitSearch
    from supernet.workflow import open_run

    flag = "--budget-ms" if a.budget_ms is not None else "--speedup"
    if a.device is None:
        raise ConfigError(f"{flag} needs --device (the device the budget applies to, e.g. cpu)")
    if a.threads is not None:
        raise ConfigError("the search times with its device's threads: leave --threads out (cpu-1t is one thread)")
    run = open_run(a.run)
    target = _target(run, a.device, None, None, a.budget_stat)
    check_available(target.profile)
    given = {k: v for k, v in (("candidates", a.candidates), ("finalists", a.finalists)) if v is not None}
    search = ExitSearch(run, target, a.kind, Path(a.out), choice=a.choose, **given)  # else ExitSearch's defaults
    r = search.run_all(a.budget_ms, speedup=a.speedup, n_cost=a.n_cost, n_time=a.n_time, rounds=a.rounds,
                       n_stock=a.n_stock, progress=not a.quiet)
    print(json.dumps(r["search"], indent=1))
    print(f"wrote {a.out}/candidates.csv, front.csv, front.png, exit_histogram.png, report.json and the runner")
    return 0


def register_measure(sub: Subparsers) -> argparse.ArgumentParser:
    m = sub.add_parser("measure", help="time sampled sub-networks on a device (or write / import a kit)",
                       description="Measure sub-networks of a trained run on a device profile: warm-up, repeats, "
                       "median / p90 / spread, the full model re-measured at intervals, a harness check. Rows go to "
                       "RUN/latency/DEVICE.csv; an interrupted measurement resumes. With --kit, write a folder to "
                       "run on a device that cannot run this package; with --import, bring its CSV back.")
    m.add_argument("--run", required=True, help="run folder written by hwnas train")
    m.add_argument("--device", required=True, help="cpu, cpu-int8, cpu-1t, cpu-openvino, torch-cpu, cuda, or a name from --devices; several "
                   "separated by commas are measured in turn, exporting each sub-network once")
    m.add_argument("--devices", help="TOML file with [devices.NAME] profiles (stored in the run)")
    m.add_argument("--n", type=COUNT, default=300, help="configurations to sample (default %(default)s)")
    m.add_argument("--seed", type=SEED, default=0, help="draws the configurations (another seed adds others); the "
                   "traffic sample they are timed on is the run's, whatever the seed (default %(default)s)")
    m.add_argument("--repeats", type=_int_at_least(3), default=None, help="timed runs per measurement (default: the profile's)")
    m.add_argument("--warmup", type=COUNT0, default=None, help="untimed runs first (default: the profile's)")
    m.add_argument("--reference-every", type=COUNT, default=20, help="re-measure the full model every N configurations")
    m.add_argument("--noise-rounds", type=COUNT0, default=8, help="rounds of the harness check / noise floor (0: none; "
                   "not with --kit or --import: a kit times no harness check, so a kit device's fit reports no noise floor)")
    m.add_argument("--passes", type=COUNT, default=1,
                   help="time every configuration in this many passes over the whole sample, one after the other, "
                   "so that its timings are minutes apart; `hwnas fit` fits on each configuration's median and "
                   "reports how far the passes disagree (noise_floor.retest_*). On this project's 2-core machine "
                   "one timing of a small sub-network was within 10%% of the next only about half the time: more "
                   "passes lower the noise the predictor is fitted and scored on (default 1; a measurement made "
                   "with fewer passes is extended by running again with more)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--kit", metavar="DIR", type=out_folder, help="write a measurement kit to DIR instead of measuring here")
    g.add_argument("--import", dest="import_csv", metavar="CSV", help="import the CSV a kit wrote on the device")
    g.add_argument("--ray-address", metavar="HOST:PORT",
                   help="measure each device on a node of this Ray cluster that advertises the resource "
                   "device:NAME (`ray start ... --resources '{\"device:NAME\": 1}'`); rows come back here (README)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    return m


def cmd_measure(a: argparse.Namespace) -> int:
    from latency.devices import with_overrides
    from latency.measure import sweep_summary
    from latency.workflow import measure_device, resolve_device, store_devices
    from supernet.workflow import open_run

    if a.passes > 1 and (a.ray_address or a.kit or a.import_csv):
        raise ConfigError("--passes applies to measurements made here; a kit or a cluster node times each "
                          "configuration once (drop --passes)")
    if a.noise_rounds != 8 and (a.kit or a.import_csv):
        raise ConfigError("--noise-rounds applies to measurements made here; a kit times no harness check "
                          "(drop --noise-rounds)")
    run = open_run(a.run)
    if a.devices is not None:
        store_devices(a.run, a.devices)
    profiles = [with_overrides(resolve_device(a.run, d), repeats=a.repeats, warmup=a.warmup)
                for d in a.device.split(",")]
    if a.ray_address:
        from nas.distributed import measure_on_cluster

        t0 = time.time()
        tables = measure_on_cluster(run, profiles, address=a.ray_address, n=a.n, seed=a.seed,
                                    reference_every=a.reference_every, noise_rounds=a.noise_rounds,
                                    progress=not a.quiet)
        for name, rows in tables.items():
            s = sweep_summary(rows)
            print(f"{name}: {s['configs']} configurations measured on the cluster ({s['failed_rows']} failed rows) "
                  f"in {run.paths.measurements(name)}; harness ratio {s['harness_ratio']:.3f}")
        print(f"took {(time.time() - t0) / 60:.1f} min (the stock deployments are timed by a local `hwnas measure`)")
        return 0
    if len(profiles) > 1:
        if a.kit or a.import_csv:
            raise ConfigError("--kit and --import take one --device")
        from latency.workflow import measure_devices

        t0 = time.time()
        counts = {p.name: _row_count(run, p.name) for p in profiles}
        tables = measure_devices(run, profiles, n=a.n, seed=a.seed, reference_every=a.reference_every,
                                 noise_rounds=a.noise_rounds, progress=not a.quiet, passes=a.passes)
        for name, rows in tables.items():
            s = sweep_summary(rows)
            print(f"{name}: {s['configs']} configurations measured; harness ratio {s['harness_ratio']:.3f}")
        print(f"took {(time.time() - t0) / 60:.1f} min")
        _time_stock(run, profiles, quiet=a.quiet, unchanged={n for n, rows in tables.items() if len(rows) == counts[n]})
        return 0
    profile = profiles[0]
    log_path = run.paths.measurements(profile.name)
    if a.import_csv:
        from latency.kit import import_kit_csv, kit_id
        from latency.measure import MeasurementLog
        from latency.workflow import device_workloads

        added = import_kit_csv(a.import_csv, run.supernet.shape, MeasurementLog(log_path), profile.name,
                               expected_id=kit_id(run.supernet, profile, device_workloads(run, profile)))
        print(f"imported {added} rows into {log_path}")
        return 0
    if a.kit:
        from latency.kit import write_run_kit

        manifest = write_run_kit(run, profile, a.kit, n=a.n, seed=a.seed, reference_every=a.reference_every,
                                 progress=not a.quiet)
        print(f"wrote {manifest.parent}: copy it to the device, run `python3 measure_kit.py` there, then "
              f"`hwnas measure --run {a.run} --device {profile.name} --import results.csv`")
        return 0
    t0 = time.time()
    before = _row_count(run, profile.name)
    rows = measure_device(run, profile, n=a.n, seed=a.seed, reference_every=a.reference_every,
                          noise_rounds=a.noise_rounds, progress=not a.quiet, passes=a.passes)
    s = sweep_summary(rows)
    minutes = (time.time() - t0) / 60
    print(f"{profile.name}: {s['configs']} configurations measured ({s['failed_rows']} failed rows) in "
          f"{log_path}; harness check (same model timed twice in turn): ratio {s['harness_ratio']:.3f}; "
          f"this call took {minutes:.1f} min")
    _time_stock(run, [profile], quiet=a.quiet, unchanged={profile.name} if len(rows) == before else set())
    return 0


def _row_count(run: LoadedRun, device: str) -> int:
    from latency.workflow import measured_rows

    return len(measured_rows(run.folder, device)) if run.paths.measurements(device).exists() else 0


def _time_stock(run: LoadedRun, profiles: list[DeviceProfile], *, quiet: bool, unchanged: set[str]) -> None:
    """Time the stock deployments on each device (once per `hwnas measure` that timed something;
    ``unchanged``: devices with nothing left to measure, whose stock timing is kept if there is
    one, so that a finished measurement resumed changes nothing) and say so."""
    from latency.baselines import time_stock
    from supernet.io import write_json

    for profile in profiles:
        kept = run.paths.stock_timing(profile.name)
        if profile.name in unchanged and kept.exists():
            if not quiet:
                print(f"  {profile.name}: nothing left to measure; the stock deployments' timing in {kept} is kept "
                      "(delete it to time them again)")
            continue
        got = time_stock(run, profile)
        if got is None:
            continue
        path = write_json(run.paths.stock_timing(profile.name), got)
        if not quiet:
            print(f"  {profile.name}, p50 per call ({got['regime']}), what a user could deploy without hwnas "
                  f"(written to {path}):")
            for name, t in got["deployments"].items():
                acc = "" if t["acc_test"] is None else f"   test {run.task.metric} {t['acc_test']:.4f}"
                print(f"    {name:<11} {t['p50_ms']:8.3f} ms{acc}")


def register_fit(sub: Subparsers) -> argparse.ArgumentParser:
    f = sub.add_parser("fit", help="fit and evaluate a latency predictor per device",
                       description="Fit three latency predictors on RUN/latency/DEVICE.csv: analytic (non-negative "
                       "combination of FLOPs-like terms), gbt (monotone gradient-boosted trees) and analytic+gbt (the "
                       "analytic model times monotone trees fitted on its log residuals); evaluate them on held-out "
                       "configurations (a sub-network timed in several passes counts once, at its median), keep the "
                       "one of lowest MAPE, and write the predictor, a JSON report and a predicted-vs-measured PNG, "
                       "for each regime and statistic measured (p50, p90, p99, mean).")
    f.add_argument("--run", required=True, help="run folder with measurements")
    f.add_argument("--device", required=True, help="device name, or several separated by commas")
    f.add_argument("--seed", type=SEED, default=0)
    return f


def cmd_fit(a: argparse.Namespace) -> int:
    from latency.workflow import fit_run_device
    from supernet.checkpoint import load_model
    from supernet.runfolder import check_name

    devices = [check_name(d) for d in a.device.split(",")]  # they name files: refused before any work
    shape = load_model(RunFolder(a.run).supernet).shape
    paths = RunFolder(a.run)
    for device in devices:
        for r in fit_run_device(a.run, shape, device, seed=a.seed):
            m = r["metrics"][r["chosen"]]
            nf = r["noise_floor"]
            what = "real traffic" if r["regime"] == "traffic" else "fixed lengths"
            print(f"{device}, {r['stat']} on {what}: chose {r['chosen']} on {r['n_configs']} configurations "
                  f"({r['n_holdout']} held-out rows): MAPE {m['mape']:.2%}, within +-10% {m['within_10pct']:.1%}, "
                  f"Kendall tau {m['kendall_tau']:.3f}, upper bound covers {r['coverage_upper']:.1%} (margin "
                  f"{r['upper_margin']:.1%}); noise floor: repeats within +-10% {nf['within_10pct']:.1%}, median "
                  f"deviation {nf['median_abs_rel']:.2%}; across the measurement (the full model timed "
                  f"{nf['n_reference']} times) {nf['reference_within_10pct']:.1%}, "
                  f"{nf['reference_median_abs_rel']:.2%}"
                  + (f"; {r['passes']} passes: timings within +-10% of their sub-network's median "
                     f"{nf['retest_within_10pct']:.1%}, median deviation {nf['retest_median_abs_rel']:.2%}"
                     if r["passes"] > 1 else "")
                  + f"; harness ratio {r['harness_ratio']:.3f}")
            print(f"  wrote {paths.predictor(device, r['regime'], r['stat'])}, "
                  f"{paths.fit_report(device, r['regime'], r['stat']).name}, {paths.fit_plot(device, r['regime'], r['stat']).name}")
    return 0


def register_search(sub: Subparsers) -> argparse.ArgumentParser:
    s = sub.add_parser("search", help="search sub-networks for budgets or the whole front on devices",
                       description="Search the supernet for the most accurate sub-network under each budget (or the "
                       "accuracy/latency front) using the device's fitted predictor; candidates whose predicted upper "
                       "bound exceeds the budget are rejected. Histories go to RUN/search/.")
    _search_args(s)
    s.add_argument("--device", required=True, help="device name(s), comma-separated")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget-ms", help="latency budget(s) in ms, comma-separated")
    g.add_argument("--front", action="store_true", help="search the whole accuracy/latency front")
    s.add_argument("--ray", action="store_true", help="run the search as Ray Tune trials (Optuna inside Ray Tune). "
                   "There --n counts trials: a suggestion the latency predictor rejects for the budget uses one up, "
                   "so under a tight budget fewer accuracies are computed than in the same search without --ray. "
                   "With more than one worker what is suggested next depends on which trials finished first, so "
                   "a seed does not repeat a search, and a rerun adds its configurations to the same Optuna study "
                   "(the history CSV holds the last run's)")
    s.add_argument("--ray-address", help="join an existing Ray cluster (default: start a local one)")
    s.add_argument("--workers", type=COUNT, help="concurrent Ray Tune trials with --ray (default 2)")
    s.set_defaults(method=None)  # evolution, unless --ray (Optuna's TPE or NSGA-II inside Ray Tune)
    return s


def cmd_search(a: argparse.Namespace) -> int:
    from nas.export import run_search, write_search_history
    from nas.objectives import dev_accuracies
    from nas.search import evolution_settings, searcher_class
    from supernet.workflow import open_run

    budgets: list[float | None] = [None] if a.front else list(_budgets(a.budget_ms))
    if a.ray and a.method not in (None, "nsga2" if a.front else "tpe"):
        raise ConfigError(f"--ray runs Optuna's {'NSGA-II' if a.front else 'TPE'} inside Ray Tune, not --method "
                          f"{a.method}: drop one")
    if not a.ray and (a.workers is not None or a.ray_address is not None):
        raise ConfigError("--workers and --ray-address are settings of --ray (a search as Ray Tune trials): add "
                          "--ray or drop them")
    a.method = a.method or "evolution"
    if a.method == "ray":
        raise ConfigError("--method ray is spelled --ray (with --method tpe or nsga2, or neither)")
    if a.front and a.method == "tpe" and not a.ray:
        raise ConfigError("--front searches a whole accuracy-latency front, and TPE maximises accuracy alone (it "
                          "would crowd the largest sub-networks): use --method nsga2, evolution or random")
    searcher_class(a.method)  # an unknown name is refused before the run opens
    kwargs = evolution_settings(a.method, a.screen)
    if a.ray and kwargs:
        raise ConfigError("--screen is the evolution's setting; --ray runs Optuna's TPE inside Ray Tune: drop one")
    run = open_run(a.run)
    targets = {device: _target(run, device, a.devices, a.length, a.budget_stat) for device in a.device.split(",")}
    accs = dev_accuracies(run, (t.batch for t in targets.values()), subset_size=a.dev_subset or None,
                          precision=a.search_precision)
    method = a.method
    if a.ray:
        method, kwargs = "ray", {"workers": a.workers or 2, "address": a.ray_address,
                                 "storage_path": str(run.paths.ray_storage.resolve())}
    print(f"the searches are Optuna studies in {run.paths.search / 'optuna.db'}: browse them with "
          f"`optuna-dashboard {run.paths.optuna_storage}` (pip install optuna-dashboard)")
    for device, target in targets.items():
        acc = accs[target.batch]
        for budget in budgets:
            result, wall = run_search(run, target, budget, method=method, n_evaluations=a.n, seed=a.seed,
                                      accuracy=acc, searcher_kwargs=kwargs)
            write_search_history(run, result, target, budget, method, kwargs)
            where = "whole front" if budget is None else f"budget {budget:g} ms"
            print(f"{device} ({target.describe()}), {where}, {method}: "
                  f"{result.n_evaluations} evaluated in {wall:.0f} s")
            if budget is None:
                print(result.front()[["acc_dev", "lat_pred_ms", "lat_upper_ms"]].to_string(index=False))
            elif result.best is None:
                print("  no sub-network meets this budget")
            else:
                b = result.best
                print(f"  best: {b.config.describe()}  dev {acc.metric} {b.accuracy:.4f}, predicted "
                      f"{b.latency_ms:.2f} ms (upper {b.upper_ms:.2f})")
    return 0


def register_export(sub: Subparsers) -> argparse.ArgumentParser:
    e = sub.add_parser("export", help="pick the best sub-network for a device and budget, re-measure, export",
                       description="Search for the most accurate sub-network whose predicted latency plus its safety "
                       "margin meets the budget, re-measure the finalists on the device (stepping down when one "
                       "misses), and write model.onnx (token dropping included), the standalone PyTorch / Hugging "
                       "Face model, subnet.json and report.json to --out.")
    _search_args(e)
    e.add_argument("--device", required=True, help="device name")
    budget = e.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", help="latency budget in ms")
    budget.add_argument("--speedup", type=_number(1.0, above=True),
                        help="budget as a speed-up over the full model: the full model is timed on the device now "
                        "and the budget is its latency divided by this (e.g. 3); every later timing judges a "
                        "sub-network's speed-up against the full model timed with it")
    e.add_argument("--out", type=out_folder, required=True,
                   help="output folder: new, empty, or an earlier export's (an export replaces README.md, config.json, "
                   "the tokenizer's files and hf/ in it, so a folder holding other files is refused)")
    e.add_argument("--finalists", type=COUNT, default=5, help="candidates to re-measure, best first (default %(default)s)")
    e.add_argument("--drift-tolerance", type=_number(), default=0.10,
                   help="before searching, time three reference sub-networks; when the device runs more than this "
                   "fraction slower or faster than its predictor says, scale the predictions by the measured ratio "
                   "(default %(default)s; negative: no check)")
    e.add_argument("--step-up-below", type=_share, default=0.9,
                   help="when the chosen sub-network measures under this share of the budget, search again with "
                   "the predictor's margin shrunk to what was measured and measure the more accurate candidates, "
                   "with the chosen one's one-step-larger neighbours that fit (when all of them miss, once more at "
                   "the scale they measured at; default %(default)s; 0: never)")
    _finetune_args(e, 0.0, "the chosen sub-network before it is written")
    _distill_text_args(e)
    _train_device_arg(e, "the fine-tuning (--finetune-epochs) runs")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    return e


def _timing_lines(r: dict[str, Any]) -> list[str]:
    """What an export's timings chose, one line each (``report.json``'s ``step_downs``: the
    finalists, each step up's search scale and candidates, the timing just before writing; and
    ``step_up_searches``: a step-up search that found nothing more accurate, so timed nothing)."""
    tries = {u["scale"]: u for u in r.get("step_up_searches", [])}

    def searching(scale: float) -> str:
        u = tries.get(scale, {})
        how = "searching again" if u.get("searched", True) else "trying the pick's one-step-larger neighbours"
        grown = (f"; {u['grown']} of those that beat the pick on dev are its one-step-larger neighbours"
                 if u.get("grown") and u.get("searched", True) else "")
        return f"  step up: {how} with every prediction scaled by {scale:.2f} (measured / upper bound){grown}"

    def none_better(u: dict[str, Any]) -> str:
        if not u.get("searched", True):
            return "none of those that fit"
        neighbours = " nor of the pick's larger neighbours that fit" if "grown" in u else ""
        return f"none of its {u['candidates']} candidates{neighbours}"

    lines: list[str] = []
    scale = None  # a step up's search scale, said when a try starts
    # Such a search ends the step up: its line goes before the timing just before writing.
    empty = [f"{searching(u['scale'])}: {none_better(u)} beat the pick on the whole dev split"
             for u in r.get("step_up_searches", []) if not u["better_on_dev"]]
    for s in r["step_downs"]:
        if s.get("step") == "confirm" and empty:
            lines, empty = [*lines, *empty], []
        if s.get("step") == "up" and s.get("scale") != scale:
            scale = s.get("scale")
            lines.append(searching(scale))
        if s["meets_budget"] is None:
            lines.append(f"  WARNING: {r['device']} is not on this machine, so {s['arch']} was chosen by prediction "
                         f"only (predicted {s['predicted_ms']:.2f} ms, upper {s['upper_ms']:.2f}); measure it on the "
                         "device")
            continue
        kind = s.get("step")
        if kind == "up":
            if "recheck_ms" in s:
                verdict = (f"within 95% of the budget; timed again alone {s['recheck_ms']:.2f} ms"
                           + (" -> stepping up" if s.get("taken") else ": passed over"))
            else:
                verdict = "over 95% of the budget: passed over" if s["meets_budget"] else "misses"
        elif kind == "confirm":
            verdict = ("meets the budget: written" if s.get("taken") else "meets the budget" if s["meets_budget"]
                       else "misses: falling back")
        else:
            verdict = "meets the budget" if s["meets_budget"] else "misses: stepping down"
        label = {"up": "more accurate", "confirm": "timed again before writing"}.get(kind, "finalist")
        now = s.get("budget_now_ms")  # a speed-up's budget moves with the full model timed beside it
        base = r.get("budget_ms")
        moved = f" (budget {now:.2f} ms in this timing)" if now and base and abs(now / base - 1) > 0.005 else ""
        lines.append(f"  {label} {s['arch']}: predicted {s['predicted_ms']:.2f} ms (upper {s['upper_ms']:.2f}), "
                     f"measured {s['measured_ms']:.2f} ms{moved} -> {verdict}")
    return [*lines, *empty]


def cmd_export(a: argparse.Namespace) -> int:
    from nas.card import written_test_score
    from nas.export import ExportConfig, choose_and_export
    from nas.objectives import DevAccuracy
    from nas.search import evolution_settings, searcher_class
    from supernet.parallel import resolve_train_device
    from supernet.workflow import open_run

    budget: list[float | None] = [None] if a.speedup is not None else list(_budgets(a.budget_ms))
    if len(budget) != 1:
        raise ConfigError("export takes one --budget-ms value")
    searcher_class(a.method)  # an unknown name is refused before the run opens
    evolution_settings(a.method, a.screen)  # so is a screen for another method
    train_device = resolve_train_device(a.train_device)
    finetune = _finetune_stage(a)
    run = open_run(a.run)
    target = _target(run, a.device, a.devices, a.length, a.budget_stat)
    cfg = ExportConfig(budget_ms=budget[0], speedup=a.speedup, method=a.method, screen=a.screen, n_evaluations=a.n,
                       seed=a.seed,
                       finalists=a.finalists, finetune=finetune, finetune_candidates=a.finetune_candidates,
                       finetune_unlabeled=a.finetune_unlabeled, finetune_augment=a.finetune_augment,
                       drift_tolerance=None if a.drift_tolerance < 0 else a.drift_tolerance, progress=not a.quiet,
                       step_up_below=a.step_up_below or None, train_device=train_device,
                       finetune_best_epoch=a.finetune_best_epoch, finetune_attention=a.finetune_attention,
                       finetune_choose=a.finetune_choose)
    accuracy = DevAccuracy(run, subset_size=a.dev_subset or None, precision=a.search_precision, batch=target.batch)
    r = choose_and_export(run, target, a.out, cfg, accuracy=accuracy, command=a.command_line)
    if r["budget_from"]:
        b = r["budget_from"]
        print(f"  the full model measured {b['full_model_ms']:.3f} ms on {r['device']} before the search: budget "
              f"{r['budget_ms']:g} ms for {b['speedup']:g}x; each later timing judges the speed-up against the full "
              "model timed with it, so the budget in ms moves with the machine's speed")
    d = r["device_drift"]
    if d is not None and d["scale_applied"] != 1.0:
        print(f"  WARNING: {r['device']} runs {d['ratio']:.2f}x the predicted latency today (references "
              f"{', '.join(format(x, '.2f') for x in d['ratios'])}); this search scaled every prediction by "
              f"{d['scale_applied']:.2f}. Re-measure (`hwnas measure`, `hwnas fit`) if it stays so")
    for line in _timing_lines(r):
        print(line)
    if not r.get("budget_confirmed", True):
        wanted = (f"{r['budget_from']['speedup']:g}x against the full model timed with it" if r["budget_from"]
                  else f"{r['budget_ms']:g} ms ({r['device']} is slower now than when the pick was measured)")
        print(f"  WARNING: timed again before writing, nothing met {wanted}; the pick stands on its earlier timing. "
              "Re-run, or re-measure and refit")
    speed = f"{r['speedup']:.2f}x" if r["speedup"] else "not re-measured here"
    tested = f"{written_test_score(r):.4f}" + (
        f" fine-tuned ({r['test_accuracy']:.4f} with the supernet's weights)" if r["finetuned"] else "")
    print(f"{r['device']} under {r['budget_ms']:g} ms ({target.describe()}): {r['arch']}\n"
          f"  measured {r['measured_latency_ms']:.2f} ms vs full "
          f"{r['full_model_latency_ms']:.2f} ms ({speed}); test {r['metric']} {tested} vs full model "
          f"{r['full_model_test_accuracy']:.4f}\n  wrote {a.out}/model.onnx (config.json and tokenizer beside it), "
          f"hf/{' (remote code)' if r['hf_remote_code'] else ''}, pytorch/, subnet.json, report.json, README.md")
    for name, v in r["vs_teacher"].items():
        mcnemar = f"McNemar p {v['mcnemar_p']:.3g}; " if "mcnemar_p" in v else ""
        print(f"  {name} test {v.get('metric', 'accuracy')} vs the teacher on the same {v['n']} sentences: "
              f"{v['diff_points']:+.2f} points (95% CI {v['ci95_low']:+.2f} to {v['ci95_high']:+.2f}, paired bootstrap; "
              f"{mcnemar}{v['agreement']:.1%} same predictions)")
    if r["deployments"]:
        stat, sp = r["budget_stat"], r["speedup_vs_stock"]
        print(f"  against what you could deploy without hwnas ({stat} ms per call, same run, same inputs; test "
              f"{r['metric']} by ONNX Runtime):")
        for name, row in r["deployments"].items():
            print(f"    {name:<11} {row[stat + '_ms']:8.3f} ms   test {row['acc_test']:.4f}")
        other = "int8" if r["precision"] == "fp32" else "fp32"
        print(f"  speed-up: {sp['ours_vs_fastest_stock_fp32']:.2f}x against the fastest stock fp32 "
              f"({sp['fastest_stock_fp32']}), {sp['ours_vs_stock_int8']:.2f}x against stock INT8 (ours in "
              f"{r['precision']}); in {other}, ours would be {sp[f'ours_{other}_vs_fastest_stock_fp32']:.2f}x and "
              f"{sp[f'ours_{other}_vs_stock_int8']:.2f}x")
    if r["quantization"]:
        q = r["quantization"]
        print(f"  INT8 cost the written model {100 * (q['written_test_accuracy_int8'] - q['written_test_accuracy_fp32']):+.2f}"
              f" test points ({q['written_test_accuracy_fp32']:.4f} in fp32, model-fp32.onnx)")
    if r["finetuned"]:
        ft = r["finetuned"]
        for c in r["finetune_candidates"]:
            how = "reused the earlier fine-tuning in --out" if c["reused"] else f"in {c['wall_s']:.0f} s"
            mark = "<- exported" if c["arch_key"] == r["arch_key"] else ""
            on = f" on {ft['texts']} texts" if "texts" in ft else ""
            print(f"  fine-tuned {ft['epochs']:g} epochs{on} {c['arch']} ({how}): dev {r['metric']} "
                  f"{c['dev_accuracy_before']:.4f} -> {c['dev_accuracy']:.4f}, test {c['test_accuracy']:.4f} {mark}")
        print("  the written model and model.onnx hold the exported sub-network's fine-tuned weights")
    return 0


def register_compare(sub: Subparsers) -> argparse.ArgumentParser:
    c = sub.add_parser("compare", help="compare Pareto fronts across devices, methods and runs (CSV + PNG)")
    c.add_argument("--run", help="run folder (or --runs)")
    c.add_argument("--runs", help="several run folders, comma-separated")
    c.add_argument("--device", help="device names, comma-separated")
    c.add_argument("--devices", help="TOML file with [devices.NAME] profiles (device names here: deprecated, "
                   "use --device)")
    c.add_argument("--device-file", metavar="DEVICES", help="deprecated spelling of --devices")
    c.add_argument("--methods", help="methods to compare separately, comma-separated (default: all pooled)")
    _latency_args(c)
    c.add_argument("--out", type=out_folder, help="output folder (default RUN/compare)")
    c.add_argument("--remeasure-points", type=COUNT0, default=12, help="front points re-measured per device")
    c.add_argument("--no-remeasure", action="store_true", help="predicted latency only")
    c.add_argument("--dev-subset", type=COUNT0, default=None,
                   help="the dev subset the searches used, 0 for the whole dev split (default: read from each run's "
                   "accuracy cache: the main job's 400, hwnas search's 500, the benchmark's whole split)")
    _precision_arg(c)
    return c


def _compare_devices(a: argparse.Namespace) -> tuple[list[str], str | None]:
    """compare's device names and TOML file. compare once took the names with --devices and
    the file with --device-file; both still work, with a note on stderr."""
    names, toml = a.device, a.devices
    if a.device_file is not None:
        if toml is not None:
            raise ConfigError("give the TOML file once, with --devices (--device-file is its old spelling)")
        print("hwnas compare: note: --device-file is deprecated; use --devices TOML", file=sys.stderr)
        toml = a.device_file
    if names is None and toml is not None and not (Path(toml).is_file() or toml.lower().endswith(".toml")):
        print(f"hwnas compare: note: --devices {toml} is taken as device names (deprecated); use --device {toml}",
              file=sys.stderr)
        names, toml = toml, None
    if names is None:
        raise ConfigError("compare needs --device NAMES, comma-separated (e.g. --device cpu,cpu-1t)")
    return names.split(","), toml


def cmd_compare(a: argparse.Namespace) -> int:
    from nas.fronts import compare
    from supernet.workflow import open_run

    if not (a.run or a.runs):
        raise ConfigError("compare needs --run RUN or --runs RUN1,RUN2")
    devices, devices_file = _compare_devices(a)
    runs = [open_run(r) for r in (a.runs.split(",") if a.runs else [a.run])]
    targets = {str(r.folder): {d: _target(r, d, devices_file, a.length, a.budget_stat) for d in devices} for r in runs}
    methods = a.methods.split(",") if a.methods else None
    out = a.out or str(runs[0].paths.compare)
    table, hv = compare(runs, targets, methods, out, remeasure_points=0 if a.no_remeasure else a.remeasure_points,
                        dev_subset="searched" if a.dev_subset is None else a.dev_subset or None,
                        precision=a.search_precision)
    _print_table(hv, ["front", "n_points", "hypervolume", "best_acc", "fastest_lat"])
    print(f"wrote {out}/fronts.csv, hypervolume.csv, fronts.png")
    return 0


def register_bench(sub: Subparsers) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmark our front against DynaBERT-grid, retention-only and random baselines",
                       description="From one trained, measured and fitted run: fronts of four methods re-measured on "
                       "the device, hypervolumes, speed-up at 1 and 2 points of test loss (paired intervals against the teacher; the 1-point points timed again), predictor quality, budget "
                       "compliance over 20-90% of the full model's latency, realized vs ideal speed-up, fine-tuned points at 3x (ours: the fine-tuned export at the full model's "
                       "latency / 3; the DynaBERT grid's best point at that speed-up), cost; writes "
                       "BENCHMARKS.md with tables and a PNG.")
    b.add_argument("--run", required=True, help="run folder (trained, measured and fitted on --device)")
    b.add_argument("--device", default="cpu", help="device to benchmark on (default %(default)s)")
    _latency_args(b)
    b.add_argument("--n", type=COUNT, default=150, help="accuracy evaluations per searched method")
    b.add_argument("--seed", type=SEED, default=0)
    _screen_arg(b)
    _precision_arg(b)
    _finetune_args(b, 3.0, "the fine-tuned points")
    _distill_text_args(b)
    _train_device_arg(b, "the fine-tunings run")
    b.add_argument("--finetune-at", default="3",
                   help="speed-ups at which ours and the DynaBERT grid are fine-tuned, comma-separated (default %(default)s; "
                   "--quick: 2, ours only, 0.5 epochs, 1 candidate)")
    b.add_argument("--budgets", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="the compliance sweep's budgets as shares of the full model's latency, comma-separated "
                   "(default %(default)s)")
    b.add_argument("--front-points", type=_int_at_least(2), default=10,
                   help="points of each method's front re-measured and scored on test (default %(default)s)")
    b.add_argument("--dev-subset", type=COUNT0, default=0,
                   help="dev examples scored while searching (default 0: all; on a subset the evolution's fronts "
                   "chase its noise and lose on test); fronts, finalists and fine-tuned points are scored on the "
                   "whole dev split either way")
    b.add_argument("--seeds", type=COUNT, default=3,
                   help="search seeds per searched method for the spread of the hypervolume (default %(default)s; "
                   "--quick: 1)")
    b.add_argument("--retimes", type=COUNT0, default=5,
                   help="times each 1-point point is timed again, each in a fresh timer; the targets table judges "
                   "on the median (default %(default)s; --quick: 2)")
    b.add_argument("--quick", action="store_true", help="a reduced version in minutes: 16 evaluations per search on 150 dev examples, 4 front points, "
                   "1 budget (0.5) with 2 finalists, 1 timing round")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--out", type=out_folder, default="results", help="where BENCHMARKS.md and its files go (default %(default)s)")
    return b


def cmd_bench(a: argparse.Namespace) -> int:
    from nas.bench import BenchConfig, run_bench
    from supernet.parallel import resolve_train_device
    from supernet.workflow import open_run

    train_device = resolve_train_device(a.train_device)
    if a.quick:
        cfg = BenchConfig.quick(device=a.device, seed=a.seed, search_precision=a.search_precision,
                                train_device=train_device, screen=a.screen)
    else:
        ft = _finetune_stage(a)
        speedups = _floats(a.finetune_at, "--finetune-at", "3")
        if any(x <= 1 for x in speedups):
            raise ConfigError(f"--finetune-at takes speed-ups above 1 (the full model's latency divided by each), "
                              f"e.g. 2,3; got {a.finetune_at!r}")
        cfg = BenchConfig(device=a.device, n_evaluations=a.n, seed=a.seed, finetune_epochs=ft.epochs if ft else 0.0,
                          finetune_lr=a.finetune_lr, finetune_speedups=tuple(speedups),
                          finetune_candidates=a.finetune_candidates, search_precision=a.search_precision,
                          budget_fractions=_fractions(a.budgets), front_points=a.front_points,
                          dev_subset=a.dev_subset or None, seeds=a.seeds, train_device=train_device,
                          retimes=a.retimes, finetune_best_epoch=a.finetune_best_epoch,
                          finetune_unlabeled=a.finetune_unlabeled, finetune_augment=a.finetune_augment,
                          finetune_attention=a.finetune_attention, finetune_choose=a.finetune_choose,
                          screen=a.screen)
    run = open_run(a.run)
    target = _target(run, a.device, None, a.length, a.budget_stat)
    summary = run_bench(run, target, cfg, a.out, command=a.command_line, progress=not a.quiet)
    print(Path(a.out, "BENCHMARKS.md").read_text())
    print(f"peak memory {summary['peak_rss_mb']:.0f} MB; wrote {a.out}/BENCHMARKS.md")
    return 0


def register_extract(sub: Subparsers) -> argparse.ArgumentParser:
    x = sub.add_parser("extract", help="write one sub-network as a standalone model",
                       description="Write a physically smaller PyTorch model and a Hugging Face folder (stock BERT "
                       "where one can hold the sub-network, else with the elastic BERT's code, loaded with "
                       "trust_remote_code=True) with the supernet's weights.")
    x.add_argument("--run", required=True, help="run folder written by hwnas train")
    x.add_argument("--subnet", required=True, help="JSON file with heads, ffn, keep, retention")
    x.add_argument("--out", type=out_folder, required=True, help="output folder")
    return x


def cmd_extract(a: argparse.Namespace) -> int:
    from supernet.extract import export_standalone
    from supernet.workflow import open_run, tokenizer_as_trained

    asked = _fp32_subnet(a.subnet, "extract writes")  # before the run opens
    run = open_run(a.run)
    cfg = run.space.validate(asked)
    written = export_standalone(run.supernet, cfg, a.out, tokenizer_as_trained(run), list(run.task.label_names))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    from supernet.extract import extract, hf_expressible, needs_remote_code

    if needs_remote_code(written["hf"]):
        print(f"hf/ holds the elastic BERT's code (load it with trust_remote_code=True): a stock BERT cannot hold "
              f"this sub-network: {hf_expressible(extract(run.supernet, cfg))}")
    return 0


def register_predict(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify texts with an export folder (its model.onnx, in ONNX Runtime)",
                       description="Classify texts with an export folder written by `hwnas export` or `hwnas run`: "
                       "its model.onnx (token dropping and, for an int8 export, quantization included) in ONNX "
                       "Runtime, with the tokenizer and labels beside it, each text cut at the tokens the run was "
                       "trained on (report.json's max_length). One JSON line per text (text, label, score, scores), "
                       "or a table with --format table. A sentence-pair export (a task with two texts per example) "
                       "takes each text as FIRST<TAB>SECOND.")
    p.add_argument("--model", required=True, metavar="EXPORT_DIR", help="export folder (with model.onnx)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", help="a UTF-8 file with one text per line (blank lines skipped; - for stdin)")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output format (default %(default)s)")
    p.add_argument("--batch-size", type=COUNT, default=32, help="texts per ONNX Runtime call (default %(default)s; an int8 export runs at its "
                   "device's batch, report.json's, 1 by default: its dynamic quantization makes a text's logits "
                   "depend on its batch)")
    return p


def cmd_predict(a: argparse.Namespace) -> int:
    from nas.predict import ExportedModel, read_texts

    texts = read_texts(a.texts, a.file)  # before the model opens
    model = ExportedModel.open(a.model)
    for note in model.notes:
        print(f"hwnas predict: note: {note}", file=sys.stderr)
    rows = model.predict(texts, batch_size=a.batch_size)
    if a.format == "jsonl":
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        import pandas as pd

        frame = pd.DataFrame([{"label": r["label"], "score": r["score"], "text": r["text"][:80]} for r in rows])
        _print_table(frame, ["label", "score", "text"])
    return 0


Register = Callable[["Subparsers"], argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace], int]

COMMANDS: tuple[tuple[Register, Handler], ...] = (
    (register_run, cmd_run),
    (register_train, cmd_train),
    (register_eval, cmd_eval),
    (register_exits, cmd_exits),
    (register_early_exit, cmd_early_exit),
    (register_measure, cmd_measure),
    (register_fit, cmd_fit),
    (register_search, cmd_search),
    (register_export, cmd_export),
    (register_compare, cmd_compare),
    (register_bench, cmd_bench),
    (register_extract, cmd_extract),
    (register_predict, cmd_predict),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware architecture search for BERT encoders: train a weight-shared "
        "supernet once, then evaluate and extract any sub-network.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for register, handler in COMMANDS:
        register(sub).set_defaults(func=handler)
    return p


def runs_written(a: argparse.Namespace) -> list[Path]:
    """The run folders a command writes to, locked while it runs (``RunFolder.lock``); none for
    the commands that only read a run (``extract``, ``eval --subnet``)."""
    if a.command == "run":
        names = [a.out or MAIN_RUN]
    elif a.command == "train":
        names = [a.out]
    elif a.command == "compare":
        names = a.runs.split(",") if a.runs else [a.run] if a.run else []
    elif a.command in ("measure", "fit", "search", "export", "bench", "exits") or (a.command == "eval" and not a.subnet):
        names = [a.run]
    else:
        names = []
    return list(dict.fromkeys(Path(n).resolve() for n in names))


# What an interrupted command keeps, and how to go on (Ctrl-C); a command not named here
# keeps nothing worth resuming and is simply run again.
ON_INTERRUPT = {
    "run": "run the same command again: it resumes the run in --out where it stopped",
    "train": "run the same command with --resume to continue from the last checkpoint",
    "exits": "run the same command again to continue from the last checkpoint",
    "early-exit": "the exit logits are kept (one sub-network: in --out; a search: beside the heads, "
                  "RUN/exits/KIND/logits): run the same command again to reuse them",
    "measure": "the rows measured so far are kept: run the same command again to measure the rest",
    "search": "the scores computed so far are cached in the run: running the same command again skips them",
    "export": "scores computed so far are cached in the run and fine-tuning resumes in --out: run the same "
              "command again to go on",
    "compare": "the scores computed so far are cached in the run: running the same command again skips them",
    "bench": "scores are cached in the run and fine-tunings resume in RUN/bench: run the same command again to go on",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 for an input it refuses (one error line on stderr,
    after argparse's usage for an option), 1 when the disk is full (one line), 130 when
    interrupted."""
    import contextlib
    import shlex

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its error (status 2), or the help (status 0)
        if e.code == 2:
            return 2
        raise
    args.argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["hwnas", *args.argv])
    args.command_line = command  # named in what a command writes (an export's model card)
    # A rank of a data-parallel run (supernet.parallel) works under the lock of the process
    # that started it (``--nproc``) or of rank 0 (torchrun), and leaves errors to rank 0.
    from supernet.parallel import holds_parent_lock, launched_rank

    rank = launched_rank()
    try:
        with contextlib.ExitStack() as locks:
            for run in [] if holds_parent_lock() else runs_written(args):
                locks.enter_context(RunFolder(run).lock(command))
            return int(args.func(args))
    except HwnasError as e:
        if rank == 0:  # every rank checks the same input; one line is enough
            print(f"hwnas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from supernet.io import disk_full

        if disk_full(e) is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        hint = ON_INTERRUPT.get(args.command, "run the command again to start over")
        print(f"hwnas {args.command}: error: {e.strerror or e}{where}; free some space, or set TMPDIR to a folder "
              f"on a larger disk; {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = ON_INTERRUPT.get(args.command, "nothing was kept: run the command again to start over")
        print(f"hwnas {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Crash safety: real ``hwnas`` processes killed with SIGKILL at named points, then resumed.

Each test kills a command where ``HWNAS_FAULT=<point>:<n>`` says (``supernet/faults.py``),
checks what the kill left behind, runs the same command again (``--resume`` for ``train``,
the mechanism there) and checks that nothing finished was lost, and that the result equals an
uninterrupted run where the method is deterministic (training, fine-tuning, fitting). Also:
the run folder's lock, stray temporary files of killed atomic writes, and temporary folders
of killed processes. The runs are tiny (``tests/conftest.py``); measurements use a device
with the fewest calls its profile allows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.cli import main
from supernet.checkpoint import load_model
from supernet.errors import RunLocked
from supernet.io import make_temp_dir, remove_stale_temp_dirs, remove_temp_dir
from supernet.runfolder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL
TRAIN = ["--max-train", "64", "--max-eval", "48", "--teacher-epochs", "1", "--supernet-epochs", "1",
         "--checkpoint-every", "1", "--quiet"]


def hwnas(*args: str, fault: str | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``hwnas ARGS`` in a new process (killed at ``fault``; its temp folder ``tmp``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the threads of the in-process references
    env.pop("HWNAS_FAULT", None)
    if fault is not None:
        env["HWNAS_FAULT"] = fault
    if tmp is not None:
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def killed(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == KILLED, f"expected SIGKILL, got {p.returncode}: {p.stderr[-3000:]}"
    return p


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def run_copy(job: Path, tmp_path: Path) -> Path:
    """A copy of the trained, measured, fitted and searched run, checkpointing every step."""
    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("export", "compare", "bench"))
    spec = json.loads((run / "run.json").read_text())
    spec["train"]["checkpoint_every"] = 1  # checkpoints do not change what is trained
    (run / "run.json").write_text(json.dumps(spec))
    return run


# --- train: killed mid-swap of a checkpoint, in each stage ----------------------------------------

def test_train_killed_mid_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(
        tiny_hf_dir: Path, tmp_path: Path) -> None:
    out, ref = tmp_path / "run", tmp_path / "ref"
    args = ["train", "--out", str(out), "--model", str(tiny_hf_dir), *TRAIN]
    # 2 steps a stage, a checkpoint after each. Hit 2: the teacher's second, the first moved aside.
    killed(hwnas(*args, fault="train.checkpoint:2"))
    assert {p.name for p in (out / "teacher").iterdir()} >= {"checkpoint.old", "checkpoint.tmp"}
    assert not (out / "teacher" / "checkpoint").exists() and not (out / "state.json").exists()
    # Resumed from the first: hit 1 is the teacher's last step, 2 and 3 the supernet's two.
    killed(hwnas(*args, "--resume", fault="train.checkpoint:3"))
    assert list(json.loads((out / "state.json").read_text())["done"]) == ["teacher", "rewire"]
    assert (out / "supernet" / "checkpoint.old").exists()
    ok(hwnas(*args, "--resume"))

    assert main(["train", "--out", str(ref), "--model", str(tiny_hf_dir), *TRAIN]) == 0
    for model in ("teacher", "rewired", "supernet"):
        same_weights(out / model, ref / model)
    assert not list((out / "supernet").glob("checkpoint*")) and not list((out / "teacher").glob("checkpoint*"))
    losses = [pd.read_csv(r / "metrics.csv").drop(columns="elapsed_s") for r in (out, ref)]
    pd.testing.assert_frame_equal(*losses)  # no logged step lost or doubled
    assert (out / "eval.csv").read_text() == (ref / "eval.csv").read_text()


# --- measure: killed after a row; the rerun measures the rest, once -------------------------------

def test_measure_killed_after_a_row_keeps_it_and_measures_only_the_rest(run_copy: Path, tmp_path: Path) -> None:
    toml = tmp_path / "box.toml"  # the fewest calls a profile allows
    toml.write_text("[devices.box]\nthreads = 1\nwarmup = 0\nrepeats = 3\ntraffic_calls = 3\n")
    args = ["measure", "--run", str(run_copy), "--devices", str(toml), "--device", "box", "--n", "3",
            "--noise-rounds", "1", "--reference-every", "100", "--quiet"]
    temp = tmp_path / "temp"
    killed(hwnas(*args, fault="measure.row:2", tmp=temp))
    log = run_copy / "latency" / "box.csv"
    before = log.read_text()
    rows = pd.read_csv(log)
    first = rows.loc[rows["kind"] == "sample", "arch_key"].tolist()
    assert len(first) == 2
    assert [d.name.split("-")[1] for d in temp.glob("hwnas-*")] == ["timer"]  # the killed timer's folder

    ok(hwnas(*args, tmp=temp))
    after = log.read_text()
    assert after.startswith(before)  # finished rows kept as they were
    samples = pd.read_csv(log).query("kind == 'sample'")
    assert samples["arch_key"].tolist()[:2] == first
    assert samples["arch_key"].is_unique and len(samples) == 3
    assert samples["error"].isna().all()
    assert not list(temp.glob("hwnas-*"))  # the dead process's temp folder was removed by the next run


# --- fit: killed inside an atomic write; the stray temporary file goes, the result is the same ----

def test_fit_killed_inside_an_atomic_write_leaves_a_stray_tmp_that_the_rerun_removes(
        run_copy: Path) -> None:
    latency = run_copy / "latency"
    before = {p.name: p.read_bytes() for p in latency.glob("cpu.*json")}
    for p in latency.glob("cpu.*json"):
        p.unlink()
    killed(hwnas("fit", "--run", str(run_copy), "--device", "cpu", fault="io.replace:2"))
    assert len(list(latency.glob(".*.tmp"))) == 1  # the second file's write, complete but not renamed
    ok(hwnas("fit", "--run", str(run_copy), "--device", "cpu"))
    assert not list(run_copy.rglob(".*.tmp"))
    after = {p.name: p.read_bytes() for p in latency.glob("cpu.*json")}
    assert after == before  # the same as the uninterrupted fit of the same rows


# --- search: an Optuna trial killed mid-way -------------------------------------------------------

def test_optuna_search_killed_mid_trial_keeps_finished_trials_and_retries_the_anchor(run_copy: Path) -> None:
    import optuna

    from nas.optuna_search import decode
    from supernet.space import SearchSpace

    args = ["search", "--run", str(run_copy), "--device", "cpu", "--budget-ms", "100", "--method", "tpe",
            "--n", "6", "--dev-subset", "16"]
    # Trial 0 is the smallest sub-network, trial 1 the first depth seed (both anchors).
    killed(hwnas(*args, fault="search.trial:2"))
    storage = RunFolder(run_copy).optuna_storage
    (name,) = [n for n in optuna.get_all_study_names(storage) if "tpe" in n]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert states[:2] == ["COMPLETE", "RUNNING"], states
    space = SearchSpace.from_dict(json.loads((run_copy / "search_space.json").read_text()))
    done = trials[0].user_attrs
    lost_anchor = decode(space, trials[1].system_attrs["fixed_params"]).key()

    ok(hwnas(*args))
    # The resumed search opened the same study: once it did not (a RUNNING trial left here),
    # when the one-second bf16 check of --search-precision auto decided otherwise on a busy
    # machine and renamed the search split; the run now keeps its first decision.
    assert [n for n in optuna.get_all_study_names(storage) if "tpe" in n] == [name]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert "RUNNING" not in {t.state.name for t in trials}, [(t.number, t.state.name) for t in trials]
    history = pd.read_csv(run_copy / "search" / "cpu_100ms_tpe.csv")
    assert len(history) == 6 and history["arch_key"].is_unique
    kept = history.set_index("arch_json")
    assert kept.loc[done["arch_json"], "acc_dev"] == pytest.approx(done["acc_dev"], abs=0)  # not redone
    assert lost_anchor in set(history["arch_key"])  # the killed anchor was evaluated after all


# --- export: killed in its fine-tuning, then between its writes -----------------------------------

def test_export_killed_in_finetuning_and_in_its_writes_ends_as_an_uninterrupted_one(
        run_copy: Path, tmp_path: Path) -> None:
    from supernet.space import SubnetConfig
    from supernet.train import StageConfig, finetune_folder, finetune_subnet
    from supernet.workflow import open_run

    out = tmp_path / "export"
    args = ["export", "--run", str(run_copy), "--device", "cpu", "--budget-ms", "100", "--n", "4", "--finalists", "1",
            "--dev-subset", "16", "--drift-tolerance", "-1", "--finetune-epochs", "2", "--finetune-candidates", "1",
            "--out", str(out), "--quiet"]
    # 4 fine-tuning steps, a checkpoint after each: hit 3 swaps in the third, the second moved aside.
    killed(hwnas(*args, fault="train.checkpoint:3"))
    (ft,) = out.glob("finetune_*")
    assert (ft / "checkpoint.old").exists() and not (ft / "shape.json").exists()
    killed(hwnas(*args, fault="export.write:1"))  # the fine-tuning finished, pytorch/ written
    assert (out / "pytorch").exists() and not (out / "model.onnx").exists() and not (out / "report.json").exists()
    ok(hwnas(*args))

    report = json.loads((out / "report.json").read_text())
    assert report["finetune_candidates"][0]["reused"] is True  # the finished fine-tuning was kept
    assert (out / "model.onnx").exists() and not list(out.rglob(".*.tmp")) and not list(ft.glob("checkpoint*"))
    # The same fine-tuning, uninterrupted, in this process.
    run = open_run(run_copy)
    cfg = SubnetConfig.from_dict(report["subnet"])
    stage = StageConfig(epochs=2, lr=2e-4)
    ref, _ = finetune_subnet(run.supernet, load_model(run.paths.teacher), cfg, run.splits["train"],
                             finetune_folder(tmp_path / "ref", cfg, stage), run.spec.train, stage, progress=False)
    assert ft == finetune_folder(out, cfg, stage)
    same_weights(ft, finetune_folder(tmp_path / "ref", cfg, stage))
    assert report["test_accuracy"] is not None and report["finetuned"]["dev_accuracy"] == pytest.approx(
        report["finetune_candidates"][0]["dev_accuracy"])
    del ref
    # Exporting into the finished folder again and killed while writing: the earlier report and
    # card are gone, so the folder cannot pass for a finished export with the new files beside them.
    killed(hwnas(*args, fault="export.write:1"))
    assert not (out / "report.json").exists() and not (out / "README.md").exists()


# --- the run folder's lock -------------------------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid_and_command(run_copy: Path, tmp_path: Path) -> None:
    subnet = tmp_path / "subnet.json"
    subnet.write_text(json.dumps({"heads": [2, 2, 2], "ffn": [32, 32, 32], "keep": [True] * 3, "retention": [1.0] * 3}))
    with RunFolder(run_copy).lock("hwnas measure --run X --device cpu"):
        p = hwnas("fit", "--run", str(run_copy), "--device", "cpu")
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"), RunFolder(run_copy).lock("again"):
            pass
        # Commands that only read the run take no lock.
        assert main(["extract", "--run", str(run_copy), "--subnet", str(subnet), "--out", str(tmp_path / "x")]) == 0
    assert p.returncode == 2 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert f"is in use by pid {os.getpid()} (`hwnas measure --run X --device cpu`" in line


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = ("import os, sys, signal; sys.path.insert(0, sys.argv[1]); from supernet.runfolder import RunFolder\n"
            "with RunFolder(sys.argv[2]).lock('holder'):\n    os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code, str(ROOT), str(run)]).returncode == KILLED
    assert "holder" in (run / "run.lock").read_text()  # the dead holder's record stays ...
    with RunFolder(run).lock("next"):  # ... but not its lock
        assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()


def test_a_refused_first_command_leaves_no_run_folder_and_names_are_checked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "new"
    assert main(["train", "--out", str(out), "--task", str(tmp_path / "missing.csv")]) == 2
    assert not out.exists()
    capsys.readouterr()
    for bad in ("cpu.x", "../../x", "a/b", ""):
        assert main(["fit", "--run", str(tmp_path), "--device", bad]) == 2
        err = capsys.readouterr().err
        assert "may use letters, digits, '_' and '-' only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "latency").exists()


# --- temporary folders -------------------------------------------------------------------------------

def test_temp_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    code = ("import os, sys, signal; sys.path.insert(0, sys.argv[1]); from supernet.io import make_temp_dir\n"
            "print(make_temp_dir('timer'), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True, text=True)
    assert p.returncode == KILLED
    dead = Path(p.stdout.strip())
    assert dead.parent == tmp_path and dead.name.startswith("hwnas-timer-") and dead.exists()
    legacy = tmp_path / "hwnas-timer-abc123"  # an older hwnas's folder: no owner recorded, left alone
    legacy.mkdir()
    mine = make_temp_dir("onnx")
    try:
        assert remove_stale_temp_dirs(tmp_path) == [dead]
        assert not dead.exists() and legacy.exists()
        remove_stale_temp_dirs(mine.parent)
        assert mine.exists()  # this process is alive and holds it
    finally:
        remove_temp_dir(mine)
    assert not mine.exists()

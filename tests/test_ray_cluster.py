"""A real Ray cluster, started as a user would (`ray start --head`), joined by `hwnas`.

One head for the module: bound to loopback only (``--node-ip-address 127.0.0.1`` with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, without which Ray replaces the loopback address by
the machine's own and listens on every interface), a port and temp dir of its own, token
authentication with a token made here (``RAY_AUTH_TOKEN``), and two custom resources,
``device:cpu`` and ``device:cpu-1t``, standing in for two devices' nodes. It is stopped by
its process group (``ray start`` runs in a session of its own, and its daemons stay in that
group), never by ``ray stop``, which would stop every Ray cluster of the user on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


@dataclass
class Head:
    address: str
    token: str
    env: dict[str, str]  # what a driver of this cluster needs (the token, loopback)
    pgid: int


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening_addresses(pgid: int) -> set[str]:
    """The local addresses of the TCP sockets listening in the processes of group ``pgid``
    (from /proc: the sockets' inodes, matched in /proc/net/tcp and tcp6)."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except (OSError, ProcessLookupError):
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                out.add(f[1].split(":")[0])
    return out


LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    if not RAY.exists():
        pytest.skip(f"the ray command is not installed beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="hwr-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = _free_loopback_port()
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": token, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    resources = json.dumps({"device:cpu": 1, "device:cpu-1t": 1})
    log = temp / "start.log"  # a file, not a pipe: the daemons outlive `ray start` and would hold a pipe open
    with open(log, "w") as out:
        p = subprocess.Popen([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--temp-dir", str(temp), "--num-cpus", "2", "--resources", resources,
                              "--include-dashboard", "false", "--disable-usage-stats"],
                             env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    pgid = p.pid  # the session's (and group's) leader: its daemons stay in the group
    try:
        assert p.wait(timeout=120) == 0, log.read_text()[-3000:]
        yield Head(f"127.0.0.1:{port}", token, env, pgid)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.time() + 5  # Ray's daemons can take longer to stop on SIGTERM
            while _group_alive(pgid) and time.time() < deadline:
                time.sleep(0.2)
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def hwnas(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_head_listens_on_loopback_only(head: Head) -> None:
    found = _listening_addresses(head.pgid)
    assert found, "no listening socket found for the head's processes"
    assert found <= LOOPBACK_HEX, found


def test_a_missing_or_wrong_token_is_named_as_the_cause(head: Head) -> None:
    probe = [sys.executable, "-c", "import sys; from nas.distributed import check_cluster; check_cluster(sys.argv[1])",
             head.address]
    no_token = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    no_token["RAY_AUTH_TOKEN_PATH"] = os.devnull  # never a token file of the user's
    p = subprocess.run(probe, env=no_token, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "sent no token" in p.stderr and "RAY_AUTH_MODE=token" in p.stderr, p.stderr[-2000:]
    assert "start one with" not in p.stderr
    wrong = {**head.env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    p = subprocess.run(probe, env=wrong, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "refused this process's authentication token" in p.stderr, p.stderr[-2000:]
    p = subprocess.run(probe, env=head.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]


def test_search_joins_the_cluster(head: Head, job: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(job, run, ignore=shutil.ignore_patterns("export", "compare", "bench"))
    p = hwnas("search", "--run", str(run), "--device", "cpu", "--front", "--method", "nsga2", "--n", "4",
              "--dev-subset", "16", "--ray", "--ray-address", head.address, "--workers", "1", env=head.env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(pd.read_csv(run / "search" / "cpu_front_ray.csv")) >= 1


MEASURE = ["--repeats", "3", "--warmup", "1", "--noise-rounds", "1", "--reference-every", "2", "--quiet"]
KEY = ["device", "kind", "note", "arch_key", "regime", "length", "batch", "error"]


def test_measure_sends_each_device_to_its_node_resumably(head: Head, job: Path, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    for run in (local, remote):
        shutil.copytree(job, run, ignore=shutil.ignore_patterns("export", "compare", "bench", "latency"))
    assert main(["measure", "--run", str(local), "--device", "cpu,cpu-1t", "--n", "2", *MEASURE]) == 0
    # Part of cpu measured here first; the cluster measures the rest of it, and cpu-1t.
    assert main(["measure", "--run", str(remote), "--device", "cpu", "--n", "1", *MEASURE]) == 0
    p = hwnas("measure", "--run", str(remote), "--device", "cpu,cpu-1t", "--n", "2", "--ray-address", head.address,
              *MEASURE, env=head.env)
    assert p.returncode == 0, p.stderr[-3000:]
    for device in ("cpu", "cpu-1t"):
        a, b = (pd.read_csv(r / "latency" / f"{device}.csv", keep_default_na=False) for r in (local, remote))
        assert list(a.columns) == list(b.columns)
        samples = [f[f["kind"] != "reference"][KEY].sort_values(KEY).reset_index(drop=True) for f in (a, b)]
        pd.testing.assert_frame_equal(samples[0], samples[1])  # the same measurements, each once
        assert (b["kind"] == "reference").sum() >= (a["kind"] == "reference").sum()
        assert (b.loc[b["kind"] == "sample", "error"] == "").all()
    # A device no node advertises: the error names it and how to offer it.
    p = hwnas("measure", "--run", str(remote), "--device", "torch-cpu", "--n", "1", "--ray-address", head.address,
              *MEASURE, env=head.env)
    assert p.returncode == 2 and "device:torch-cpu" in p.stderr, p.stderr[-2000:]

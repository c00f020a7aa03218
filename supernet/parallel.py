"""Data-parallel training: several processes share each step's batch (``torch.distributed``).

Every process (a *rank*) holds the whole model and walks the same batches in the same order
(they are seeded by the run's seed and the epoch). At each step a rank takes its contiguous
slice of the global batch (``Ranks.shard``), runs the step's forward and backward passes on
it (the sandwich draws its sub-networks from a generator seeded by (seed, step), so every
rank trains the same ones), and the gradients are summed over the ranks, each weighted by its
share of the batch (``Ranks.reduce_gradients``). The distillation losses are means over the
examples and the cross-entropy on labels is scaled by the whole batch's share of labeled rows
(``supernet.train.labeled_ce``: unlabeled distillation texts leave some rows without one), so
the result is the gradient of the global batch: the optimizer step is the one a single
process would take, up to float rounding. The exception is the layer-wise distillation loss
(``--layer-weight``): a mean over a shard's tokens, weighted by its share of the examples, so
a step with it is the single process's only when the shards hold as many tokens per example. Steps count global batches, so a run resumes with
any number of processes. Rank 0 writes checkpoints, metrics and the run's files.

Why not ``DistributedDataParallel``: a sandwich step runs four forward and backward passes
over different sub-networks, each leaving other parameters unused. DDP would need
``find_unused_parameters=True`` (a graph traversal per backward) and ``no_sync`` around all
but the last pass, and it averages gradients without weights (wrong for a last batch that
does not split evenly). One flat all-reduce after the step's backward passes is all the
sandwich needs, and it keeps "no gradient" apart from "zero gradient" (AdamW skips the
former, but would decay the weights of the latter).

Two ways to start the processes (``join``): ``hwnas train --nproc N`` on one machine (a file
rendezvous and loopback sockets, ``launch``), or ``torchrun`` for several machines, which
sets ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT``. Where the ranks train
(``Ranks.device``, from ``--train-device``, ``resolve_train_device``): on the CPU they talk
over gloo; on GPUs each rank takes ``cuda:LOCAL_RANK`` and they talk over NCCL, the
gradients and losses summed as GPU tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from supernet.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: the command line reads this module before --help
    import torch

# What ``--train-device`` accepts; ``auto`` is cuda where torch sees a GPU, else cpu.
TRAIN_DEVICES = ("auto", "cpu", "cuda")

# Set by ``launch`` for the processes it starts: the rendezvous (``file://...``). Its presence
# also tells a command that its parent holds the run folder's lock.
INIT_ENV = "HWNAS_DIST_INIT"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a data-parallel run (``world == 1``: alone),
    and the device it trains on (``cpu``, ``cuda`` or ``cuda:N``): the models, the batches and
    the tensors of the collectives live there."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Whether this rank writes the run's files."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """The slice ``[lo, hi)`` of a batch of ``n`` examples that this rank takes."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of ``batch`` (every tensor's first dimension); the padding width is
        the global batch's."""
        if self.world == 1:
            return batch
        lo, hi = self.bounds(len(batch["labels"]))
        return {k: v[lo:hi] for k, v in batch.items()}

    def reduce_gradients(self, model: torch.nn.Module, weight: float) -> None:
        """Sum ``weight * grad`` over the ranks, in place (``weight``: this rank's share of the
        batch). A parameter left without a gradient on every rank keeps none."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        params = list(model.parameters())
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(has)
        used = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
        if not used:
            return
        flat = torch.cat([(p.grad * weight if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
        dist.all_reduce(flat)
        offset = 0
        for p in used:
            n = p.numel()
            p.grad = flat[offset: offset + n].view_as(p).clone()
            offset += n

    def mean(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """Batch means of per-rank means (``weight``: this rank's share of the batch)."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] * weight for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def barrier(self) -> None:
        """Wait until every rank is here (e.g. until rank 0 has written a file the others read)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


SINGLE = Ranks()


def resolve_train_device(name: str) -> str:
    """``--train-device`` as the device to train on: ``cpu`` or ``cuda`` (``auto``: cuda where
    torch sees a GPU, else cpu); ConfigError for ``cuda`` without one."""
    if name not in TRAIN_DEVICES:
        raise ConfigError(f"the training device must be one of {', '.join(TRAIN_DEVICES)}, got {name!r}")
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--train-device cuda, but torch {torch.__version__} sees no GPU (torch.cuda.is_available() "
                          "is False): train with --train-device cpu (or auto), or install a CUDA build of torch on a "
                          "machine with an NVIDIA GPU")
    return name


def launched_rank() -> int:
    """The rank a launcher gave this process (``RANK``; 0 when not launched)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def holds_parent_lock() -> bool:
    """Whether this process was started by ``launch`` (whose process holds the run's lock) or is
    a rank other than 0 of ``torchrun`` (rank 0 takes the lock)."""
    return INIT_ENV in os.environ or launched_rank() != 0


def join(device: str = "cpu") -> Ranks:
    """Join the process group described by the environment (``launch`` or ``torchrun``) to
    train on ``device`` (``resolve_train_device``), or train alone there when there is none
    (no ``WORLD_SIZE``, or 1). On cuda, each rank takes the GPU ``LOCAL_RANK`` and the ranks
    talk over NCCL; on the CPU, over gloo."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local + 1)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole numbers ({e})") from None
    if world <= 1:
        return Ranks(device=device)
    import torch.distributed as dist

    backend, gpu = "gloo", None
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if max(local + 1, local_world) > gpus:  # checked by every rank alike, so rank 0 says it
            raise ConfigError(f"{local_world} processes on this machine need as many GPUs (each trains on "
                              f"cuda:LOCAL_RANK), but it has {gpus}: start at most one process per GPU")
        device, backend, gpu = f"cuda:{local}", "nccl", torch.device("cuda", local)
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        # device_id binds NCCL's communicator (and its barriers) to this rank's GPU.
        dist.init_process_group(backend, init_method=os.environ.get(INIT_ENV, "env://"), rank=rank, world_size=world,
                                device_id=gpu)
    return Ranks(rank, world, device)


def leave(ranks: Ranks) -> None:
    """Leave the process group that ``join`` joined."""
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch(argv: Sequence[str], nproc: int, rendezvous_dir: str) -> int:
    """Run ``python -m nas.cli *argv`` as ``nproc`` ranks on this machine; the exit of the first rank that failed (the others are then stopped), else 0.

    The ranks meet through a file in ``rendezvous_dir`` and talk over loopback (gloo's
    ``GLOO_SOCKET_IFNAME=lo``, and NCCL's ``NCCL_SOCKET_IFNAME=lo`` for its bootstrap, unless
    set); each gets ``cores / nproc`` threads unless
    ``OMP_NUM_THREADS`` is set."""
    init = os.path.join(os.path.abspath(rendezvous_dir), f"rendezvous-{os.getpid()}-{time.time_ns()}")
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), INIT_ENV: f"file://{init}"}
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
        env.setdefault("OMP_NUM_THREADS", threads)
        procs.append(subprocess.Popen([sys.executable, "-m", "nas.cli", *argv], env=env))
    done: set[int] = set()
    first_failure = 0
    try:
        while len(done) < nproc:
            for i, p in enumerate(procs):
                if i not in done and p.poll() is not None:
                    done.add(i)
                    if p.returncode != 0 and not first_failure:
                        # A lost rank leaves the others waiting in a collective: stop them.
                        first_failure = p.returncode if p.returncode > 0 else 128 - p.returncode
                        for q in procs:
                            if q.poll() is None:
                                q.terminate()
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.path.exists(init):
            os.remove(init)
    return first_failure

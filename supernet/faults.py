"""Named kill points, so that the crash tests can kill ``hwnas`` exactly where they mean to.

``HWNAS_FAULT=<point>:<n>`` in the environment makes the process kill itself with SIGKILL the
``n``-th time it reaches ``<point>`` (a crash that runs no ``finally``, ``atexit`` or signal
handler, like a power loss of the process or the OOM killer). Unset, ``hit`` is a no-op.
A site is one line, ``faults.hit("measure.row")``; the points (``tests/test_crash.py`` kills
at each and checks the resumed result):

==================== ==========================================================================
``io.replace``        an atomic write, its temporary file complete but not yet renamed over
``train.checkpoint``  a training checkpoint mid-swap: the old one moved aside, the new one not
                      yet in place (teacher, supernet and the export's fine-tuning)
``measure.row``       a sweep, just after a sub-network's measurement rows were appended
``search.trial``      an Optuna trial, asked for but not yet told (left RUNNING in the study)
``export.write``      the export, after ``pytorch/`` and ``hf/`` but before ``model.onnx``
==================== ==========================================================================
"""

from __future__ import annotations

import os
import signal

from supernet.errors import ConfigError

POINTS = ("io.replace", "train.checkpoint", "measure.row", "search.trial", "export.write")


def _parse(spec: str | None) -> tuple[str | None, int]:
    if not spec:
        return None, 0
    point, _, n = spec.rpartition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise ConfigError(f"HWNAS_FAULT={spec!r}: expected <point>:<n> with n >= 1 and a point in {list(POINTS)}")
    return point, int(n)


_POINT, _N = _parse(os.environ.get("HWNAS_FAULT"))
_hits = 0


def hit(point: str) -> None:
    """Count a visit to ``point``; SIGKILL this process on the ``n``-th (``HWNAS_FAULT``)."""
    global _hits
    if point != _POINT:
        return
    _hits += 1
    if _hits == _N:
        os.kill(os.getpid(), signal.SIGKILL)

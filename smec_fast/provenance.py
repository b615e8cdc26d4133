"""Which source a result came from: the git commit of the checkout the package runs from.

A run's ``metrics.json`` and a sweep's ``sweep.json`` record it, so that a table can be traced to the code
that produced it. Only a checkout counts: an installed copy (site-packages, a wheel) has no commit of its
own, even when it sits inside some other repository, and gives ``None``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
# What decides a run's behaviour; edits elsewhere (docs, results, benchmarks) do not make it "dirty".
SOURCE_PATHS = ("smec_fast", "kernels", "setup.py")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def git_revision(root: Path = SOURCE_ROOT, paths: tuple[str, ...] = SOURCE_PATHS) -> str | None:
    """HEAD's commit of the git checkout at ``root``, with ``+dirty`` where tracked files under ``paths``
    (git pathspecs, relative to ``root``) have uncommitted changes; ``None`` when ``root`` is not the top of
    a git checkout or git is not there."""
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *paths)
        return _git(root, "rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def source_revision() -> str | None:
    """The commit the running package comes from (see ``git_revision``), looked up once per process: a
    process runs the code it imported, so ``train`` and ``run_sweep`` look it up when they start, and
    later commits to the checkout do not change what the process reports."""
    return git_revision()

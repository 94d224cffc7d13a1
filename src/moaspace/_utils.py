"""Small shared helpers: atomic file writes, id formatting, seeding."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from moaspace.errors import InputError, MoaspaceError


def preview(ids: Iterable, n: int = 10) -> str:
    """Format the first ``n`` ids of a collection for an error message."""
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:n])
    more = f" ... (+{len(ids) - n} more)" if len(ids) > n else ""
    return f"[{shown}{more}]"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and an existing file at
    ``path`` is left untouched, so readers never see a half-written output.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_file():
        # a directory, device, FIFO or socket: a rename would replace it (as root, even
        # /dev/null) with a regular file
        raise InputError(f"{path} exists and is not a regular file; refusing to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MoaspaceError(f"cannot create output directory {parent}: {exc}") from exc
    if not os.access(parent, os.W_OK):
        raise MoaspaceError(f"output directory is not writable: {parent}")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent
    )
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def check_output(out: str | os.PathLike, inputs: Iterable, *, option: str = "--out",
                 directory: bool = False) -> Path:
    """Refuse an output path that would destroy data: one of the command's ``inputs``
    (or a file inside an input directory), or, for a file output, anything but a
    regular file or nothing. Called before any work, so a refusal leaves no output."""
    out = Path(out)
    exists = out.exists() or out.is_symlink()
    if directory and exists and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a directory")
    if not directory and exists and not out.is_file():
        raise InputError(f"{option} {out} exists and is not a regular file; refusing to "
                         "replace it")
    for path in inputs:
        if path is None:
            continue
        path = Path(path)
        if _same_file(out, path):
            raise InputError(f"{option} {out} is an input of this command; refusing to "
                             "overwrite it (write to another path)")
        if path.is_dir() and exists and out.is_file() and path.resolve() in out.resolve().parents:
            raise InputError(f"{option} {out} is a file of the input directory {path}; "
                             "refusing to overwrite it (write to another path)")
    return out


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the body is done, then raise KeyboardInterrupt.

    h5py writes run in C callbacks where a KeyboardInterrupt raised by Python's default
    handler can be lost (the write then finishes and the command exits 0). Inside an
    :func:`atomic_path` block the deferred interrupt still comes before the rename, so an
    interrupted write leaves no output. Outside the main thread signals cannot be
    handled; the body then runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (if imported) torch; return a NumPy generator."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may use the legacy global
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return np.random.default_rng(seed)


def provenance() -> dict:
    """What a result file records about the code that made it: the moaspace version, the git
    commit of the source tree (None outside a git checkout; ``+dirty`` with local changes)
    and the command line."""
    import subprocess
    import sys

    from moaspace._version import __version__

    here = Path(__file__).resolve().parent
    commit = None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=here, capture_output=True, text=True, timeout=10)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"moaspace_version": __version__, "git_commit": commit, "argv": list(sys.argv)}


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a directory, expected a file: {path}")
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib Figure as PNG atomically, then close it (figures of a batch run
    would otherwise pile up in pyplot's registry)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path

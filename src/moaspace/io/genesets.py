"""Gene-set libraries in GMT format (local files only; nothing is downloaded)."""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

from moaspace._utils import require_file
from moaspace.errors import InputError

BUNDLED = {"reactome": "reactome.gmt.gz"}


def bundled_gmt(name: str = "reactome") -> Path:
    """Path of a gene-set library shipped inside the package."""
    if name not in BUNDLED:
        raise InputError(f"unknown bundled gene-set library {name!r}; have {sorted(BUNDLED)}")
    return Path(str(resources.files("moaspace.resources") / BUNDLED[name]))


def read_gmt(path: str | os.PathLike, min_size: int = 1) -> dict[str, list[str]]:
    """Read a ``.gmt`` or ``.gmt.gz``: name<TAB>description<TAB>gene<TAB>gene..."""
    path = require_file(path, "gene-set file")
    opener = gzip.open if str(path).endswith(".gz") else open
    sets: dict[str, list[str]] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                parts = line.rstrip("\n\r").split("\t")
                if len(parts) < 3:
                    if line.strip():
                        raise InputError(
                            f"{path}:{line_no}: GMT line needs name, description and genes"
                        )
                    continue
                genes = list(dict.fromkeys(g.strip() for g in parts[2:] if g.strip()))
                if len(genes) >= min_size:
                    sets[parts[0].strip()] = genes
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read GMT ({exc})") from exc
    if not sets:
        raise InputError(f"{path}: no gene sets found")
    return sets

"""Gene-set libraries in GMT format (local files only; nothing is downloaded).

Two libraries ship with the package (``moaspace/resources``): MSigDB **Hallmark** (50 sets,
CC BY 4.0, Liberzon et al. 2015; licence and citation in ``hallmark.LICENSE.txt``), the
default because it fits the 978 landmark genes (median 22 landmark genes per set), and
**Reactome** (2,546 pathways; median 2 landmark genes per pathway, so most are too small to
test on landmark genes alone).
"""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

from moaspace._utils import require_file
from moaspace.errors import InputError

BUNDLED = {"hallmark": "hallmark.gmt.gz", "reactome": "reactome.gmt.gz"}
#: the library ``explain`` tests by default
DEFAULT_LIBRARY = "hallmark"


def bundled_gmt(name: str = "reactome") -> Path:
    """Return the path of a gene-set library shipped inside the package.

    Parameters
    ----------
    name : str, default "reactome"
        Library name, a key of ``BUNDLED`` (``"hallmark"`` or ``"reactome"``).

    Returns
    -------
    pathlib.Path
        The gzipped GMT file in ``moaspace.resources`` (read it with :func:`read_gmt`).

    Raises
    ------
    InputError
        If ``name`` is not a bundled library.
    """
    if name not in BUNDLED:
        raise InputError(f"unknown bundled gene-set library {name!r}; have {sorted(BUNDLED)}")
    return Path(str(resources.files("moaspace.resources") / BUNDLED[name]))


def read_gmt(path: str | os.PathLike, min_size: int = 1) -> dict[str, list[str]]:
    """Read a ``.gmt`` or ``.gmt.gz`` gene-set file.

    Each line is name<TAB>description<TAB>gene<TAB>gene...; blank lines are skipped,
    gene names are stripped and de-duplicated (first occurrence kept), and a set named
    twice keeps its last line. Paths ending in ``.gz`` are read with gzip.

    Parameters
    ----------
    path : str or os.PathLike
        The GMT file (UTF-8 text, optionally gzipped).
    min_size : int, default 1
        Sets with fewer distinct genes are left out.

    Returns
    -------
    dict of str to list of str
        Set name -> its genes, in file order.

    Raises
    ------
    InputError
        If the file is missing or unreadable (not UTF-8, damaged gzip), a non-blank line
        has fewer than three tab-separated fields, or no gene set is left.
    """
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


def load_gene_sets(spec=None) -> tuple[dict[str, list[str]], str]:
    """Gene sets from a bundled library name, a GMT path or a dict.

    Parameters
    ----------
    spec : dict, str, os.PathLike or None, default None
        ``None``: the default library (``DEFAULT_LIBRARY``, Hallmark); a key of ``BUNDLED``
        (``"hallmark"``, ``"reactome"``); a path to a ``.gmt``/``.gmt.gz`` file; or a dict of
        set name -> gene symbols (used as given).

    Returns
    -------
    sets : dict of str to list of str
        Set name -> gene symbols.
    name : str
        The library's name (bundled name, the file path, or ``"custom"`` for a dict).

    Raises
    ------
    InputError
        If a path is missing or unreadable (see :func:`read_gmt`).
    """
    if isinstance(spec, dict):
        return spec, "custom"
    if spec is None:
        spec = DEFAULT_LIBRARY
    if isinstance(spec, str) and spec.lower() in BUNDLED:
        return read_gmt(bundled_gmt(spec.lower())), spec.lower()
    return read_gmt(spec), str(spec)

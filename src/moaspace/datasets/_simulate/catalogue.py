"""The catalogue of mechanisms of action the simulator draws from.

The entries are data, not code: ``moaspace/resources/moa_catalogue.json``, read
once at import into :class:`MoaSpec` objects (:data:`MOA_CATALOGUE`). The order
of the entries is part of the random-stream layout (MoAs are drawn by index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["MOA_CATALOGUE", "MoaSpec"]

CATALOGUE_RESOURCE = "moa_catalogue.json"


@dataclass(frozen=True)
class MoaSpec:
    """One mechanism of action of the catalogue the simulator draws from.

    ``pathways`` are Reactome pathway names (exactly as in the bundled GMT);
    ``targets`` gene symbols; ``strength`` one of strong/medium/weak
    (transcriptional activity); ``cytotoxic`` the weight of the generic
    proliferation/stress program; ``prevalence`` how many compounds the MoA
    tends to have (weak CNS-type classes are the large ones in LINCS);
    ``cells`` multiplies the response in named cell lines (lineage dependence;
    other lines get ``other_cells``).
    """

    name: str
    targets: tuple[str, ...]
    pathways: tuple[str, ...]
    strength: str = "medium"
    cytotoxic: float = 0.0
    prevalence: float = 1.0
    cells: tuple[tuple[str, float], ...] = ()
    other_cells: float = 1.0


def _spec(entry: dict) -> MoaSpec:
    """A :class:`MoaSpec` from one JSON entry (lists become tuples)."""
    fields = dict(entry)
    fields["targets"] = tuple(fields["targets"])
    fields["pathways"] = tuple(fields["pathways"])
    if "cells" in fields:
        fields["cells"] = tuple((str(cell), float(gain)) for cell, gain in fields["cells"])
    return MoaSpec(**fields)


def load_catalogue() -> tuple[MoaSpec, ...]:
    """Read the bundled MoA catalogue (``moaspace/resources/moa_catalogue.json``)."""
    text = (resources.files("moaspace.resources") / CATALOGUE_RESOURCE).read_text("utf-8")
    return tuple(_spec(entry) for entry in json.loads(text)["moas"])


MOA_CATALOGUE: tuple[MoaSpec, ...] = load_catalogue()

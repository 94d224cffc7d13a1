"""Merge two `moaspace benchmark` output directories run on the same data, splits and seeds.

Records of BASE are kept except for the methods UPDATE holds, which replace them (e.g. a
`--methods reference` rerun after a change to that method alone). The merged
results.json/.md/.png go to --out, and the meta records both commands.

    python benchmarks/merge_results.py bench_all bench_reference --out bench_merged
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from moaspace._utils import provenance
from moaspace.benchmark._run import write_benchmark


def _meta(directory: Path) -> dict:
    text = (directory / "results.md").read_text() if (directory / "results.md").exists() else ""
    found = re.search(r"```\n(\{.*\})\n```", text, re.S)
    return json.loads(found.group(1)) if found else {}


def merge(base: Path, update: Path) -> tuple[list[dict], dict]:
    old = json.loads((base / "results.json").read_text())
    new = json.loads((update / "results.json").read_text())
    replaced = {r["method"] for r in new}
    keys = {(r["scheme"], r["seed"]) for r in old}
    if not {(r["scheme"], r["seed"]) for r in new} <= keys:
        raise SystemExit(f"{update} has schemes/seeds that {base} lacks: not the same runs")
    records = [r for r in old if r["method"] not in replaced] + new
    meta = {"merged": {"base": _meta(base), "update": _meta(update),
                       "replaced_methods": sorted(replaced)},
            **provenance()}
    return records, meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", type=Path)
    p.add_argument("update", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    records, meta = merge(args.base, args.update)
    write_benchmark(records, args.out, meta)
    print(f"{len(records)} records -> {args.out}")


if __name__ == "__main__":
    main()

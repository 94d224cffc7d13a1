"""Run `moaspace benchmark` with an earlier source tree and with this one, side by side.

The same data, splits and seeds go through both; the earlier code's methods are renamed
``<method>@before`` and the merged table gives every method's paired difference with this
checkout's ``moaspace``, seed by seed:

    git worktree add /tmp/before 421e35b
    python benchmarks/before_after.py real.h5ad --before-src /tmp/before/src \\
        --out benchmarks/results/before_after_real --cv 5 --seeds 0,1,2 --max-epochs 60

``--methods`` (default ``moaspace``) are run by both; ``--after-methods`` only by this
checkout (e.g. the baselines, which the change does not touch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from moaspace._utils import provenance
from moaspace.benchmark._run import write_benchmark

HERE = Path(__file__).resolve().parents[1]


def _run(src: Path, data: Path, out: Path, methods: str, args) -> list[dict]:
    cmd = [sys.executable, "-m", "moaspace.cli", "-q", "benchmark", str(data), "--out",
           str(out), "--seeds", args.seeds, "--max-epochs", str(args.max_epochs),
           "--methods", methods]
    cmd += ["--cv", str(args.cv)] if args.cv else ["--scheme", args.scheme]
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=HERE)
    print(f"{src}: {methods} in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((out / "results.json").read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--before-src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cv", type=int, default=0)
    p.add_argument("--scheme", default="compound")
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--methods", default="moaspace")
    p.add_argument("--after-methods", default="")
    args = p.parse_args(argv)
    before = _run(args.before_src, args.data, args.out / "before", args.methods, args)
    after_methods = ",".join(m for m in (args.methods, args.after_methods) if m)
    after = _run(HERE / "src", args.data, args.out / "after", after_methods, args)
    for record in before:
        record["method"] = f"{record['method']}@before"
    meta = {"data": str(args.data), "before_src": str(args.before_src),
            "seeds": args.seeds, "cv": args.cv, "scheme": args.scheme,
            "max_epochs": args.max_epochs, **provenance()}
    write_benchmark(before + after, args.out, meta)
    print(f"{len(before) + len(after)} records -> {args.out}")


if __name__ == "__main__":
    main()

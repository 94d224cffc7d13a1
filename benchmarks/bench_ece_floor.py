"""How large an ECE sampling noise alone gives, next to the ECE an open-set run measured (#28).

ECE over few rows is biased upwards: even a perfectly calibrated predictor gets a positive
ECE from the binomial noise of each bin's accuracy. The open-set benchmark's acceptance
asks for an ECE of the known calls of at most 0.08, measured on about 80 known test drugs
per seed on the real consensus set. This script reads a ``bench_openset.py`` result file,
takes the confidences of moaspace's calibrated known calls (pooled over its seeds, from the
stored reliability table: each row at its bin's mean confidence), and draws outcomes that
are right with exactly that probability: the ECE of a perfectly calibrated predictor with
the same confidences, at the run's rows per seed and at all its rows pooled. The measured
ECE is set beside it, in the same table.

    python benchmarks/bench_ece_floor.py                         # bench_openset_real.json
    python benchmarks/bench_ece_floor.py --name bench_openset_pooled

Writes ``benchmarks/results/bench_ece_floor_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from moaspace._utils import provenance
from moaspace.model.calibration import expected_calibration_error

OUT = Path(__file__).resolve().parent / "results"


def floor_ece(confidence: np.ndarray, n_rows: int, *, draws: int, n_bins: int,
              rng: np.random.Generator) -> np.ndarray:
    """ECEs of ``draws`` samples of ``n_rows`` confidences (with replacement), each row right
    with probability equal to its confidence: a calibrated predictor's ECE."""
    out = np.empty(draws)
    for i in range(draws):
        conf = rng.choice(confidence, n_rows)
        out[i] = expected_calibration_error(conf, rng.random(n_rows) < conf, n_bins)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="bench_openset_real",
                    help="result file of bench_openset.py (without .json)")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = json.loads((OUT / f"{args.name}.json").read_text())
    after = run["pooled"]["moaspace"]["after"]
    bins = [b for b in after["reliability"] if b["n"]]
    confidence = np.concatenate([np.full(b["n"], b["confidence"]) for b in bins])
    n_bins = len(after["reliability"])
    per_seed = [r["methods"]["moaspace"]["chosen"] for r in run["runs"]]
    measured = np.array([c["ece_after"] for c in per_seed])
    n_known = round(float(np.mean([c["n_known"] for c in per_seed])))
    rng = np.random.default_rng(args.seed)
    rows = []
    for label, n, ece in (("per seed", n_known, float(measured.mean())),
                          ("pooled", len(confidence), float(after["ece"]))):
        floor = floor_ece(confidence, n, draws=args.draws, n_bins=n_bins, rng=rng)
        rows.append({"scope": label, "rows": int(n), "measured_ece": ece,
                     "calibrated_ece_mean": float(floor.mean()),
                     "calibrated_ece_sd": float(floor.std(ddof=1)),
                     "share_of_calibrated_at_or_below_0.08": float((floor <= 0.08).mean()),
                     "measured_minus_floor_in_sd": float((ece - floor.mean()) / floor.std(ddof=1))})
    print(f"ECE of moaspace's known calls in {args.name} ({len(per_seed)} seeds) against the ECE "
          f"of a perfectly calibrated predictor with the same confidences ({args.draws} draws):\n")
    print("| scope | rows | measured ECE | calibrated predictor's ECE (mean ± sd) | "
          "calibrated draws with ECE <= 0.08 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scope']} | {r['rows']} | {r['measured_ece']:.3f} | "
              f"{r['calibrated_ece_mean']:.3f} ± {r['calibrated_ece_sd']:.3f} | "
              f"{r['share_of_calibrated_at_or_below_0.08']:.0%} |")
    out = {**provenance(), "source": f"{args.name}.json", "source_commit": run.get("git_commit"),
           "n_bins": n_bins, "draws": args.draws, "seed": args.seed, "rows": rows}
    path = OUT / f"bench_ece_floor_{args.name.removeprefix('bench_')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

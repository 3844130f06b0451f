"""The steps of examples/park_fit.py, each run as a job: `python3 steps.py STEP ARGS...`.

Only the standard library, so it runs on any Python 3 and in the jobnest image. Each step reads
its inputs and writes into the output folder it is given.
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def reduction(args: argparse.Namespace) -> None:
    """Average the repeated measurements at each x."""
    with open(args.raw) as f:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
    if len(rows) < args.min_points:
        sys.exit(f"reduction: only {len(rows)} points, fewer than --min-points {args.min_points}")
    by_x = defaultdict(list)
    for x, y in rows:
        by_x[x].append(y)
    with open(Path(args.out) / "reduced.csv", "w") as f:
        f.write("x,y,n\n")
        for x in sorted(by_x):
            f.write(f"{x:g},{sum(by_x[x]) / len(by_x[x]):.6f},{len(by_x[x])}\n")
    print(f"reduced {len(rows)} points to {len(by_x)}")


def fetch(args: argparse.Namespace) -> None:
    """Take the reduced data the fit needs: x, y and a weight per point."""
    with open(Path(args.reduced) / "reduced.csv") as f:
        points = [{"x": float(r["x"]), "y": float(r["y"]), "w": float(r["n"])} for r in csv.DictReader(f)]
    (Path(args.out) / "data.json").write_text(json.dumps(points))
    print(f"fetched {len(points)} points")


def upload(args: argparse.Namespace) -> None:
    """Check the model description and keep it for the model builder."""
    description = json.loads(Path(args.description).read_text())
    missing = {"name", "expression", "parameters"} - set(description)
    if missing:
        sys.exit(f"upload: the model description lacks {', '.join(sorted(missing))}")
    (Path(args.out) / "model.json").write_text(json.dumps(description, sort_keys=True))
    print(f"uploaded model {description['name']!r}")


def model(args: argparse.Namespace) -> None:
    """Build the model: here, a straight line with its starting parameters."""
    description = json.loads((Path(args.uploaded) / "model.json").read_text())
    if set(description["parameters"]) != {"slope", "intercept"}:
        sys.exit("model: only the line slope * x + intercept is built here")
    (Path(args.out) / "model.json").write_text(json.dumps({"kind": "line", **description}))
    print(f"built model {description['name']!r}")


def fit(args: argparse.Namespace) -> None:
    """Weighted least squares of the line to the data; the fit is this job's result."""
    points = json.loads((Path(args.data) / "data.json").read_text())
    built = json.loads((Path(args.model) / "model.json").read_text())
    sw = sum(p["w"] for p in points)
    mx = sum(p["w"] * p["x"] for p in points) / sw
    my = sum(p["w"] * p["y"] for p in points) / sw
    slope = sum(p["w"] * (p["x"] - mx) * (p["y"] - my) for p in points) / sum(p["w"] * (p["x"] - mx) ** 2
                                                                               for p in points)
    intercept = my - slope * mx
    chisq = sum(p["w"] * (p["y"] - slope * p["x"] - intercept) ** 2 for p in points)
    result = {"model": built["name"], "slope": round(slope, 6), "intercept": round(intercept, 6),
              "chisq": round(chisq, 6)}
    (Path(args.out) / "result.json").write_text(json.dumps(result))
    print(f"fit: y = {slope:.3f} x + {intercept:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    steps = parser.add_subparsers(dest="step", required=True)
    for step, inputs in (("reduction", ["raw"]), ("fetch", ["reduced"]), ("upload", ["description"]),
                         ("model", ["uploaded"]), ("fit", ["data", "model"])):
        sub = steps.add_parser(step)
        for name in inputs:
            sub.add_argument(name)
        sub.add_argument("out")
        if step == "reduction":
            sub.add_argument("--min-points", type=int, default=1)
    args = parser.parse_args()
    globals()[args.step](args)


if __name__ == "__main__":
    main()

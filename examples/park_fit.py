"""PARK's fitting workflow as jobs: reduce raw measurements, fetch the reduced data, upload a
model description, build the model, and fit it, with `when=` conditions between them.

    python examples/park_fit.py --broken   # the reduction fails: fetch and fit are cancelled,
                                           # while upload and model run
    python examples/park_fit.py            # fixed: upload and model are reused, the rest runs

The steps' code (park/steps.py) and data travel as uploads, so they are part of each step's
signature and the same driver works against a remote controller and in containers:

    JOBNEST_EXECUTOR=docker JOBNEST_IMAGE=jobnest/jobnest:latest python examples/park_fit.py
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import jobnest

PARK = Path(__file__).resolve().parent / "park"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broken", action="store_true", help="reduce with a setting that makes it fail")
    args = parser.parse_args()
    client = jobnest.connect()
    code = jobnest.upload(PARK / "steps.py")
    with client.batch() as batch:  # one request; the steps name each other before they exist

        def step(name: str, *argv: str, inputs: dict[str, Any], **options: Any) -> jobnest.Job:
            return batch.submit(["python3", "{inputs.code}", name, *argv, "{output}"], name=name, cpu=0.25,
                                inputs={"code": code, **inputs}, **options)

        reduction = step("reduction", "{inputs.raw}", "--min-points", "1000" if args.broken else "10",
                         inputs={"raw": jobnest.upload(PARK / "measurements.csv")})
        fetch = step("fetch", "{inputs.reduced}", inputs={"reduced": reduction.output}, when=reduction.succeeded)
        upload = step("upload", "{inputs.description}", inputs={"description": jobnest.upload(PARK / "model.json")})
        model = step("model", "{inputs.uploaded}", inputs={"uploaded": upload.output}, when=upload.succeeded)
        fit = step("fit", "{inputs.data}", "{inputs.model}", inputs={"data": fetch.output, "model": model.output},
                   when=fetch.succeeded & model.succeeded)
    client.wait([job.uuid for job in (reduction, fetch, upload, model, fit)])
    print(client.tree())
    if fit.state != "succeeded":
        sys.exit(f"fit {fit.state}: {fit.info.reason}")
    print("fit:", fit.result())


if __name__ == "__main__":
    main()

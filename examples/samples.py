"""Ten samples through QC, align and merge, submitted as one graph; `--broken 3` truncates sample
3's reads, so its QC fails, and the driver's own output says which sample broke and why:

    python examples/samples.py --broken 3   # qc-3 fails: align-3 and merge are cancelled, naming it
    python examples/samples.py              # fixed: only qc-3, align-3 and merge run again

The reads are uploads, so they are part of each step's signature: the nine good samples' QC and
alignment are reused on the rerun.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import jobnest

SAMPLES = 10
QC = ("n=$(wc -l < {inputs.reads}); if [ $n -lt 8 ]; then echo \"$(basename {inputs.reads}): truncated, "
      "$n lines\" >&2; exit 3; fi; echo $n > {output}/lines")
ALIGN = "tr ACGT TGCA < {inputs.reads} > {output}/aligned"


def reads(folder: Path, sample: int, broken: bool) -> Path:
    path = folder / f"sample-{sample}.fq"
    records = [f"@read{i}\n{'ACGT'[sample % 4] * 8}{'GATC'[i % 4] * 4}\n+\n{'I' * 12}\n" for i in range(2)]
    path.write_text("".join(records)[: 30 if broken else None])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broken", type=int, metavar="N", help="truncate sample N's reads")
    args = parser.parse_args()
    client = jobnest.connect()
    folder = Path(tempfile.mkdtemp(prefix="samples-"))
    with client.batch() as batch, client.defaults(cpu=0.25):  # the whole graph in one request
        steps, aligned = [], {}
        for s in range(SAMPLES):
            fastq = jobnest.upload(reads(folder, s, s == args.broken))
            qc = batch.submit(["sh", "-c", QC], name=f"qc-{s}", inputs={"reads": fastq})
            align = batch.submit(["sh", "-c", ALIGN], name=f"align-{s}", inputs={"reads": fastq}, when=qc.succeeded)
            steps += [qc, align]
            aligned[f"a{s}"] = align.output
        merge = batch.submit(["sh", "-c", "cat " + " ".join(f"{{inputs.a{s}}}/aligned" for s in range(SAMPLES))
                              + " > {output}/merged"], name="merge", inputs=aligned)
    client.wait([job.uuid for job in [*steps, merge]])
    print(client.tree())
    if merge.state != "succeeded":
        sys.exit(f"merge {merge.state}: {merge.info.reason}")
    print(f"merged {len((merge.output.download(folder / 'out') / 'merged').read_text().splitlines())} lines")


if __name__ == "__main__":
    main()

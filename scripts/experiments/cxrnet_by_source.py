"""Cross-tabulate test predictions by image source (ieee8023 / Kermany), true and predicted class.

Used for CXRNet's four classes and DeepCOVIDExplainer's three. The real classes come from two sources
(COVID-19 only from ieee8023, most others from Kermany), so a classifier can learn the source instead of the
disease; this table shows whether it did.
Usage: python scripts/experiments/cxrnet_by_source.py DATALIST.json PREDICTIONS.csv [--split test]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path


def by_source(datalist: Path, predictions: Path, split: str = "test") -> collections.Counter:
    """Count (source, true class, predicted class) over the cases of ``predictions`` (matched by file stem)."""
    records = {Path(r["image"]).name.split(".")[0]: r for r in json.loads(datalist.read_text())[split]}
    counts: collections.Counter = collections.Counter()
    with open(predictions) as handle:
        for row in csv.DictReader(handle):
            record = records[row["case"]]
            counts[(record.get("source", "?"), record["class_name"], row["predicted_name"])] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print("source\ttrue class\tpredicted class\tcount")
    for key, count in sorted(by_source(args.datalist, args.predictions, args.split).items()):
        print(*key, count, sep="\t")


if __name__ == "__main__":
    main()

"""Numbers a notebook's prose quotes from its outputs that a re-executed copy of it no longer shows.

    python tools/prose_numbers.py nbs/experiments/E05_rank.ipynb /tmp/executed/E05_rank.ipynb

A decimal number in a markdown cell (0.1176, 1.13, 10.0) counts as quoted from the outputs when a number in the OLD
notebook's outputs rounds to it, and is reported when no number in the NEW notebook's outputs does: after a chapter is
re-executed, each reported number marks a sentence to re-read. Integers (step counts, seeds) are too common to match
this way, and numbers the prose derives (ratios, sums) or takes from the parameters are not checked. Exit status 1
when any number is reported.
"""

import argparse
import bisect
import json
import re
import sys
from pathlib import Path

# A decimal number, not part of a word, a version (1.2.3) or an exponent; a full stop ending a sentence may follow it.
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?!\w|\.\d)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.I)  # any number an output prints


def output_numbers(nb: dict) -> list:
    "Every number in the text outputs of a notebook (streams, plain-text and markdown results), sorted."
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts += ["".join(v) for k, v in out.get("data", {}).items() if k in ("text/plain", "text/markdown")]
    return sorted(float(m) for t in texts for m in NUMBER.findall(t))


def rounds_to(x: str, numbers: list) -> bool:
    "Whether one of the sorted `numbers` rounds to the decimal `x` at its printed precision."
    half = 0.5 * 10.0 ** -len(x.split(".")[1]) * (1 + 1e-9)
    i = bisect.bisect_left(numbers, float(x) - half)
    return i < len(numbers) and numbers[i] <= float(x) + half


def moved(old: dict, new: dict) -> dict:
    "Markdown cell index -> the decimals its prose quotes from `old`'s outputs that `new`'s outputs no longer show."
    was, now, found = output_numbers(old), output_numbers(new), {}
    for i, cell in enumerate(old["cells"]):
        if cell["cell_type"] == "markdown":
            quoted = dict.fromkeys(DECIMAL.findall("".join(cell["source"])))
            gone = [x for x in quoted if rounds_to(x, was) and not rounds_to(x, now)]
            if gone:
                found[i] = gone
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="the notebook as committed")
    ap.add_argument("new", type=Path, help="the same notebook, re-executed")
    args = ap.parse_args(argv)
    found = moved(*(json.loads(p.read_text()) for p in (args.old, args.new)))
    for i, xs in found.items():
        print(f"{args.old.name} cell {i}: {', '.join(xs)}")
    print(f"{sum(map(len, found.values()))} quoted numbers no longer in the outputs", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

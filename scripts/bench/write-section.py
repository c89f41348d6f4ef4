#!/usr/bin/env python3
"""Puts a benchmark's report into BENCHMARKS.md, between its own markers.

    write-section.py MARKER TITLE [--first] < REPORT

The section `<!-- MARKER:begin --> ... <!-- MARKER:end -->` is replaced, or
added (after the title paragraph with --first, else at the end), so the
benchmark scripts each keep their own part of the file.
"""
import re
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--first"]
    first = "--first" in sys.argv[1:]
    if len(args) != 2:
        sys.exit(__doc__)
    marker, title = args
    report = sys.stdin.read().rstrip("\n")
    path = "BENCHMARKS.md"
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n## {title}\n\n{report}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    elif first and "\n\n" in text:
        head, _, rest = text.partition("\n\n")
        text = head + "\n\n" + block + "\n\n" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

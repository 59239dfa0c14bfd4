#!/usr/bin/env python3
"""Checks that the include graph runs one way, from the ground up:

    common < kernels < ops < model and data < diagnostics < training < CLI

Every source and header under src/ and include/ is given its floor (FLOORS below); a file may
include headers of its own floor and of the floors under it, never of a floor above. Prints each
include that runs back up, with both floors, and exits 1 if there is one.

    python3 scripts/include_floors.py [REPO_ROOT]
"""
import os
import re
import sys

# Floor of each file, by the first pattern its path (relative to the repository) matches.
FLOORS = [
    ("common", 0, [r"src/common/", r"include/mhc/(errors|files|parse|live_bytes|format|table)\.h$"]),
    ("kernels", 1, [r"src/kernels/", r"include/mhc/variant\.h$"]),
    ("ops", 2, [r"src/ops/", r"include/mhc/(ops|module|recompute|deepseek_v4|machine)\.h$"]),
    ("model and data", 3, [r"src/model/", r"src/data/", r"include/mhc/(model|data)\.h$"]),
    ("diagnostics", 4, [r"src/diag/", r"include/mhc/(diag|deepseek_v4_checkpoint)\.h$"]),
    ("training", 5, [r"src/train/", r"include/mhc/(settings|optimizer|checkpoint|trainer|run_state|run_log|"
                                     r"sampling|distributed|pipeline)\.h$"]),
    ("CLI", 6, [r"src/cli/"]),
]
SOURCE = re.compile(r"\.(h|hpp|cpp|cu|cuh)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def floor_of(path):
    for name, level, patterns in FLOORS:
        if any(re.match(p, path) for p in patterns):
            return name, level
    return None


def resolve(root, including, target):
    """The repository path an include names: beside the including file, else under include/."""
    for base in (os.path.dirname(including), "include"):
        candidate = os.path.normpath(os.path.join(base, target))
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate
    return None


def main(root):
    files = []
    for top in ("src", "include"):
        for folder, _, names in os.walk(os.path.join(root, top)):
            files += [os.path.relpath(os.path.join(folder, n), root) for n in names if SOURCE.search(n)]
    unplaced, upward = [], []
    for path in sorted(files):
        own = floor_of(path)
        if own is None:
            unplaced.append(path)
            continue
        with open(os.path.join(root, path), encoding="utf-8") as f:
            text = f.read()
        for target in INCLUDE.findall(text):
            resolved = resolve(root, path, target)
            theirs = floor_of(resolved) if resolved else None
            if theirs and theirs[1] > own[1]:
                upward.append("%s (%s) includes %s (%s)" % (path, own[0], resolved, theirs[0]))
    for path in unplaced:
        print("no floor for %s: add it to FLOORS in scripts/include_floors.py" % path)
    for line in upward:
        print("runs back up: " + line)
    print("%d files on %d floors; %d includes run back up, %d files without a floor"
          % (len(files) - len(unplaced), len(FLOORS), len(upward), len(unplaced)))
    return 1 if upward or unplaced else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")))

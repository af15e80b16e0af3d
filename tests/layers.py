#!/usr/bin/env python3
"""The folders read bottom-up: a source file includes headers of its own layer or of layers below
it, never above (README "Layout"). Prints each include that goes up, and exits 1 if any does.

    python3 tests/layers.py [SOURCE_DIR]
"""
import os
import re
import sys

# Bottom-up; the first prefix that matches a path names its layer.
LAYERS = [
    ("vmm/base/", 0),
    ("disk/", 1),
    ("devices/", 2),   # virtio-blk serves disk images
    ("vmm/boot/", 3),
    ("vmm/api/", 5),
    ("vmm/cli/", 7),
    ("clone/", 6),
    ("vmm/", 4),       # the VM core (after its subfolders)
]


def layer(path):
    for prefix, rank in LAYERS:
        if path.startswith(prefix):
            return prefix, rank
    return None, None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    bad = checked = 0
    for top in ("vmm", "devices", "disk", "clone"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith((".cpp", ".hpp")):
                    continue
                path = os.path.relpath(os.path.join(dirpath, name), root)
                here, rank = layer(path)
                with open(os.path.join(root, path), encoding="utf-8") as f:
                    text = f.read()
                for m in re.finditer(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
                    there, their_rank = layer(m.group(1))
                    checked += 1
                    if their_rank is not None and their_rank > rank:
                        print(f"{path}: includes {m.group(1)}: {there} is above {here}")
                        bad += 1
    if checked == 0:
        print(f"no includes found under {root}")
        return 1
    print(f"{checked} includes checked, {bad} going up")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

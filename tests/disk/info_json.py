#!/usr/bin/env python3
"""Checks the JSON that `vmm disk info --json` (or `qemu-img info --output=json`) prints for an image.

usage: info_json.py [--qemu-img] VMM FILE KEY=VALUE...

KEY is a path into the JSON object, dots between levels and numbers for list items
("backing-chain.0.format"); VALUE is compared with the item's JSON text ("raw", 67108864, false),
and the value "-" means the key must be absent. Prints "json ok" when everything matches.
"""
import json
import subprocess
import sys


def lookup(obj, path):
    for part in path.split("."):
        if isinstance(obj, list):
            index = int(part)
            if index >= len(obj):
                raise KeyError(path)
            obj = obj[index]
        else:
            obj = obj[part]
    return obj


def main():
    args = sys.argv[1:]
    qemu = args and args[0] == "--qemu-img"
    if qemu:
        args = args[1:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    tool, image, checks = args[0], args[1], args[2:]
    cmd = [tool, "info", "--output=json", image] if qemu else [tool, "disk", "info", "--json", image]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"{' '.join(cmd)}: exit status {run.returncode}: {run.stderr.strip()}")
        return 1
    try:
        info = json.loads(run.stdout)
    except json.JSONDecodeError as e:
        print(f"{' '.join(cmd)}: not JSON ({e}):\n{run.stdout}")
        return 1
    bad = 0
    for check in checks:
        key, _, want = check.partition("=")
        try:
            got = lookup(info, key)
        except (KeyError, ValueError, TypeError):
            if want != "-":
                print(f"{key}: missing, expected {want}")
                bad += 1
            continue
        if want == "-":
            print(f"{key}: present ({json.dumps(got)}), expected absent")
            bad += 1
        elif json.dumps(got) != want and str(got) != want:
            print(f"{key}: {json.dumps(got)}, expected {want}")
            bad += 1
    print(json.dumps(info, indent=2))
    if bad:
        return 1
    print("json ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

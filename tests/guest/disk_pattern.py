#!/usr/bin/env python3
"""Disk images for the test guest's virtio-blk scenarios (guest-images/testguest/virtio.c).

usage: disk_pattern.py OUT SIZE SEED [SECTOR COUNT SEED]...
Byte o of the image is ((o >> 9) * 31 + (o & 511) * 7 + SEED) & 0xff, the same function the guest
uses; each SECTOR COUNT SEED triple overwrites that range with its own seed (what a guest write
leaves behind), so the result is the image the host expects after a scenario."""
import sys


def pattern(offset: int, length: int, seed: int) -> bytes:
    return bytes((((o >> 9) * 31 + (o & 511) * 7 + seed) & 0xFF) for o in range(offset, offset + length))


def main() -> int:
    if len(sys.argv) < 4 or (len(sys.argv) - 4) % 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out, size, seed = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
    image = bytearray(pattern(0, size, seed))
    rest = [int(a, 0) for a in sys.argv[4:]]
    for sector, count, s in zip(rest[0::3], rest[1::3], rest[2::3]):
        image[sector * 512:(sector + count) * 512] = pattern(sector * 512, count * 512, s)
    with open(out, "wb") as f:
        f.write(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())

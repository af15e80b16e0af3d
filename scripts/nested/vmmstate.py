# vmm's state file for the nested lane's debugging aids (vcpu-stacks.py, tg-report.py): its section
# table (clone/state_file.cpp: magic, version, count, length, then per section its id, offset and
# size), read without vmm.
import struct
import sys


def sections(state, who):
    """The sections of a state file's bytes, by id; exits naming `who` if it is not one."""
    magic, _major, _minor, count, _length = struct.unpack_from("<8sHHIQ", state, 0)
    if magic != b"VMMSTATE":
        sys.exit(f"{who}: not a vmm state file")
    pos, out = 24, {}
    for _ in range(count):
        n = state[pos]
        sid = state[pos + 1 : pos + 1 + n].decode()
        off, size = struct.unpack_from("<QQ", state, pos + 1 + n)
        out[sid] = state[off : off + size]
        pos += 1 + n + 16
    return out

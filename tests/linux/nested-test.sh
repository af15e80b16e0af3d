#!/usr/bin/env bash
# A ctest entry of the `linux` label: runs INNER (a script from tests/linux/) inside the nested lane
# with the vmm binary, the test guest, Debian's cloud kernel, the L2 initramfs and the dmesg allow
# list in /files (and the executables in $VMM_NESTED_BINS in /files/bin, the SRC:DEST files in
# $VMM_NESTED_FILES in /files; with VMM_NESTED_ROOTFS=MIB
# also a fresh ext4 root image of that size as /files/rootfs.ext4).
# usage: nested-test.sh VMM TESTGUEST INNER [ARG...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vmm=$1 testguest=$2 inner=$3
shift 3
kernel=${VMM_LINUX_KERNEL:-}
[[ -n $kernel ]] || kernel=$("$root/guest-images/linux/fetch-kernel.sh")
initramfs=$(VMM_LINUX_KERNEL=$kernel "$root/guest-images/linux/build-initramfs.sh")
extra=()
for b in ${VMM_NESTED_BINS:-}; do extra+=(--bin "$b"); done
for f in ${VMM_NESTED_FILES:-}; do extra+=(--file "$f"); done
if [[ -n ${VMM_NESTED_ROOTFS:-} ]]; then
  extra+=(--file "$("$root/guest-images/linux/build-rootfs.sh" "$VMM_NESTED_ROOTFS"):rootfs.ext4")
fi
exec "$root/scripts/nested/run.sh" --timeout "${VMM_NESTED_TIMEOUT:-300}" "${extra[@]}" \
  --bin "$vmm" --file "$testguest:testguest.elf" --file "$kernel:vmlinuz" --file "$initramfs:initramfs.cpio" \
  --file "$root/tests/linux/dmesg-allow.txt:dmesg-allow.txt" \
  "$root/tests/linux/$inner" "$@"

#!/usr/bin/env bash
# Disk benchmark: the test guest's blk-bench workload on vmm's virtio-blk and on QEMU's
# virtio-blk-pci, same raw file, measured in the same run (scripts/bench/disk-inner.sh). On a host
# without a usable /dev/kvm it runs inside the nested lane (scripts/nested/run.sh), where both VMMs
# run on L1's KVM: absolute numbers there are TCG's, the ratios compare like with like.
# usage: scripts/bench/disk.sh [RUNS]   (default 5)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-5}
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" && -f "$dir/guest-images/testguest.elf" ]] || dir=$("$root/scripts/build.sh" release)
command -v qemu-system-x86_64 >/dev/null || "$root/scripts/setup.sh"
img=$(mktemp /var/tmp/vmm-bench-XXXXXX.img)
trap 'rm -f "$img"' EXIT
dd if=/dev/urandom of="$img" bs=1M count=64 status=none
qemu_dir=$(mktemp -d)
trap 'rm -f "$img"; rm -rf "$qemu_dir"' EXIT
mkdir "$qemu_dir/fw"
cp /usr/share/seabios/bios-256k.bin /usr/share/qemu/{pvh.bin,linuxboot_dma.bin,kvmvapic.bin} "$qemu_dir/fw/"
if [[ -r /dev/kvm && -w /dev/kvm ]]; then
  exec sh "$root/scripts/bench/disk-inner.sh" "$dir/vmm/vmm" "$(command -v qemu-system-x86_64)" "$qemu_dir/fw" \
    "$dir/guest-images/testguest.elf" "$img" "$runs"
fi
echo "disk.sh: no usable /dev/kvm here; measuring inside the nested lane" >&2
files=()
for f in "$qemu_dir"/fw/*; do files+=(--file "$f:qemu/$(basename "$f")"); done
inner="$qemu_dir/inner.sh"
echo "cp /files/disk.img /tmp/disk.img && sh /files/disk-inner.sh /files/bin/vmm /files/bin/qemu-system-x86_64" \
  "/files/qemu /files/testguest.elf /tmp/disk.img $runs" >"$inner"
VMM_LINUX_KERNEL=${VMM_LINUX_KERNEL:-$("$root/guest-images/linux/fetch-kernel.sh")} \
  "$root/scripts/nested/run.sh" --timeout 1200 --bin "$dir/vmm/vmm" --bin "$(command -v qemu-system-x86_64)" \
  --file "$dir/guest-images/testguest.elf:testguest.elf" --file "$img:disk.img" "${files[@]}" \
  --file "$root/scripts/bench/disk-inner.sh:disk-inner.sh" --file "$root/scripts/bench/inner-lib.sh:inner-lib.sh" "$inner"

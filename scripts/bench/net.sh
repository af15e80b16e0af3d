#!/usr/bin/env bash
# Network benchmark: the test guest's net-bench workload on vmm's virtio-net and on QEMU's
# virtio-net-pci, each on a TAP, measured in the same run (scripts/bench/net-inner.sh). With a
# usable /dev/kvm it runs here in a network namespace of its own; otherwise inside the nested lane
# (scripts/nested/run.sh), where absolute numbers are TCG's and the ratios compare like with like.
# usage: scripts/bench/net.sh [RUNS]   (default 5)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-5}
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" && -f "$dir/guest-images/testguest.elf" ]] || dir=$("$root/scripts/build.sh" release)
command -v qemu-system-x86_64 >/dev/null || "$root/scripts/setup.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/fw"
cp /usr/share/seabios/bios-256k.bin /usr/share/qemu/{pvh.bin,linuxboot_dma.bin,kvmvapic.bin} "$work/fw/"
if [[ -r /dev/kvm && -w /dev/kvm ]]; then
  ns=vmmbench$$
  ip netns add "$ns"
  trap 'ip netns delete "$ns"; rm -rf "$work"' EXIT
  # No IPv6 on the namespace's interfaces (its link-up chatter would reach the guest).
  ip netns exec "$ns" sh -c 'for c in all default; do
    [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6; done'
  ip netns exec "$ns" sh "$root/scripts/bench/net-inner.sh" "$dir/vmm/vmm" "$(command -v qemu-system-x86_64)" \
    "$work/fw" "$dir/guest-images/testguest.elf" "$runs"
  exit
fi
echo "net.sh: no usable /dev/kvm here; measuring inside the nested lane" >&2
files=()
for f in "$work"/fw/*; do files+=(--file "$f:qemu/$(basename "$f")"); done
echo "for c in all default; do [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/\$c/disable_ipv6; done;" \
  "sh /files/net-inner.sh /files/bin/vmm /files/bin/qemu-system-x86_64 /files/qemu /files/testguest.elf $runs" \
  >"$work/inner.sh"
VMM_LINUX_KERNEL=${VMM_LINUX_KERNEL:-$("$root/guest-images/linux/fetch-kernel.sh")} \
  "$root/scripts/nested/run.sh" --timeout 1200 --bin "$dir/vmm/vmm" --bin "$(command -v qemu-system-x86_64)" \
  --file "$dir/guest-images/testguest.elf:testguest.elf" "${files[@]}" \
  --file "$root/scripts/bench/net-inner.sh:net-inner.sh" --file "$root/scripts/bench/inner-lib.sh:inner-lib.sh" "$work/inner.sh"

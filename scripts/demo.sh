#!/usr/bin/env bash
# The main job, on a fresh Debian machine: installs what is needed, builds vmm and the test guest,
# boots the bundled test guest (one vCPU, four, and echoing the host's input), then makes a template
# of it and starts a fleet of clones that diverge. Without a usable
# /dev/kvm on this machine, the same runs happen inside the nested lane (scripts/nested/run.sh:
# QEMU TCG with an SVM CPU, kvm-amd inside), which takes about a minute more.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
dir=$("$root/scripts/build.sh" release)
guest="$dir/guest-images/testguest.elf"
vmm="$dir/vmm/vmm"

if [[ -r /dev/kvm && -w /dev/kvm ]]; then
  exec "$root/scripts/demo-guest.sh" "$vmm" "$guest"
fi
echo "demo: /dev/kvm is not usable here; running the demo inside the nested lane (L1 under QEMU TCG)"
VMM_LINUX_KERNEL=${VMM_LINUX_KERNEL:-$("$root/guest-images/linux/fetch-kernel.sh")}
export VMM_LINUX_KERNEL
exec "$root/scripts/nested/run.sh" --timeout 300 --bin "$vmm" --file "$guest:testguest.elf" \
  "$root/scripts/demo-guest.sh" /files/bin/vmm /files/testguest.elf

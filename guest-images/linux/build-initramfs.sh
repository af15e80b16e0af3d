#!/usr/bin/env bash
# Builds the L2 initramfs: busybox-static, the virtio, block, network and paravirtual-platform
# modules of Debian's cloud kernel with their dependencies resolved from modules.dep, vmm-agent (built
# static by lib.sh's build_agent) as /sbin/vmm-agent, and init.sh as /init (it runs the scenario
# named by vmm.scenario= on the kernel command line). Cached by content hash; prints the path of the
# cpio archive on stdout. Works for Debian's generic kernel as well
# (VMM_LINUX_KERNEL=$(VMM_KERNEL_META=linux-image-amd64 fetch-kernel.sh)): the modules then come from
# that kernel's package, and those built into it are skipped.
#
# usage: build-initramfs.sh [EXTRA_MODULE...]
#   EXTRA_MODULE     more modules to load at boot, after the usual ones (e.g. qemu_fw_cfg)
# env:   VMM_LINUX_KERNEL  the bzImage whose modules to use (default: fetch-kernel.sh's)
#        VMM_CACHE_DIR     cache root (default /var/cache/vmm)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Modules the L2 guest loads at boot. ext4 is built into Debian's cloud kernel (module_closure skips
# built-ins; the generic kernel has it as a module), as is the 8250 UART.
modules=(virtio_pci virtio_blk virtio_net ext4 af_packet pvpanic_mmio "$@")

find_kernel
key=$(content_hash "$kernel" /bin/busybox "$linux_dir/init.sh" "$linux_dir/lib.sh" "${agent_sources[@]}" "$(cc --version | head -1)" "$0" "${modules[*]}")
out=$cache_root/l2/initramfs-$key.cpio
if [[ -f $out ]]; then echo "$out"; exit 0; fi

prepare_modules
mkdir -p "$cache_root/l2"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install_busybox "$stage"
install_modules "$stage" "${modules[@]}"
install -m 755 "$linux_dir/init.sh" "$stage/init"
install_agent "$stage"
make_cpio "$stage" "$out"
log "built $out ($(du -h "$out" | cut -f1))"
echo "$out"

#!/usr/bin/env bash
# Builds the L2 ext4 root image with `mkfs.ext4 -d`: busybox-static, init.sh as /sbin/init, vmm-agent
# (built static by lib.sh's build_agent) as /sbin/vmm-agent, and a marker file (/etc/vmm-rootfs) that
# tests read back. The L2 initramfs mounts it when the kernel command line says vmm.root=DEVICE and
# switches to it. Cached by content hash; prints the path of the image (sparse, raw) on stdout.
# Callers that write to it must work on a copy.
#
# usage: build-rootfs.sh [SIZE_MIB]   (default 64)
# env:   VMM_CACHE_DIR  cache root (default /var/cache/vmm)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

size_mib=${1:-64}
[[ $size_mib =~ ^[0-9]+$ ]] && ((size_mib >= 8 && size_mib <= 65536)) ||
  die "size $size_mib: expected a number of MiB between 8 and 65536"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing (apt-get install e2fsprogs)"

key=$(content_hash /bin/busybox "$linux_dir/init.sh" "$linux_dir/lib.sh" "${agent_sources[@]}" "$(cc --version | head -1)" "$0" "$size_mib" "$(mkfs.ext4 -V 2>&1 | head -1)")
out=$cache_root/l2/rootfs-$key.ext4
if [[ -f $out ]]; then echo "$out"; exit 0; fi

mkdir -p "$cache_root/l2"
stage=$(mktemp -d)
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -rf "$stage" "$tmp"' EXIT
install_busybox "$stage"
install -m 755 "$linux_dir/init.sh" "$stage/sbin/init"
install_agent "$stage"
echo "vmm L2 root file system $key" >"$stage/etc/vmm-rootfs"
# A fixed UUID and label; inode timestamps come from E2FSPROGS_FAKE_TIME, not the clock.
E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L vmm-root -U 6b1f6a35-5c1a-4d4e-9a0e-766d6d000001 \
  -E root_owner=0:0,hash_seed=6b1f6a35-5c1a-4d4e-9a0e-766d6d000002 -d "$stage" "$tmp" "${size_mib}M" ||
  die "mkfs.ext4 -d $stage failed"
e2fsck -fn "$tmp" >/dev/null 2>&1 || die "e2fsck finds the new image inconsistent"
chmod 644 "$tmp"
mv "$tmp" "$out"
log "built $out (${size_mib} MiB, $(du -h "$out" | cut -f1) used)"
echo "$out"

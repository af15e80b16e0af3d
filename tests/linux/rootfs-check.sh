#!/usr/bin/env bash
# Checks the L2 ext4 root image that guest-images/linux/build-rootfs.sh makes: e2fsck finds it
# clean, and debugfs reads its marker file and an executable /sbin/init from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
img=$("$root/guest-images/linux/build-rootfs.sh")
e2fsck -fn "$img"
marker=$(debugfs -R 'cat /etc/vmm-rootfs' "$img" 2>/dev/null)
echo "marker: $marker"
[[ $marker == "vmm L2 root file system "* ]] || { echo "FAIL: no marker in $img"; exit 1; }
mode=$(debugfs -R 'stat /sbin/init' "$img" 2>/dev/null | sed -n 's/.*Mode: *\([0-7]*\).*/\1/p')
[[ $mode == 0755 ]] || { echo "FAIL: /sbin/init has mode '$mode', expected 0755"; exit 1; }
[[ $(debugfs -R 'stat /bin/busybox' "$img" 2>/dev/null) == *"Type: regular"* ]] || { echo "FAIL: no busybox"; exit 1; }
echo "rootfs-check: PASS ($img)"

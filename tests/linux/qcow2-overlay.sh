#!/bin/sh
# Runs inside the nested lane's L1: Debian's virtio_blk driver on qcow2 overlays (linked clones).
# Two overlays of the same raw ext4 base (made by `vmm disk create --backing`) each boot as the
# guest's root file system, write a file and sync; then: the base is unchanged, qemu-img check is
# clean on both overlays, each flattened overlay (qemu-img convert) is a clean ext4 holding the file,
# the second overlay reads as the base until its own guest runs, and an overlay made by qemu-img itself works the same way.
fail=0
bad() { echo "qcow2-overlay: FAIL: $*"; fail=1; }
cd /tmp
base=/files/rootfs.ext4
base_md5=$(md5sum <"$base" | cut -d' ' -f1)
clone() {  # clone NAME IMAGE: boot on IMAGE, write /root-write.txt, check the overlay afterwards
  vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus 2 \
    --disk "path=$2" --cmdline "console=ttyS0 vmm.scenario=root-write vmm.root=/dev/vda" >/tmp/c.txt 2>/tmp/e.txt
  status=$?
  tr -d '\r' </tmp/c.txt | grep -a 'root-write\|vmm-l2: end'
  cat /tmp/e.txt
  [ $status = 0 ] || { bad "$1: vmm exit status $status"; tr -d '\r' </tmp/c.txt | tail -n 40 | sed 's/^/  console: /'; }
  qemu-img check -q "$2" || bad "$1: qemu-img check finds problems in $2"
  qemu-img convert -O raw "$2" "/tmp/$1.raw" || bad "$1: qemu-img convert failed"
  e2fsck -fn "/tmp/$1.raw" >/tmp/fsck.txt 2>&1 || { cat /tmp/fsck.txt; bad "$1: e2fsck finds the flattened image inconsistent"; }
  got=$(debugfs -R 'cat /root-write.txt' "/tmp/$1.raw" 2>/dev/null)
  [ "$got" = "written on the root by the L2 guest" ] || bad "$1: root-write.txt reads '$got'"
}
vmm disk create /tmp/a.qcow2 --backing "$base" --backing-format raw || bad "vmm disk create failed"
vmm disk create /tmp/b.qcow2 --backing "$base" || bad "vmm disk create (probed format) failed"
vmm disk info /tmp/a.qcow2
clone a /tmp/a.qcow2
# The second overlay still reads exactly as the base: nothing of the first clone shows through.
qemu-img compare -q -f qcow2 -F raw /tmp/b.qcow2 "$base" || bad "b does not read as the base after a ran"
clone b /tmp/b.qcow2
[ "$(md5sum <"$base" | cut -d' ' -f1)" = "$base_md5" ] || bad "the base image changed"
# An overlay made by qemu-img.
qemu-img create -q -f qcow2 -b "$base" -F raw /tmp/q.qcow2 || bad "qemu-img create failed"
clone q /tmp/q.qcow2
[ "$(md5sum <"$base" | cut -d' ' -f1)" = "$base_md5" ] || bad "the base image changed"
[ $fail = 0 ] && echo "qcow2-overlay: PASS"
exit $fail

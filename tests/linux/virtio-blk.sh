#!/bin/sh
# Runs inside the nested lane's L1: Debian's stock virtio_pci and virtio_blk drivers against our
# virtio-blk device. (1) A random raw disk: the driver binds with MSI-X, the guest reads the same
# bytes the host wrote and sees the serial and capacity; (2) the same disk read-only; (2b) the same
# with MSI-X off in the guest (pci=nomsi), so the driver runs on INTx through the _PRT; (3) the ext4
# root image: the guest mounts it, writes files, syncs and powers off, and the host finds them
# intact with debugfs and a clean e2fsck; (4) the ext4 image as the root file system; (5) two disks.
fail=0
bad() { echo "virtio-blk: FAIL: $*"; fail=1; }
boot() {  # boot SCENARIO DISK-SPEC [EXTRA-CMDLINE]: console in /tmp/c.txt, status in $status
  vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus 2 \
    --disk "$2" --cmdline "console=ttyS0 vmm.scenario=$1 ${3:-}" >/tmp/c.txt 2>/tmp/e.txt
  status=$?
  tr -d '\r' </tmp/c.txt >/tmp/console.txt
  grep -a 'blk:\|ext4-write\|big$\|vmm-l2: end' /tmp/console.txt
  cat /tmp/e.txt
  if [ $status != 0 ]; then
    bad "vmm exit status $status in $1"
    # Where the guest got to: the last console lines (an L2 that spins shows where it stopped; one
    # stopped in SMP bring-up is the lane's failure, which tests/linux/nested-test.sh retries).
    tail -n 25 /tmp/console.txt | sed 's/^/  console: /'
  fi
}

cd /tmp
dd if=/dev/urandom of=disk.img bs=1M count=8 2>/dev/null
want=$(dd if=disk.img bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)
boot blk path=/tmp/disk.img,id=testdisk
grep -q "blk: vda size=16384 ro=0 serial=testdisk msix=2 driver=virtio_blk" /tmp/console.txt ||
  bad "vda not bound as expected (size, ro, serial, MSI-X vectors, driver)"
grep -q "blk: vda md5 $want" /tmp/console.txt || bad "the guest read other bytes than the host wrote ($want)"

boot blk path=/tmp/disk.img,readonly=on
grep -q "blk: vda size=16384 ro=1 serial=disk0" /tmp/console.txt || bad "read-only disk not read-only in the guest"

boot blk path=/tmp/disk.img pci=nomsi
grep -q "blk: vda size=16384 ro=0 serial=disk0 msix=0" /tmp/console.txt || bad "with pci=nomsi the disk is not bound on INTx"
grep -q "blk: vda md5 $want" /tmp/console.txt || bad "on INTx the guest read other bytes than the host wrote"

cp /files/rootfs.ext4 /tmp/root.ext4
boot ext4-write path=/tmp/root.ext4
grep -q "ext4-write: done" /tmp/console.txt || bad "the guest did not finish writing"
e2fsck -fn /tmp/root.ext4 >/tmp/fsck.txt 2>&1 || { cat /tmp/fsck.txt; bad "e2fsck finds the image inconsistent"; }
hello=$(debugfs -R 'cat /hello.txt' /tmp/root.ext4 2>/dev/null)
[ "$hello" = "written by the L2 guest" ] || bad "hello.txt reads '$hello'"
debugfs -R 'dump /big /tmp/big' /tmp/root.ext4 2>/dev/null
guest_md5=$(grep -a ' big$' /tmp/console.txt | cut -d' ' -f1)
host_md5=$(md5sum </tmp/big | cut -d' ' -f1)
[ -n "$guest_md5" ] && [ "$guest_md5" = "$host_md5" ] || bad "big file: guest md5 '$guest_md5', host md5 '$host_md5'"
# (4) The ext4 image as the root file system (the initramfs switches to it), written and synced.
cp /files/rootfs.ext4 /tmp/root2.ext4
boot root-write path=/tmp/root2.ext4 vmm.root=/dev/vda
grep -q "on the ext4 root: vmm L2 root file system" /tmp/console.txt || bad "the guest did not switch to the ext4 root"
grep -q "root-write: done" /tmp/console.txt || bad "the guest did not write on its root"
e2fsck -fn /tmp/root2.ext4 >/tmp/fsck.txt 2>&1 || { cat /tmp/fsck.txt; bad "e2fsck finds the root image inconsistent"; }
got=$(debugfs -R 'cat /root-write.txt' /tmp/root2.ext4 2>/dev/null)
[ "$got" = "written on the root by the L2 guest" ] || bad "root-write.txt reads '$got'"

# (5) Two disks: both bound, each with its serial and its own bytes.
dd if=/dev/urandom of=disk2.img bs=1M count=4 2>/dev/null
want2=$(dd if=disk2.img bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)
vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus 2 \
  --disk path=/tmp/disk.img,id=first --disk path=/tmp/disk2.img,id=second \
  --cmdline "console=ttyS0 vmm.scenario=blk" 2>/tmp/e.txt | tr -d '\r' >/tmp/console.txt
grep -a 'blk:' /tmp/console.txt
# Where the guest got to, when it did not get there (as boot() shows it: the lane's SMP hang is
# recognised from it, tests/linux/nested-test.sh; on 2026-12-08 it went unrecognised here).
grep -q "blk: vdb md5" /tmp/console.txt || { cat /tmp/e.txt; tail -n 25 /tmp/console.txt | sed 's/^/  console: /'; }
grep -q "blk: vda size=16384 ro=0 serial=first" /tmp/console.txt || bad "first of two disks missing"
grep -q "blk: vdb size=8192 ro=0 serial=second" /tmp/console.txt || bad "second of two disks missing"
grep -q "blk: vdb md5 $want2" /tmp/console.txt || bad "the second disk's bytes differ"

[ $fail = 0 ] && echo "virtio-blk: PASS"
exit $fail

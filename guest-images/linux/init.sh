#!/bin/sh
# /init of the L2 initramfs (guest-images/linux/build-initramfs.sh), and /sbin/init of the ext4 root
# image (build-rootfs.sh): mounts the kernel's file systems, loads the modules listed in
# /etc/modules.load, switches to the ext4 root on vmm.root=DEVICE if the command line names one, then
# starts vmm-agent (unless vmm.agent=0), then runs the scenario named by vmm.scenario= on the kernel
# command line. Output between clear markers:
#   === vmm-l2: userspace ===              as soon as userspace runs
#   === vmm-l2: begin SCENARIO ===         ... scenario output ...
#   === vmm-l2: end SCENARIO status=N ===
# and then the VM ends the way the scenario says (power off unless the scenario reboots or panics).
export PATH=/bin:/sbin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
arg() { sed -n "s/.*\bvmm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }

if [ ! -e /etc/vmm-rootfs ]; then
  echo "=== vmm-l2: userspace ==="
  for m in $(cat /etc/modules.load); do
    insmod "/lib/modules/$m" || echo "vmm-l2: insmod $m failed"
  done
  root=$(arg root)
  if [ -n "$root" ]; then
    # The ext4 root: mount it read-write and make it / (this script runs again from there).
    mkdir -p /newroot
    if mount -t ext4 -o rw "$root" /newroot; then
      umount /proc /sys
      umount /dev 2>/dev/null
      exec switch_root /newroot /sbin/init
    fi
    echo "vmm-l2: cannot mount $root as the root file system"
  fi
else
  echo "=== vmm-l2: on the ext4 root: $(cat /etc/vmm-rootfs) ==="
fi
# Here we are in the final root. vmm-agent (vmm-agent/agent.c) applies the identity vmm publishes
# through fw_cfg (hostname, address, ... given at boot; a clone's new one on each clone event):
# --daemon applies it once, prints its lines, then goes to the background, its lines going to the
# console. Without the identity channel (no qemu_fw_cfg module) it says so and exits 0.
# vmm.agent=0 on the kernel command line leaves it off.
if [ "$(arg agent)" != 0 ] && [ -x /sbin/vmm-agent ]; then
  /sbin/vmm-agent --daemon </dev/null || echo "vmm-l2: vmm-agent failed"
fi
scenario=$(arg scenario)
: "${scenario:=boot}"

run_scenario() {
  case "$1" in
    boot) echo "kernel $(uname -r)" ;;
    nproc) echo "nproc=$(nproc)" ;;
    poweroff) ;;
    reboot) ;;
    panic) ;;
    dmesg)
      # The RTC must read, and the kernel log (raw, with levels) goes to the host for checking.
      if [ -e /dev/rtc0 ]; then echo "rtc: $(hwclock -r -u 2>&1)"; else echo "rtc: no /dev/rtc0"; fi
      # Live kernel messages stay off the console while the log is dumped, or one printed in the
      # middle of a dumped line would split it (seen: an hrtimer warning inside a CPUID line).
      dmesg -n 1
      echo "--- dmesg ---"
      dmesg -r
      echo "--- end dmesg ---" ;;
    blk)
      # Every virtio disk: size, read-only flag, serial, MSI-X vectors of its PCI function, and the
      # checksum of its first MiB; then the kernel's virtio/PCI messages.
      for d in /sys/block/vd*; do
        [ -e "$d" ] || { echo "blk: no virtio disks"; return 1; }
        n=${d##*/}
        pci=$(readlink -f "$d/device/..")
        echo "blk: $n size=$(cat "$d/size") ro=$(cat "$d/ro") serial=$(cat "$d/serial" 2>/dev/null)" \
          "msix=$(ls "$pci/msi_irqs" 2>/dev/null | wc -l) driver=$(basename "$(readlink -f "$d/device/driver")")"
        echo "blk: $n md5 $(dd if=/dev/$n bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
      done
      dmesg | grep -iE 'virtio|pci|vd[a-z]' ;;
    root-write)
      # On the ext4 root (vmm.root=): write a file next to /etc/vmm-rootfs and sync it.
      [ -e /etc/vmm-rootfs ] || { echo "root-write: not on the ext4 root"; return 1; }
      echo "written on the root by the L2 guest" >/root-write.txt && sync || return 1
      echo "root-write: $(mount | grep ' / ')"
      echo "root-write: done" ;;
    ext4-write)
      # Mounts the ext4 file system on /dev/vda, writes a text file and 4 MiB of random data with
      # its checksum, syncs and unmounts: the host checks the image afterwards.
      mkdir -p /mnt
      mount -t ext4 /dev/vda /mnt || return 1
      echo "written by the L2 guest" >/mnt/hello.txt
      dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null || return 1
      (cd /mnt && md5sum big >big.md5)
      cat /mnt/big.md5
      sync
      umount /mnt || return 1
      echo "ext4-write: done" ;;
    net)
      # eth0 at 10.0.2.2/24 (the host's TAP is 10.0.2.1): ping the host, fetch its payload over
      # HTTP, serve one of ours, and wait until the host says it has fetched it (port 5001).
      ip link set lo up
      ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up || return 1
      echo "net: mac $(cat /sys/class/net/eth0/address)"
      echo "net: ping $(ping -c 3 -W 5 10.0.2.1 | grep 'packets transmitted')"
      wget -q -O /tmp/got http://10.0.2.1:8080/payload || return 1
      echo "net: got $(md5sum </tmp/got | cut -d' ' -f1)"
      mkdir -p /www
      dd if=/dev/urandom of=/www/upload bs=1M count=4 2>/dev/null
      httpd -p 8080 -h /www
      echo "net: serving $(md5sum </www/upload | cut -d' ' -f1)"
      timeout 120 nc -l -p 5001 >/dev/null
      echo "net: done" ;;
    idle)
      # Nothing to do for a while (the host measures what an idle VM costs), with eth0 up.
      ip link set eth0 up 2>/dev/null
      echo "idle: sleeping"
      s=$(arg idle_seconds); sleep "${s:-10}" ;;
    web)
      # An HTTP server that answers GET /cgi-bin/host with the machine's hostname (busybox httpd,
      # port 80): the load-balancer scenario's server (tests/linux/clone-lb.sh). Its address and
      # hostname are vmm-agent's to set, at boot and in every clone. Then idle until powered off.
      mkdir -p /www/cgi-bin
      printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%%s\\n" "$(hostname)"\n' >/www/cgi-bin/host
      chmod 755 /www/cgi-bin/host
      httpd -p 80 -h /www || return 1
      echo "web: ready"
      while :; do sleep 3600; done ;;
    shell) setsid cttyhack sh ;;
    serve)
      # Runs shell commands read from the serial console, one a line, each in a subshell, and
      # prints "serve: status=N" after each; idle in read() in between. The clone tests take a
      # template at "serve: ready" and drive each clone through its console. Ends at end of input.
      stty -echo 2>/dev/null
      echo "serve: ready"
      while read -r line; do
        (eval "$line")
        echo "serve: status=$?"
      done ;;
    *) echo "vmm-l2: unknown scenario $1"; return 2 ;;
  esac
}

echo "=== vmm-l2: begin $scenario ==="
run_scenario "$scenario"
status=$?
echo "=== vmm-l2: end $scenario status=$status ==="
case "$scenario" in
  reboot) reboot -f ;;
  panic) echo 1 >/proc/sys/kernel/sysrq; echo c >/proc/sysrq-trigger ;;
  *) poweroff -f ;;
esac
sleep 10
echo "vmm-l2: still running after $scenario"

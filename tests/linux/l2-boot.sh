#!/bin/sh
# Runs inside the nested lane's L1 (busybox sh): boots the stock Debian kernel (/files/vmlinuz) with
# the L2 initramfs (/files/initramfs.cpio) under `vmm run`, prints the time from exec to userspace and
# checks the exit status, expected console lines and the guest's kernel log.
#
# usage: l2-boot.sh [--cpus N] [--memory SIZE] [--scenario NAME] [--status N] [--expect TEXT]...
#                   [--stderr TEXT]... [--reject TEXT]... [--dmesg-allow FILE] [--disk MIB] [--append ARGS]
#   --status N         expected exit status of vmm (default 0)
#   --expect TEXT      a console line must contain TEXT
#   --stderr TEXT      vmm's stderr must contain TEXT
#   --reject TEXT      vmm's stderr must not contain TEXT
#   --disk MIB         attach a virtio-blk disk of MIB MiB (a fresh sparse file)
#   --append ARGS      more kernel command line (e.g. reboot=pci)
#   --dmesg-allow FILE check the kernel log of the `dmesg` scenario: every line at warning level or
#                      worse must match one of FILE's extended regexes (# comments allowed)
cpus=1 memory=256M scenario=boot want=0 allow="" expects="" errs="" rejects="" disk="" append=""
nl='
'
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2 ;;
    --memory) memory=$2 ;;
    --scenario) scenario=$2 ;;
    --status) want=$2 ;;
    --expect) expects="$expects$2$nl" ;;
    --stderr) errs="$errs$2$nl" ;;
    --reject) rejects="$rejects$2$nl" ;;
    --dmesg-allow) allow=$2 ;;
    --disk) disk=$2 ;;
    --append) append=$2 ;;
    *) echo "l2-boot.sh: unknown option $1"; exit 2 ;;
  esac
  shift 2
done

out=/tmp/console.txt
set --
if [ -n "$disk" ]; then
  rm -f /tmp/l2-disk.img
  truncate -s "${disk}M" /tmp/l2-disk.img
  set -- --disk path=/tmp/l2-disk.img
fi
echo "l2-boot: vmm run --cpus $cpus --memory $memory $*, scenario $scenario"
{
  vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory "$memory" --cpus "$cpus" "$@" \
    --cmdline "console=ttyS0 vmm.scenario=$scenario $append" 2>/tmp/vmm.err
  echo $? >/tmp/vmm.status
} | ts -s '%M:%.S' >/tmp/console.raw
# The guest's serial console ends lines with CR LF.
tr -d '\r' </tmp/console.raw >"$out"
status=$(cat /tmp/vmm.status)
cat "$out"
echo "--- vmm stderr ---"
cat /tmp/vmm.err
echo "--- end ---"

fail=0
bad() { echo "l2-boot: FAIL: $*"; fail=1; }

# "MM:SS.micro line": seconds from exec (ts starts with the pipeline) to the first userspace line.
t=$(awk '/=== vmm-l2: userspace ===/ { split($1, a, ":"); printf "%.3f", a[1] * 60 + a[2]; exit }' "$out")
if [ -n "$t" ]; then echo "l2-boot: exec to userspace: $t s (cpus=$cpus)"; else bad "no userspace marker"; fi
t=$(awk '/=== vmm-l2: end / { split($1, a, ":"); printf "%.3f", a[1] * 60 + a[2]; exit }' "$out")
[ -n "$t" ] && echo "l2-boot: exec to end of scenario: $t s"

[ "$status" = "$want" ] || bad "vmm exit status $status, expected $want"
IFS=$nl
for e in $expects; do grep -qF -- "$e" "$out" || bad "no console line contains '$e'"; done
for e in $errs; do grep -qF -- "$e" /tmp/vmm.err || bad "vmm's stderr does not contain '$e'"; done
for e in $rejects; do grep -qF -- "$e" /tmp/vmm.err && bad "vmm's stderr contains '$e'"; done
unset IFS

if [ -n "$allow" ]; then
  # Kernel log lines at levels 0-4 (emerg..warning), timestamps cut, not matched by the allow list.
  # A WARN() block ("cut here" .. "end trace") counts as one line: its message, the line after
  # "cut here".
  sed -n '/--- dmesg ---/,/--- end dmesg ---/p' "$out" |
    sed -n 's/^[^ ]* <\([0-4]\)>\[[^]]*\] /<\1> /p' |
    awk '/------------\[ cut here \]------------/ { inblock = 1; first = 1; next }
         inblock && first { print "<WARN> " substr($0, 5); first = 0; next }
         inblock { if ($0 ~ /---\[ end trace/) inblock = 0; next }
         { print }' >/tmp/warnings.txt
  grep -v '^[[:space:]]*#' "$allow" | grep -v '^[[:space:]]*$' >/tmp/allow.txt
  grep -Ev -f /tmp/allow.txt /tmp/warnings.txt >/tmp/unexpected.txt
  n=$(wc -l </tmp/warnings.txt)
  echo "l2-boot: $n kernel log lines at warning level or worse, allowed by $(wc -l </tmp/allow.txt) patterns"
  if [ -s /tmp/unexpected.txt ]; then
    bad "kernel warnings our platform must not cause:"
    cat /tmp/unexpected.txt
  fi
  grep -q 'rtc: .*20[0-9][0-9]' "$out" || bad "the guest could not read the RTC"
fi
[ $fail = 0 ] && echo "l2-boot: PASS"
exit $fail

# Shared helpers of the Linux image builders (sourced, not run). Everything is built from Debian
# packages already on the machine (busybox-static, cpio, e2fsprogs, kmod) and the kernel package that
# fetch-kernel.sh caches; every product is cached under $VMM_CACHE_DIR by the hash of its inputs.

linux_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VMM_CACHE_DIR:-/var/cache/vmm}

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "error: $*"; exit 1; }

# Sets kernel (the bzImage), kpkg (the extracted package root) and kver (its release string).
find_kernel() {
  kernel=${VMM_LINUX_KERNEL:-$("$linux_dir/fetch-kernel.sh")} || die "fetch-kernel.sh failed"
  [[ -f $kernel ]] || die "$kernel: no such kernel"
  kpkg=$(cd "$(dirname "$kernel")/.." && pwd)
  kver=$(basename "$kernel"); kver=${kver#vmlinuz-}
  [[ -d $kpkg/lib/modules/$kver ]] || die "$kpkg/lib/modules/$kver: the kernel's modules are missing"
}

# Sets moddir to a depmod'ed copy of the kernel's modules (Debian's package ships no modules.dep:
# the postinst makes it). Cached next to the extracted package.
prepare_modules() {
  local base=$kpkg.depmod
  moddir=$base/lib/modules/$kver
  [[ -f $moddir/modules.dep ]] && return 0
  local tmp
  tmp=$(mktemp -d "$kpkg.depmod.XXXXXX")
  mkdir -p "$tmp/lib/modules"
  cp -a "$kpkg/lib/modules/$kver" "$tmp/lib/modules/"
  depmod -b "$tmp" "$kver" || die "depmod -b $tmp $kver failed"
  rm -rf "$base"; mv "$tmp" "$base"
}

# Prints, in load order, the module files (relative to $moddir) that the named modules need:
# each module's dependencies from modules.dep, its "pre:" soft dependencies from modules.softdep,
# then the module itself, each once. A module built into the kernel (modules.builtin) is skipped;
# a name that is neither is an error.
module_closure() {
  local -A seen=()
  local out=()
  _visit() {
    local name=${1//-/_} path deps d
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    path=$(awk -v n="$name" -F: '{ f = $1; sub(/.*\//, "", f); sub(/\.ko.*$/, "", f); gsub(/-/, "_", f)
                                  if (f == n) { print $1; exit } }' "$moddir/modules.dep")
    if [[ -z $path ]]; then
      awk -v n="$name" '{ f = $0; sub(/.*\//, "", f); sub(/\.ko.*$/, "", f); gsub(/-/, "_", f)
                          if (f == n) { found = 1; exit } } END { exit !found }' "$moddir/modules.builtin" ||
        die "module $1: not in modules.dep or modules.builtin of $kver"
      return 0
    fi
    for d in $(awk -v n="$name" '$1 == "softdep" && $2 == n { pre = 0
                 for (i = 3; i <= NF; i++) { if ($i == "pre:") pre = 1; else if ($i == "post:") pre = 0
                                             else if (pre) print $i } }' "$moddir/modules.softdep"); do
      # A soft dependency is optional: skip one the kernel does not have.
      if awk -v n="${d//-/_}" '{ f = $1; sub(/:$/, "", f); sub(/.*\//, "", f); sub(/\.ko.*$/, "", f); gsub(/-/, "_", f)
                               if (f == n) { found = 1; exit } } END { exit !found }' "$moddir/modules.dep"; then
        _visit "$d"
      fi
    done
    deps=$(awk -v p="$path:" '$1 == p { for (i = NF; i >= 2; i--) print $i; exit }' "$moddir/modules.dep")
    for d in $deps; do
      local dn=${d##*/}; dn=${dn%%.ko*}
      _visit "$dn"
    done
    out+=("$path")
  }
  local m
  for m in "$@"; do _visit "$m"; done
  printf '%s\n' "${out[@]}"
}

# Copies the closure of the named modules into $1/lib/modules and writes $1/etc/modules.load (the
# insmod order, one path relative to /lib/modules per line).
install_modules() {
  local root=$1; shift
  local list f
  list=$(module_closure "$@") || exit 1
  mkdir -p "$root/lib/modules" "$root/etc"
  : >"$root/etc/modules.load"
  for f in $list; do
    mkdir -p "$root/lib/modules/$(dirname "$f")"
    cp "$moddir/$f" "$root/lib/modules/$f"
    echo "$f" >>"$root/etc/modules.load"
  done
}

# Lays out a busybox root in $1: the static binary, its applet links, /dev/console and the usual
# mount points.
install_busybox() {
  local root=$1 bb=/bin/busybox a
  [[ -x $bb ]] && file_is_static "$bb" || die "$bb is not busybox-static (apt-get install busybox-static)"
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,root}
  cp "$bb" "$root/bin/busybox"
  for a in $("$bb" --list); do
    [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"
  done
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
}

# vmm-agent (vmm-agent/agent.c): the guest side of a clone's identity. The images install it as
# /sbin/vmm-agent and CMake (guest-images/CMakeLists.txt) builds it with this same function for the
# host-side tests. agent_sources are its inputs (for cache keys); build_agent DEST compiles it,
# static, to DEST (written atomically).
agent_dir=$linux_dir/vmm-agent
agent_sources=("$agent_dir/agent.c" "$agent_dir/identity.c" "$agent_dir/identity.h" "$agent_dir/udhcpc.script")
build_agent() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cc -static -O2 -Wall -Wextra -o "$tmp" "$agent_dir/agent.c" "$agent_dir/identity.c" ||
    { rm -f "$tmp"; die "cannot build vmm-agent (cc with a static libc: apt-get install gcc libc6-dev)"; }
  chmod 755 "$tmp"
  mv "$tmp" "$1"
}
# install_agent ROOT: vmm-agent as ROOT/sbin/vmm-agent, and the script with which busybox's udhcpc
# applies a lease (the agent runs udhcpc for an identity with ip=dhcp) where udhcpc looks for it:
# /etc/udhcpc/default.script in Debian's busybox, /usr/share/udhcpc/default.script upstream.
install_agent() {
  mkdir -p "$1/sbin" "$1/etc/udhcpc" "$1/usr/share/udhcpc"
  build_agent "$1/sbin/vmm-agent"
  install -m 755 "$agent_dir/udhcpc.script" "$1/etc/udhcpc/default.script"
  install -m 755 "$agent_dir/udhcpc.script" "$1/usr/share/udhcpc/default.script"
}

file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'INTERP'; }

# Writes a newc cpio archive of directory $1 to $2 with stable order and timestamps.
# The archive appears atomically, so concurrent builders of the same cached product do not collide.
make_cpio() {
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible) >"$tmp" ||
    { rm -f "$tmp"; die "cpio of $1 failed"; }
  chmod 644 "$tmp"
  mv "$tmp" "$2"
}

# Prints a short hash of the given files' contents and of extra strings (the cache key).
content_hash() {
  local f
  {
    for f in "$@"; do
      if [[ -f $f ]]; then sha256sum "$f"; else echo "$f"; fi
    done
  } | sha256sum | cut -c1-16
}

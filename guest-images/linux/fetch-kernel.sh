#!/usr/bin/env bash
# Fetches Debian's cloud kernel (the image package that linux-image-cloud-amd64 depends on) and
# extracts it into a cache keyed by package name and version. Prints the path of the extracted
# boot/vmlinuz-* (a bzImage) on stdout; everything else goes to stderr. Idempotent: with the package
# already extracted a run takes milliseconds (about 1 s after an apt-get update, which makes it
# resolve the package again). apt-get update runs only when the lists lack the package.
#
# usage: fetch-kernel.sh
# env:   VMM_CACHE_DIR   cache root (default /var/cache/vmm); the kernel goes under linux/
#        VMM_KERNEL_META meta package to resolve (default linux-image-cloud-amd64)
set -euo pipefail

meta=${VMM_KERNEL_META:-linux-image-cloud-amd64}
cache=${VMM_CACHE_DIR:-/var/cache/vmm}/linux

log() { echo "fetch-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The concrete image package the meta package depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
resolve_package() {
  apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
# "VERSION SHA256" of the candidate version of package $1 (one apt-cache call: each costs ~0.5 s).
package_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null |
    awk '$1 == "Version:" { v = $2 } $1 == "SHA256:" { h = $2 } END { if (v != "") print v, h }'
}

updated=0
apt_update() {
  ((updated)) && return 0
  log "$1: running apt-get update"
  apt-get update >&2 || die "apt-get update failed"
  updated=1
}

# Sets pkg, version, sha256 and dir from the package lists (apt-get update once if they lack them).
resolve() {
  pkg=$(resolve_package || true)
  if [[ -z $pkg ]]; then
    apt_update "package lists do not know $meta"
    pkg=$(resolve_package || true)
    [[ -n $pkg ]] || die "cannot resolve the image package of $meta (apt-cache depends $meta)"
  fi
  local fields
  fields=$(package_version "$pkg" || true)
  if [[ -z $fields ]]; then
    apt_update "package lists do not know $pkg"
    fields=$(package_version "$pkg" || true)
    [[ -n $fields ]] || die "no version of $pkg in the package lists"
  fi
  read -r version sha256 <<<"$fields"
  dir=$cache/${pkg}_${version}
}

find_vmlinuz() { compgen -G "$dir/boot/vmlinuz-*" | head -n 1; }
# Prints the cached kernel and exits if $dir holds a complete extraction.
use_cache_if_complete() {
  [[ -f $dir/.complete ]] || return 0
  local kernel
  kernel=$(find_vmlinuz || true)
  [[ -n $kernel ]] || return 0
  log "cached: $pkg $version"
  echo "$kernel"
  exit 0
}

# Fast path: the last resolution, as long as no package list changed since it was made.
stamp=$cache/.resolved-$meta
lists=/var/lib/apt/lists
if [[ -f $stamp && -z $(find "$lists" -maxdepth 1 -newer "$stamp" -print -quit 2>/dev/null) ]]; then
  read -r pkg version sha256 <"$stamp" || true
  if [[ -n ${pkg:-} && -n ${version:-} ]]; then
    dir=$cache/${pkg}_${version}
    use_cache_if_complete
  fi
fi

resolve
# Records the resolution for the fast path (best effort: a read-only cache just stays slow).
remember() {
  if printf '%s %s %s\n' "$pkg" "$version" "$sha256" >"$stamp.tmp" 2>/dev/null; then mv "$stamp.tmp" "$stamp"; fi
}
if [[ -f $dir/.complete ]]; then remember; fi
use_cache_if_complete

mkdir -p "$cache" || die "cannot create $cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt when it can write the target directory.
if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi

download() { (cd "$work" && apt-get download "$pkg=$version" >&2); }
log "downloading $pkg $version"
if ! download; then
  # Stale lists: the mirror has moved on. Refresh once and resolve again.
  apt_update "$pkg $version is no longer downloadable"
  resolve
  download || die "apt-get download $pkg=$version failed"
fi
deb=$(compgen -G "$work/*.deb" | head -n 1) || die "apt-get download left no .deb in $work"
if [[ -n $sha256 ]]; then
  got=$(sha256sum "$deb" | awk '{ print $1 }')
  [[ $got == "$sha256" ]] || die "$deb: SHA256 $got, package lists say $sha256"
fi

log "extracting $(basename "$deb")"
mkdir "$work/root"
dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
compgen -G "$work/root/boot/vmlinuz-*" >/dev/null || die "$deb has no boot/vmlinuz-*"
printf '%s %s %s\n' "$pkg" "$version" "$sha256" > "$work/root/.complete"

# Publish atomically: a concurrent or interrupted run never leaves a half-extracted cache entry.
rm -rf "$dir.old"
if [[ -e $dir ]]; then mv "$dir" "$dir.old"; fi
mv "$work/root" "$dir"
rm -rf "$dir.old"
remember
kernel=$(find_vmlinuz) || die "no boot/vmlinuz-* in $dir"
log "kernel: $kernel"
echo "$kernel"

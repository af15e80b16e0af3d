#!/usr/bin/env bash
# Installs what vmm needs to build, test and benchmark on Debian 12, from Debian's archive only.
# Idempotent: when everything is there it only checks (well under a second).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config g++ clang acpica-tools
  liburing-dev libfmt-dev doctest-dev libcli11-dev linux-libc-dev nlohmann-json3-dev zlib1g-dev libcpp-httplib-dev libfuse3-dev curl
  libclang-rt-14-dev
  qemu-system-x86 qemu-utils
  python3 procps iproute2 kmod nftables
  busybox-static cpio e2fsprogs zstd xz-utils
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [[ ! -e /dev/kvm ]]; then
  echo "setup: warning: /dev/kvm is missing; guests cannot run on this machine" >&2
fi

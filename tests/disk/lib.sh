# Shared by the qcow2 test scripts: sourced with TOOL and WORK set. Skips (77) when qemu-img is
# missing, gives every test a fresh work directory, and the checks that judge an image.
set -euo pipefail

if ! command -v qemu-img >/dev/null 2>&1; then
  echo "SKIP: qemu-img is missing (Debian package qemu-utils)"
  exit 77
fi
[[ -x "$TOOL" ]] || { echo "FAIL: $TOOL is not executable"; exit 1; }
HAVE_QEMU_IO=0
command -v qemu-io >/dev/null 2>&1 && HAVE_QEMU_IO=1

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

fail() {
  echo "FAIL: $*"
  echo "(files kept in $WORK)"
  exit 1
}

# Runs a command, echoing it first so that a log reads as a reproducer.
run() {
  echo "+ $*"
  "$@" || fail "exit status $? from: $*"
}

# check_clean IMAGE: `qemu-img check` finds neither corruptions nor leaks (exit 0).
check_clean() {
  local out rc=0
  out=$(qemu-img check "$1" 2>&1) || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "$out"
    fail "qemu-img check $1 exited $rc (2: corruptions, 3: leaked clusters)"
  fi
  echo "+ qemu-img check $1: clean"
}

# same_content IMAGE RAWFILE: qemu-img compare (qemu reads our image) and our engine agree with RAWFILE.
same_content() {
  local out rc=0
  out=$(qemu-img compare "$1" "$2" 2>&1) || rc=$?
  [[ $rc -eq 0 ]] || fail "qemu-img compare $1 $2 exited $rc: $out"
  echo "+ qemu-img compare $1 $2: $out"
}

# qemu_io IMAGE FORMAT COMMANDS...: each command becomes one -c; needs qemu-io.
qemu_io() {
  local img=$1 fmt=$2
  shift 2
  local args=()
  for c in "$@"; do args+=(-c "$c"); done
  echo "+ qemu-io -f $fmt $img ${*@Q}"
  qemu-io -f "$fmt" "${args[@]}" "$img" >/dev/null || fail "qemu-io on $img failed"
}

# fill_qemu IMAGE FORMAT SIZE_MIB SALT: a mix of patterns, zero writes and discards made by QEMU,
# with qemu-io when present, else through our engine (qcow2 only) or dd (raw).
fill_qemu() {
  local img=$1 fmt=$2 mib=$3 salt=$4
  local p1 p2 p3
  p1=$(printf '0x%02x' $(( (0xab + salt) & 0xff )))
  p2=$(printf '0x%02x' $(( (0x5c + 3 * salt) & 0xff )))
  p3=$(printf '0x%02x' $(( (0x17 + 7 * salt) & 0xff )))
  if [[ $HAVE_QEMU_IO -eq 1 ]]; then
    qemu_io "$img" "$fmt" \
      "write -P $p1 0 1M" \
      "write -P $p2 $(( salt * 4096 + 1536 * 1024 + 512 )) 300k" \
      "write -P $p3 $(( mib / 2 ))M $(( 3 * 1024 * 1024 + 4096 * salt + 512 ))" \
      "write -z 256k 128k" \
      "write -z -u $(( mib / 2 + 1 ))M 64k" \
      "discard $(( mib / 2 + 2 ))M 1M" \
      "write -P $p1 $(( mib - 1 ))M 1M" \
      "write -P $p2 $(( mib * 1024 - 5 ))k 4k"
  elif [[ $fmt == raw ]]; then
    run "$TOOL" raw "$img.tmp" 2M "$salt"
    dd if="$img.tmp" of="$img" bs=1M count=2 seek=$(( mib / 2 )) conv=notrunc status=none
    rm -f "$img.tmp"
  else
    run "$TOOL" write "$img" 0 1M "$salt"
    local half=$(( mib / 2 ))
    run "$TOOL" write "$img" $(( half * 1048576 + 4096 * salt + 512 )) 3M $(( salt + 1 ))
    run "$TOOL" zero "$img" 256K 128K
    run "$TOOL" write "$img" $(( (mib - 1) * 1048576 )) 1M $(( salt + 2 ))
  fi
}

# cluster_bytes 4k|64k|2m|512|BITS: the cluster size in bytes.
cluster_bytes() {
  case $1 in
    512) echo 512 ;;
    4k) echo 4096 ;;
    64k) echo 65536 ;;
    2m) echo 2097152 ;;
    *) echo $(( 1 << $1 )) ;;
  esac
}

# header_u32 IMAGE OFFSET: a big-endian 32-bit field of the qcow2 header.
header_u32() {
  local hex
  hex=$(od -An -tx1 -j "$2" -N4 "$1" | tr -d ' \n')
  echo $(( 16#$hex ))
}

# unchanged FILE MD5: the file still has the checksum recorded before.
unchanged() {
  local now
  now=$(md5sum <"$1")
  [[ "$now" == "$2" ]] || fail "$1 changed: our engine wrote to a backing file"
  echo "+ $1 unchanged"
}

# scaled N: N times QCOW2_SCALE percent (default 100; sanitizer builds run less), at least 1.
scaled() {
  local n=$(( $1 * ${QCOW2_SCALE:-100} / 100 ))
  echo $(( n > 0 ? n : 1 ))
}

SECONDS=0
finish() {
  echo "PASS ($SECONDS s)"
  exit 0
}

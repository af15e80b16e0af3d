# `vmm disk` (create, info, bench): usage errors, image errors, and what the commands print for raw
# files, our own qcow2 images and qemu-img's. Label `cli`; run them with `ctest -R 'cli\.disk'`.
# Included at the end of tests/CMakeLists.txt (EXPECT, VMM and vmm_test() come from there).
set(DISK_CLI_DIR ${CMAKE_CURRENT_BINARY_DIR}/disk-cli)
set(DISK_CASE ${CMAKE_CURRENT_SOURCE_DIR}/disk/cli-case.sh)
set(R ${DISK_CLI_DIR}/raw.img)        # 64 MiB, sparse (made by the fixture)
set(NEW ${DISK_CLI_DIR}/never.qcow2)  # must never be created by a failing command

add_test(NAME cli.disk.prepare COMMAND ${DISK_CASE} prepare ${VMM} ${DISK_CLI_DIR})
set_tests_properties(cli.disk.prepare PROPERTIES FIXTURES_SETUP disk_cli LABELS cli)

# disk_test(NAME [expect.sh options...] -- vmm arguments...): one command on the fixture's files.
function(disk_test name)
  vmm_test(cli.disk.${name} cli ${ARGN})
  set_tests_properties(cli.disk.${name} PROPERTIES FIXTURES_REQUIRED disk_cli)
endfunction()
# disk_case(NAME CASE [expect.sh options...]): a case of cli-case.sh (setup steps, then the command).
function(disk_case name case)
  add_test(NAME cli.disk.${name} COMMAND ${DISK_CASE} ${case} ${VMM} ${DISK_CLI_DIR} ${EXPECT} ${ARGN})
  set_tests_properties(cli.disk.${name} PROPERTIES LABELS cli TIMEOUT 120 SKIP_RETURN_CODE 77
    FIXTURES_REQUIRED disk_cli)
endfunction()

# ---- Help ---------------------------------------------------------------------------------------
disk_test(help --status 0 --out "^Usage: vmm disk " --out "create" --out "info" --out "bench" -- ${VMM} disk --help)
disk_test(create_help --status 0 --out "^Usage: vmm disk create " --out "--backing-format" -- ${VMM} disk create --help)
disk_test(info_help --status 0 --out "^Usage: vmm disk info " --out "--json" -- ${VMM} disk info --help)
disk_test(bench_help --status 0 --out "^Usage: vmm disk bench " --out "--flush-interval" --out "--shared-buffer" -- ${VMM} disk bench --help)

# ---- Usage errors: status 2, one line, nothing created ------------------------------------------
set(i 0)
foreach(args "disk" "disk;frobnicate" "disk;--bogus"
             "disk;create" "disk;create;${NEW}" "disk;create;${NEW};--size" "disk;create;${NEW};--size;12Q"
             "disk;create;${NEW};--size;0" "disk;create;${NEW};--size;1000B" "disk;create;${NEW};--size;-1G"
             "disk;create;${NEW};--size;1G;--cluster-size;3K" "disk;create;${NEW};--size;1G;--cluster-size;4M"
             "disk;create;${NEW};--size;1G;--cluster-size;2K" "disk;create;${NEW};--size;1G;--cluster-size;65536"
             "disk;create;${NEW};--size;1G;--cluster-size;big" "disk;create;${NEW};--backing;${R};--backing-format;vmdk"
             "disk;create;${NEW};--size;1G;--backing-format;raw" "disk;create;${NEW};--size;1G;--bogus"
             "disk;create;${NEW};${NEW}2;--size;1G"
             "disk;info" "disk;info;--json" "disk;info;${R};--bogus" "disk;info;${R};${R}"
             "disk;bench" "disk;bench;${R};--pattern;zigzag" "disk;bench;${R};--pattern" "disk;bench;${R};-s;0B"
             "disk;bench;${R};-s;128M" "disk;bench;${R};-s;4X" "disk;bench;${R};-d;0" "disk;bench;${R};-d;5000"
             "disk;bench;${R};-d;x" "disk;bench;${R};-c;0" "disk;bench;${R};-c;-5" "disk;bench;${R};-c;1e3"
             "disk;bench;${R};--flush-interval;10" "disk;bench;${R};-w;--flush-interval;-1"
             "disk;bench;${R};-o;1G" "disk;bench;${R};-o;64M" "disk;bench;${R};-S;0B"
             "disk;bench;${R};--pattern;rand;-S;8K" "disk;bench;${R};-d;1024;-s;2M" "disk;bench;${R};--bogus")
  math(EXPR i "${i} + 1")
  disk_test(bad_value.${i} --status 2 --one-line-err --err "^vmm: error: " --no-out "." -- ${VMM} ${args})
endforeach()
# None of them left a file behind.
add_test(NAME cli.disk.bad_values_create_nothing COMMAND sh -c "! ls ${NEW}* 2>/dev/null")
set_tests_properties(cli.disk.bad_values_create_nothing PROPERTIES LABELS cli FIXTURES_REQUIRED disk_cli
  DEPENDS "cli.disk.bad_value.5;cli.disk.bad_value.19;cli.disk.create_missing_backing")

# ---- Image errors: status 6, one line naming the file -------------------------------------------
disk_test(info_missing --status 6 --one-line-err --err "^vmm: error: .*/nonexistent.img: cannot open"
  -- ${VMM} disk info ${DISK_CLI_DIR}/nonexistent.img)
disk_test(info_directory --status 6 --one-line-err --err "adir: not a regular file" -- ${VMM} disk info ${DISK_CLI_DIR}/adir)
disk_test(info_dev_null --status 6 --one-line-err --err "^vmm: error: /dev/null" -- ${VMM} disk info /dev/null)
disk_test(bench_missing --status 6 --one-line-err --err "nonexistent.img: cannot open"
  -- ${VMM} disk bench ${DISK_CLI_DIR}/nonexistent.img)
disk_test(bench_directory --status 6 --one-line-err --err "^vmm: error: " -- ${VMM} disk bench -c 10 ${DISK_CLI_DIR}/adir)
disk_test(create_exists --status 6 --one-line-err --err "raw.img: already exists" -- ${VMM} disk create ${R} --size 1G)
disk_test(create_missing_backing --status 6 --one-line-err --err "nonexistent.img"
  -- ${VMM} disk create ${NEW} --backing nonexistent.img)
disk_test(create_no_directory --status 6 --one-line-err --err "^vmm: error: "
  -- ${VMM} disk create ${DISK_CLI_DIR}/nodir/x.qcow2 --size 1G)

# ---- info of a raw file ---------------------------------------------------------------------------
disk_case(info_raw info_raw --status 0 --out "^file format: raw$" --out "^virtual size: 64 MiB \\(67108864 bytes\\)$"
  --out "^disk size: ")
disk_case(info_raw_json info_raw_json --status 0 --out "^json ok$")

# ---- create + info: our images, qemu-img's, and qemu-img reading ours ----------------------------
disk_case(create_plain create_plain --status 0 --out "^file format: qcow2$" --out "^virtual size: 64 MiB \\(67108864 bytes\\)$"
  --out "^cluster_size: 65536$" --out "refcount bits: 16" --out "corrupt: false" --out "dirty: false" --no-out "backing")
disk_case(create_plain_json create_plain_json --status 0 --out "^json ok$")
disk_case(create_overlay create_overlay --status 0 --out "^file format: qcow2$" --out "^virtual size: 4 MiB \\(4194304 bytes\\)$"
  --out "^backing file: data.img$" --out "^backing file format: raw$" --out "^backing chain:$" --out "data.img \\(raw\\)$")
disk_case(create_overlay_json create_overlay_json --status 0 --out "^json ok$")
disk_case(create_chain create_chain --status 0 --out "^json ok$")
disk_case(info_broken_chain info_broken_chain --status 0 --out "^backing file: broken-base.img$" --out "cannot open")
disk_case(qemu_img_info qemu_img_info --status 0 --out "^file format: qcow2$" --out "^virtual size: 64 MiB \\(67108864 bytes\\)$"
  --out "^cluster_size: 65536$" --out "compat: 1.1")
disk_case(qemu_img_info_json qemu_img_info_json --status 0 --out "^json ok$")
disk_case(qemu_img_reads_ours qemu_img_reads_ours --status 0 --out "^json ok$")

# ---- bench smoke runs -----------------------------------------------------------------------------
set(BENCH_LINE "^vmm disk bench: [0-9]+ requests of [0-9]+ bytes in [0-9.]+ s: [0-9]+ req/s, [0-9.]+ MiB/s$")
disk_case(bench_raw bench_raw --status 0 --out "^vmm disk bench: 2000 requests of 4096 bytes in" --out "${BENCH_LINE}")
disk_case(bench_raw_write bench_raw_write --status 0 --out "^vmm disk bench: 2000 requests of 4096 bytes in")
disk_case(bench_qcow2 bench_qcow2 --status 0 --out "^vmm disk bench: 2000 requests of 4096 bytes in" --out "${BENCH_LINE}")
disk_case(bench_overlay bench_overlay --status 0 --out "^vmm disk bench: 1000 requests of 16384 bytes in")
disk_case(bench_qcow2_compare bench_qcow2_compare --status 0 --out "^Images are identical")
disk_case(bench_overlay_shared bench_overlay_shared --status 0 --out "^Images are identical")

# qcow2 engine correctness, judged by QEMU's own tools (label disk). qcow2_tool drives the synchronous
# engine (disk::Qcow2); the scripts in tests/disk/ build images with qemu-img/qemu-io and with our
# engine, run random operation sequences against raw reference files, and have `qemu-img check` and
# `qemu-img compare` judge the result. Each test works in build/tests/disk-qcow2/NAME (kept for a
# post-mortem, wiped when the test starts) and is skipped (77) only when qemu-img is missing.
add_executable(qcow2_tool ${CMAKE_CURRENT_LIST_DIR}/qcow2_tool.cpp)
target_link_libraries(qcow2_tool PRIVATE vmm_disk)

set(QCOW2_WORK ${CMAKE_CURRENT_BINARY_DIR}/disk-qcow2)

# Under ASan/UBSan everything runs 2-3 times slower: shorter sequences, fewer crashes.
set(QCOW2_ENV "")
if(VMM_SANITIZE)
  set(QCOW2_ENV QCOW2_SCALE=35)
endif()

# qcow2_test(NAME TIMEOUT SCRIPT ARGS...): runs tests/disk/SCRIPT TOOL WORKDIR ARGS...
function(qcow2_test name timeout script)
  add_test(NAME disk.qcow2.${name}
    COMMAND ${CMAKE_CURRENT_LIST_DIR}/${script} $<TARGET_FILE:qcow2_tool> ${QCOW2_WORK}/${name} ${ARGN})
  set_tests_properties(disk.qcow2.${name} PROPERTIES LABELS disk TIMEOUT ${timeout} SKIP_RETURN_CODE 77)
  if(QCOW2_ENV)
    set_tests_properties(disk.qcow2.${name} PROPERTIES ENVIRONMENT "${QCOW2_ENV}")
  endif()
endfunction()

# The tool's single operations against qemu-io's view of the same image.
qcow2_test(tool_ops 60 tool-ops.sh)

# Images made by qemu-img (+ qemu-io), changed by our engine, judged by qemu-img check/compare.
foreach(cluster 4k 64k 2m)
  foreach(variant plain raw_backing qcow2_chain)
    qcow2_test(interop.qemu_${cluster}_${variant} 120 interop.sh qemu ${cluster} ${variant})
  endforeach()
endforeach()
foreach(variant plain raw_backing qcow2_chain)
  qcow2_test(interop.qemu_512_${variant}_read 120 interop.sh qemu 512 ${variant} read-only)
endforeach()
qcow2_test(interop.compressed_read 120 interop.sh compressed read-only)
qcow2_test(interop.compressed_write 120 interop.sh compressed write)
qcow2_test(interop.v2_read 120 interop.sh v2)
# Images made by our engine, read and changed by qemu-img (info, check, convert, rebase, commit).
foreach(bits 12 16 21)
  qcow2_test(interop.ours_${bits} 120 interop.sh ours ${bits})
endforeach()
qcow2_test(interop.ours_overlay_raw 120 interop.sh ours_overlay_raw)
qcow2_test(interop.ours_overlay_qcow2 120 interop.sh ours_overlay_qcow2)
qcow2_test(interop.large 120 interop.sh large)
qcow2_test(interop.odd_size 120 interop.sh odd_size)

# Features QEMU can put in an image: handled correctly, or the image refused at open, unchanged.
foreach(feature snapshot lazy_refcounts dirty extended_l2 zstd data_file unknown_incompatible corrupt_bit)
  qcow2_test(features.${feature} 120 features.sh ${feature})
endforeach()

# Refcount-table growth: 512-byte clusters with 64-bit refcounts cover 2 MiB per table cluster.
qcow2_test(refcount_growth 120 interop.sh refcount_growth)
# Bit-packed and wide refcounts (refcount_bits 1..32) and preallocated images made by qemu-img.
qcow2_test(refcount_widths 120 interop.sh refcount_widths)

# Long random sequences (QCOW2_PROPERTY_SEEDS, QCOW2_PROPERTY_OPS) on several cluster sizes.
foreach(bits 12 16 21)
  foreach(backing none raw qcow2)
    qcow2_test(property.c${bits}_${backing} 180 property.sh ${bits} ${backing})
  endforeach()
endforeach()

# The same with a metadata cache of 8 clusters: tables are evicted and written back mid-operation.
qcow2_test(property.c12_none_small_cache 180 property.sh 12 none small-cache)
qcow2_test(property.c16_raw_small_cache 180 property.sh 16 raw small-cache)

# A writer killed by SIGKILL at random moments (CRASH_ITERATIONS, CRASH_SEED): no corruption, and
# every write before the last completed flush is there.
qcow2_test(crash 300 crash-test.sh)

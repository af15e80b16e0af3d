# libFuzzer targets, built only by clang in a configure of their own (scripts/fuzz.sh TARGET; its
# wrappers scripts/fuzz-qcow2.sh, scripts/fuzz-state.sh, scripts/fuzz-kvm-stats.sh,
# scripts/fuzz-kvm-cache.sh, scripts/fuzz-agent-identity.sh, scripts/fuzz-guest-io.sh, scripts/fuzz-kernel.sh,
# scripts/fuzz-manifest.sh):
#   cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DVMM_FUZZ=ON
#   ninja -C build-fuzz qcow2_fuzz state_fuzz kvm_stats_fuzz kvm_cache_fuzz agent_identity_fuzz guest_io_fuzz kernel_fuzz manifest_fuzz
# With VMM_FUZZ every host library is instrumented for libFuzzer (coverage) and built with ASan and
# UBSan; the normal g++ build never sees any of this.
# In the normal build there are only the smoke tests below, each running its script (one clang build
# under ${CMAKE_BINARY_DIR}/fuzz, a few minutes the first time and half a minute after a change
# to the engine, then 30 s of fuzzing). Not in the ASan build: the fuzz build is sanitized already.
option(VMM_FUZZ "Build the libFuzzer targets (clang only; instruments all host code)" OFF)

if(VMM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(WARNING "VMM_FUZZ needs clang (-DCMAKE_CXX_COMPILER=clang++); no fuzz targets with ${CMAKE_CXX_COMPILER_ID}")
  else()
    target_compile_options(vmm_host_flags INTERFACE -fsanitize=fuzzer-no-link,address,undefined
      -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    target_link_options(vmm_host_flags INTERFACE -fsanitize=address,undefined)

    # libstdc++ 12 offers std::expected only to compilers with P0848 (conditionally trivial special
    # members), which clang gained in 16: older clangs get the stand-in from compat/.
    include(CheckCXXSourceCompiles)
    check_cxx_source_compiles("#include <expected>\nint main() { std::expected<int, int> e{1}; return *e - 1; }"
      VMM_FUZZ_HAVE_STD_EXPECTED)
    if(NOT VMM_FUZZ_HAVE_STD_EXPECTED)
      target_include_directories(vmm_host_flags SYSTEM BEFORE INTERFACE ${CMAKE_CURRENT_LIST_DIR}/compat)
    endif()

    # qcow2_fuzz: an image file plus a short sequence of guest operations through disk::Qcow2.
    add_executable(qcow2_fuzz ${CMAKE_CURRENT_LIST_DIR}/qcow2_fuzz.cpp)
    target_link_libraries(qcow2_fuzz PRIVATE vmm_disk vmm_base)
    target_link_options(qcow2_fuzz PRIVATE -fsanitize=fuzzer)

    # state_fuzz: a snapshot state file through clone::parse_state_file, clone::read_shape and the
    # device-state decoders (devices built with fake VM interfaces: no KVM is opened).
    add_executable(state_fuzz ${CMAKE_CURRENT_LIST_DIR}/state_fuzz.cpp)
    target_link_libraries(state_fuzz PRIVATE vmm_clone vmm_devices vmm_disk vmm_base)
    target_link_options(state_fuzz PRIVATE -fsanitize=fuzzer)

    # kvm_stats_fuzz: a KVM binary stats file (KVM_GET_STATS_FD) through parse_kvm_stats.
    add_executable(kvm_stats_fuzz ${CMAKE_CURRENT_LIST_DIR}/kvm_stats_fuzz.cpp)
    target_link_libraries(kvm_stats_fuzz PRIVATE vmm_core vmm_base)
    target_link_options(kvm_stats_fuzz PRIVATE -fsanitize=fuzzer)

    # kvm_cache_fuzz: the supported-CPUID cache file through decode_cpuid_cache.
    add_executable(kvm_cache_fuzz ${CMAKE_CURRENT_LIST_DIR}/kvm_cache_fuzz.cpp)
    target_link_libraries(kvm_cache_fuzz PRIVATE vmm_core vmm_base)
    target_link_options(kvm_cache_fuzz PRIVATE -fsanitize=fuzzer)

    # agent_identity_fuzz: vmm-agent's identity file (guest-images/linux/vmm-agent/identity.c).
    add_executable(agent_identity_fuzz ${CMAKE_CURRENT_LIST_DIR}/agent_identity_fuzz.cpp)
    target_link_libraries(agent_identity_fuzz PRIVATE vmm_agent_identity vmm_host_flags)
    target_link_options(agent_identity_fuzz PRIVATE -fsanitize=fuzzer)

    # guest_io_fuzz: a hostile guest's port, MMIO, PCI configuration and virtqueue traffic through the
    # legacy devices and virtio-blk/virtio-net over virtio-pci (no KVM: the accesses are made directly).
    add_executable(guest_io_fuzz ${CMAKE_CURRENT_LIST_DIR}/guest_io_fuzz.cpp)
    target_link_libraries(guest_io_fuzz PRIVATE vmm_devices vmm_disk vmm_base)
    target_link_options(guest_io_fuzz PRIVATE -fsanitize=fuzzer)

    # kernel_fuzz: a kernel file (and an initrd, a command line, a RAM size) through boot::load.
    add_executable(kernel_fuzz ${CMAKE_CURRENT_LIST_DIR}/kernel_fuzz.cpp)
    target_link_libraries(kernel_fuzz PRIVATE vmm_boot vmm_base)
    target_link_options(kernel_fuzz PRIVATE -fsanitize=fuzzer)

    # manifest_fuzz: a template's manifest.json and a clone's clone.json through their parsers.
    add_executable(manifest_fuzz ${CMAKE_CURRENT_LIST_DIR}/manifest_fuzz.cpp)
    target_link_libraries(manifest_fuzz PRIVATE vmm_clone vmm_base)
    target_link_options(manifest_fuzz PRIVATE -fsanitize=fuzzer)
  endif()
endif()

if(NOT VMM_FUZZ AND NOT VMM_SANITIZE)
  add_test(NAME fuzz.qcow2_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-qcow2.sh 30)
  # The smoke tests share one clang build directory: never two configures or ninjas in it at once.
  set_tests_properties(fuzz.qcow2_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.state_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-state.sh 30)
  set_tests_properties(fuzz.state_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.kvm_stats_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-kvm-stats.sh 30)
  set_tests_properties(fuzz.kvm_stats_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.kvm_cache_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-kvm-cache.sh 30)
  set_tests_properties(fuzz.kvm_cache_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.agent_identity_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-agent-identity.sh 30)
  set_tests_properties(fuzz.agent_identity_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.guest_io_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-guest-io.sh 30)
  set_tests_properties(fuzz.guest_io_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.kernel_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-kernel.sh 30)
  set_tests_properties(fuzz.kernel_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  add_test(NAME fuzz.manifest_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-manifest.sh 30)
  set_tests_properties(fuzz.manifest_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
    ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
endif()

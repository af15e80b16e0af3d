# libFuzzer targets, built only by clang in a configure of their own (scripts/fuzz.sh TARGET; its
# wrappers scripts/fuzz-qcow2.sh, scripts/fuzz-state.sh, scripts/fuzz-kvm-stats.sh,
# scripts/fuzz-kvm-cache.sh, scripts/fuzz-agent-identity.sh, scripts/fuzz-guest-io.sh, scripts/fuzz-kernel.sh,
# scripts/fuzz-manifest.sh, scripts/fuzz-http.sh, scripts/fuzz-http-client.sh, scripts/fuzz-exit.sh,
# scripts/fuzz-api.sh):
#   cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DVMM_FUZZ=ON
#   ninja -C build-fuzz qcow2_fuzz state_fuzz kvm_stats_fuzz kvm_cache_fuzz agent_identity_fuzz guest_io_fuzz kernel_fuzz manifest_fuzz http_fuzz http_client_fuzz exit_fuzz api_fuzz
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

    # One target per tests/fuzz/NAME_fuzz.cpp, linked to the libraries it drives.
    function(vmm_fuzz_target name)
      add_executable(${name}_fuzz ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/${name}_fuzz.cpp)
      target_link_libraries(${name}_fuzz PRIVATE ${ARGN})
      target_link_options(${name}_fuzz PRIVATE -fsanitize=fuzzer)
    endfunction()
    # qcow2: an image file plus a short sequence of guest operations through disk::Qcow2.
    vmm_fuzz_target(qcow2 vmm_disk vmm_base)
    # state: a snapshot state file through clone::parse_state_file, clone::read_shape and the
    # device-state decoders (devices built with fake VM interfaces: no KVM is opened).
    vmm_fuzz_target(state vmm_clone vmm_devices vmm_disk vmm_base)
    # kvm_stats: a KVM binary stats file (KVM_GET_STATS_FD) through parse_kvm_stats.
    vmm_fuzz_target(kvm_stats vmm_core vmm_base)
    # kvm_cache: the supported-CPUID cache file through decode_cpuid_cache.
    vmm_fuzz_target(kvm_cache vmm_core vmm_base)
    # agent_identity: vmm-agent's identity file (guest-images/linux/vmm-agent/identity.c).
    vmm_fuzz_target(agent_identity vmm_agent_identity vmm_host_flags)
    # guest_io: a hostile guest's port, MMIO, PCI configuration and virtqueue traffic through the
    # legacy devices and virtio-blk/virtio-net over virtio-pci (no KVM: the accesses are made directly).
    vmm_fuzz_target(guest_io vmm_devices vmm_disk vmm_base)
    # kernel: a kernel file (and an initrd, a command line, a RAM size) through boot::load.
    vmm_fuzz_target(kernel vmm_boot vmm_base)
    # manifest: a template's manifest.json and a clone's clone.json through their parsers.
    vmm_fuzz_target(manifest vmm_clone vmm_base)
    # exit: a kvm_run page a hostile guest and KVM left, through handle_exit (no KVM is opened).
    vmm_fuzz_target(exit vmm_core vmm_devices vmm_base)
    # http: what a client sends on a VM's API socket, through the HTTP plugin (its source compiled
    # into the target) and Debian's cpp-httplib.
    pkg_check_modules(FUZZ_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
    vmm_fuzz_target(http vmm_api PkgConfig::FUZZ_HTTPLIB fmt::fmt-header-only)
    target_sources(http_fuzz PRIVATE ${CMAKE_SOURCE_DIR}/vmm/api/http_plugin.cpp)
    # http_client: what a server answers the CLI, through parse_response (vmm/api/http_client.hpp).
    vmm_fuzz_target(http_client vmm_api vmm_base)
    # api: a request's method, path and body through parse_vm_request and parse_pool_request.
    vmm_fuzz_target(api vmm_api vmm_core vmm_base)
  endif()
endif()

if(NOT VMM_FUZZ AND NOT VMM_SANITIZE)
  # The smoke tests share one clang build directory: never two configures or ninjas in it at once.
  foreach(target qcow2 state kvm-stats kvm-cache agent-identity guest-io kernel manifest http http-client exit api)
    string(REPLACE "-" "_" test ${target})
    add_test(NAME fuzz.${test}_smoke COMMAND ${CMAKE_SOURCE_DIR}/scripts/fuzz-${target}.sh 30)
    set_tests_properties(fuzz.${test}_smoke PROPERTIES LABELS fuzz TIMEOUT 900 SKIP_RETURN_CODE 77
      ENVIRONMENT "VMM_FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz" RESOURCE_LOCK vmm_fuzz_build)
  endforeach()
endif()

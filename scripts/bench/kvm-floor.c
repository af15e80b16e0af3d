// KVM's own floor for the clone and fork rows, measured in the same run as vmm (scripts/bench/clone.sh,
// fleet.sh): what any VMM must ask of this host's KVM to start a VM of that size and run its first
// guest instruction, with nothing of vmm's in it. Each VM: KVM_CREATE_VM, KVM_SET_TSS_ADDR, a memory
// slot over the guest RAM, KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_CREATE_VCPU and its run area,
// KVM_SET_CPUID2 (the host's supported CPUID), KVM_SET_SREGS and KVM_SET_REGS (a flat 32-bit guest),
// and KVM_RUN until the guest's first OUT (one instruction). A real VMM also restores the rest of
// the state (~12 more vCPU ioctls) and its devices: not in the floor.
//
//   kvm-floor clone FILE MIB N   N VMs one after another, each over its own MAP_PRIVATE mapping of
//                                FILE (a template's memory file; "-": anonymous memory) of MIB MiB;
//                                prints each step's median and the total's median, min and max (ms).
//   kvm-floor fork MIB DIRTY N   a VM of MIB MiB (anonymous, MADV_HUGEPAGE, as vmm's booted guest)
//                                whose guest writes a byte in every 4 KiB page of DIRTY MiB, then N
//                                times: fork(); the child makes its own VM over the inherited RAM (as
//                                above) and runs it to its first OUT. Prints the medians of fork()
//                                in the parent (its pause floor) and of fork start -> the child's
//                                first exit (ms).
// Medians of N; the first VM or fork is a warm-up and not counted.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}
static double med(double* v, int n) {
  qsort(v, n, sizeof *v, cmp);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
static void die(const char* what) {
  perror(what);
  exit(1);
}

static int kvm;
static struct kvm_cpuid2* cpuid;
enum { kCodeGpa = 0x1000, kSteps = 8 };
static const size_t kHoleStart = 0xc0000000;  // vmm's layout::kMmioHoleStart
static const char* step_names[kSteps] = {"create_vm", "memslot", "irqchip", "pit", "vcpu", "cpuid", "regs", "run"};

static void flat32(int vcpu, uint64_t rip) {
  struct kvm_sregs s;
  if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
  struct kvm_segment seg = {.base = 0, .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
  s.cs = seg;
  seg.type = 3;
  seg.selector = 16;
  s.ds = s.es = s.fs = s.gs = s.ss = seg;
  s.cr0 |= 1;  // protected mode, no paging
  if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
  struct kvm_regs r = {.rip = rip, .rflags = 2};
  if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
}

/// A VM over `ram` (`size` bytes), its guest's code at kCodeGpa already written; runs it to its
/// first OUT. Fills t[kSteps] with each step's time (ms); returns the vCPU fd (the VM's fd in *vm).
static int make_vm(uint8_t* ram, size_t size, double* t, int* vm_out) {
  double a = now(), b;
#define STEP(i) (b = now(), t[i] = b - a, a = b)
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");
  STEP(0);
  // vmm's layout: RAM up to 3 GiB at 0, the rest from 4 GiB on (the MMIO hole between).
  const size_t low = size < kHoleStart ? size : kHoleStart;
  struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = low, .userspace_addr = (uintptr_t)ram};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
  if (size > low) {
    struct kvm_userspace_memory_region h = {.slot = 1, .guest_phys_addr = 1ull << 32, .memory_size = size - low, .userspace_addr = (uintptr_t)ram + low};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &h) < 0) die("KVM_SET_USER_MEMORY_REGION (high)");
  }
  STEP(1);
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  STEP(2);
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
  STEP(3);
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  STEP(4);
  if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
  STEP(5);
  flat32(vcpu, kCodeGpa);
  STEP(6);
  const int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run* run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10) break;
    if (run->exit_reason != KVM_EXIT_IO) {
      fprintf(stderr, "kvm-floor: unexpected exit %u\n", run->exit_reason);
      exit(1);
    }
  }
  STEP(7);
#undef STEP
  munmap(run, run_size);
  *vm_out = vm;
  return vcpu;
}

/// Guest code at kCodeGpa: writes a byte in each 4 KiB page of [1 MiB, EAX), then OUT 0x10 and HLT
/// (EAX is 0 at first: the OUT at once).
static void write_code(uint8_t* ram) {
  static const uint8_t code[] = {
      0xbf, 0x00, 0x00, 0x10, 0x00,        // mov edi, 0x100000
      0x39, 0xc7,                          // cmp edi, eax   (loop: eax = end)
      0x73, 0x0b,                          // jae done
      0xc6, 0x07, 0x01,                    // mov byte [edi], 1
      0x81, 0xc7, 0x00, 0x10, 0x00, 0x00,  // add edi, 0x1000
      0xeb, 0xf1,                          // jmp loop
      0xe6, 0x10,                          // done: out 0x10, al
      0xf4,                                // hlt
  };
  memcpy(ram + kCodeGpa, code, sizeof code);
}

static uint8_t* map_ram(const char* file, size_t size) {
  uint8_t* p;
  if (strcmp(file, "-") == 0) {
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) madvise(p, size, MADV_HUGEPAGE);
  } else {
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(file);
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    close(fd);
  }
  if (p == MAP_FAILED) die("mmap guest RAM");
  return p;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: kvm-floor clone FILE MIB N | kvm-floor fork MIB DIRTY N\n");
    return 2;
  }
  kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  cpuid = calloc(1, sizeof *cpuid + 256 * sizeof(struct kvm_cpuid_entry2));
  cpuid->nent = 256;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
  const int n = atoi(argv[4]);
  if (n < 1) return 2;
  if (strcmp(argv[1], "clone") == 0) {
    const size_t size = (size_t)atoi(argv[3]) << 20;
    double(*t)[kSteps] = calloc(n + 1, sizeof *t), *total = calloc(n + 1, sizeof *total);
    for (int i = 0; i <= n; ++i) {
      const double a = now();
      uint8_t* ram = map_ram(argv[2], size);
      write_code(ram);
      int vm, vcpu = make_vm(ram, size, t[i], &vm);
      total[i] = now() - a;
      close(vcpu);
      close(vm);
      munmap(ram, size);
    }
    printf("kvm-floor clone %s MiB:", argv[3]);
    for (int s = 0; s < kSteps; ++s) {
      double v[n];
      for (int i = 0; i < n; ++i) v[i] = t[i + 1][s];
      printf(" %s %.3f;", step_names[s], med(v, n));
    }
    const double tot = med(total + 1, n);
    printf(" total median %.3f min %.3f max %.3f ms\n", tot, total[1], total[n]);
    return 0;
  }
  if (strcmp(argv[1], "fork") == 0) {
    const size_t size = (size_t)atoi(argv[2]) << 20, dirty = (size_t)atoi(argv[3]) << 20;
    if (dirty + (1u << 20) > size || dirty + (1u << 20) > kHoleStart) {
      fprintf(stderr, "kvm-floor fork: DIRTY + 1 MiB must fit in MIB and below 3 GiB (a flat 32-bit guest)\n");
      return 2;
    }
    uint8_t* ram = map_ram("-", size);
    write_code(ram);
    double t[kSteps];
    int vm, vcpu;
    {  // the parent's guest dirties its memory (eax = the end): its VM then maps those pages
      vcpu = make_vm(ram, size, t, &vm);
      struct kvm_regs r;
      if (ioctl(vcpu, KVM_GET_REGS, &r) < 0) die("KVM_GET_REGS");
      r.rip = kCodeGpa;
      r.rax = (1u << 20) + dirty;
      if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
      const int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
      struct kvm_run* run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
      do {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
      } while (!(run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10));
      munmap(run, run_size);
    }
    double* pause = calloc(n + 1, sizeof(double));
    double* child = calloc(n + 1, sizeof(double));
    for (int i = 0; i <= n; ++i) {
      int p[2];
      if (pipe(p) < 0) die("pipe");
      const double a = now();
      const pid_t pid = fork();
      if (pid < 0) die("fork");
      if (pid == 0) {
        close(p[0]);
        double ct[kSteps];
        int cvm;
        make_vm(ram, size, ct, &cvm);  // over the inherited copy-on-write RAM, as vmm's child
        const double done = now();
        (void)!write(p[1], &done, sizeof done);
        _exit(0);
      }
      pause[i] = now() - a;
      close(p[1]);
      double done = 0;
      if (read(p[0], &done, sizeof done) != sizeof done) {
        fprintf(stderr, "kvm-floor fork: the child failed\n");
        return 1;
      }
      close(p[0]);
      waitpid(pid, NULL, 0);
      child[i] = done - a;
    }
    const double pause_median = med(pause + 1, n), child_median = med(child + 1, n);  // (each sorts: [1] is the min)
    printf("kvm-floor fork %s MiB, %s MiB dirtied: fork() median %.3f ms (min %.3f); fork -> the child's first exit median %.3f ms (min %.3f)\n",
           argv[2], argv[3], pause_median, pause[1], child_median, child[1]);
    return 0;
  }
  fprintf(stderr, "usage: kvm-floor clone FILE MIB N | kvm-floor fork MIB DIRTY N\n");
  return 2;
}

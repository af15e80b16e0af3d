// scripts/bench/fleet.sh's "does creating a VM get slower as their number grows" probe, KVM alone:
// creates N VMs one after another, each: KVM_CREATE_VM, a memslot of MIB MiB over a private
// anonymous mapping, KVM_CREATE_IRQCHIP, KVM_CREATE_VCPU and its run area (what vmm's Machine::create asks of
// KVM), and keeps them all. PER=0: all in this process; PER=k: each k in a fresh child of this
// process (which holds no VM), as a fleet's clones are. Prints each step's median per hundred VMs,
// then ends every VM (its children too).
// usage: vm-growth N MIB PER
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return x < y ? -1 : x > y; }
static double med(double* v, int n) { qsort(v, n, sizeof *v, cmp); return v[n / 2]; }
static double (*t)[5];
static int kvm, runsz, mib;
static void make(int i) {
  double t0 = now();
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) { perror("KVM_CREATE_VM"); exit(1); }
  double t1 = now();
  // The memslot before the irqchip, as vmm's Vm::create does: the other way round, on Linux 6.18,
  // KVM_SET_USER_MEMORY_REGION takes ~7.8 ms (it waits for an SRCU grace period once an irqchip
  // exists), 50 times the rest together.
  void* mem = mmap(NULL, (size_t)mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = (size_t)mib << 20, .userspace_addr = (unsigned long)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { perror("memslot"); exit(1); }
  double t2 = now();
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) { perror("irqchip"); exit(1); }
  double t3 = now();
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) { perror("vcpu"); exit(1); }
  mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  double t4 = now();
  t[i][0] = t1 - t0; t[i][1] = t2 - t1; t[i][2] = t3 - t2; t[i][3] = t4 - t3; t[i][4] = t4 - t0;
}
int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: vm-growth N MIB PER\n");
    return 2;
  }
  int n = atoi(argv[1]), per = atoi(argv[3]), nchildren = 0, failed = 0;
  if (n < 1 || per < 0) return 2;
  mib = atoi(argv[2]);
  struct rlimit rl = {65536, 65536}; setrlimit(RLIMIT_NOFILE, &rl);
  kvm = open("/dev/kvm", O_RDWR);
  if (kvm < 0) { perror("/dev/kvm"); return 1; }
  runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  t = mmap(NULL, sizeof(double[5]) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t* children = calloc((size_t)n, sizeof(pid_t));
  for (int i = 0; i < n;) {
    if (!per) { make(i++); continue; }
    int p[2];
    if (pipe(p)) return 1;
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      failed = 1;
      break;
    }
    if (pid == 0) {
      for (int k = 0; k < per && i + k < n; k++) make(i + k);
      if (write(p[1], "x", 1) != 1) return 1;
      for (;;) pause();
    }
    children[nchildren++] = pid;
    close(p[1]);
    char c;
    const ssize_t got = read(p[0], &c, 1);  // 0: the child ended without its VMs (it said why)
    close(p[0]);
    if (got != 1) {
      failed = 1;
      break;
    }
    i += per;
  }
  if (failed) {
    for (int k = 0; k < nchildren; k++) kill(children[k], SIGKILL);
    for (int k = 0; k < nchildren; k++) waitpid(children[k], NULL, 0);
    return 1;
  }
  printf("hundred  create_vm  memslot  irqchip  vcpu  total (ms, medians)\n");
  for (int h = 0; h + 100 <= n; h += 100) {
    double v[5][100];
    for (int k = 0; k < 100; k++) for (int s = 0; s < 5; s++) v[s][k] = t[h + k][s];
    printf("%7d  %9.3f  %7.3f  %7.3f  %5.3f  %5.3f\n", h / 100 + 1, med(v[0], 100), med(v[1], 100), med(v[2], 100), med(v[3], 100), med(v[4], 100));
  }
  for (int k = 0; k < nchildren; k++) kill(children[k], SIGKILL);
  for (int k = 0; k < nchildren; k++) waitpid(children[k], NULL, 0);
  return 0;
}

// Keeps one idle KVM VM (in-kernel irqchip, one vCPU that never runs) alive in the nested lane's L1
// for as long as L1 runs, so that the kernel's static keys that follow the number of VMs and vCPUs
// never fall back to zero and flip again: preempt_notifier_key (inlined into __schedule: each VM
// created or destroyed while none other exists re-patches the scheduler), KVM's apic_hw_disabled and
// apic_sw_disabled. Each flip rewrites live kernel text through int3 (text_poke_bp), and under
// multi-threaded QEMU TCG that can wedge L1 (TCG's fault or the kernel's: not known). Traced
// 2026-12-04 (QEMU 7.2, 2 L1 vCPUs, a benchmark that made and ended ~100 VMs one after another):
// both L1 vCPUs spun forever with interrupts off, one at __schedule+0x2ab (the key's site), one in
// asm_exc_int3 (QEMU's monitor, symbols from L1's kallsyms); L1 froze in at least 5 of 13 runs,
// and in none of 6 with this program running.
// Linked statically and started by l1-init.sh before the test.
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) {
    perror("l1-kvm-hold: /dev/kvm");
    return 1;
  }
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0 || ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0 || ioctl(vm, KVM_CREATE_VCPU, 0) < 0) {
    perror("l1-kvm-hold: creating the VM");
    return 1;
  }
  for (;;) pause();
}

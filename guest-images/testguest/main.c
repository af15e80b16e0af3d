/* The vmm test guest: prints a banner with its vCPU count (from the ACPI MADT), runs the scenario
 * named by the first command-line word, and exits through the debug-exit port 0xf4 (QEMU
 * isa-debug-exit convention). Ring-0 code is emulated on some hosts: keep the work tiny.
 * Scenarios: hello, echo (polls the UART), smp, fault, wait-erratum (irq.c); virtio.c: blk-*,
 * hostile-*, net-*;
 * for clone tests, which snapshot after the ready line and resume clones there (interrupt-driven,
 * idle in `sti; hlt`: irq.c, and tg_wait in isr.S):
 *   counter    `counter: ready`; `inc N` / `get` → `counter: value=V`; `quit` (clone.c)
 *   ticks      PIT at 100 Hz; `ticks: ready` after the first tick; `get` → `ticks: n=N` (clone.c)
 *   dirty N    writes every 4 KiB page of N MiB; `dirty: ready mib=N`; `check` → `dirty: ok` or
 *              `dirty: BAD page at 0x...` (clone.c)
 *   identity   reads opt/vmm/identity from fw_cfg; `identity: ready`, then `identity: id=...
 *              generation=... name=... mac0=... time=...` again whenever the generation changes;
 *              `get`; exits with 3 when fw_cfg or the file is absent (identity.c)
 * Each of them also answers `quit` (exit status 0), and powers off (ACPI S5) when the VMM presses
 * the power button (IRQ 6, irq.c). The second command-line word is the argument. */
#include <stdint.h>

#include "tg.h"

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4

void triple_fault(void);

/* ---- serial: bytes are collected and sent 16 at a time (the 16550 FIFO depth) with one
 * `rep outsb` after THRE, so a line costs one or a few VM exits instead of one per byte. ---- */
static char tx_buf[16];
static unsigned tx_len;
static void send_(const char* s, unsigned long n);
static void flush_(void) {
  if (!tx_len) return;
  send_(tx_buf, tx_len);
  tx_len = 0;
}
void putc_(char c) {
  tx_buf[tx_len++] = c;
  if (c == '\n' || tx_len == sizeof tx_buf) flush_();
}
/* The index of the first `c` in s[0, max), or max: one `repne scasb`. */
static unsigned long find_(const char* s, char c, unsigned long max) {
  if (!max) return 0;
  const char* p = s;
  unsigned long n = max;
  __asm__ volatile("repne scasb" : "+D"(p), "+c"(n) : "a"(c), "m"(*(const char(*)[max])s) : "cc");
  return p[-1] == c ? (unsigned long)(p - 1 - s) : max;
}
/* Sends s[0, n) (n <= 16, the FIFO's depth) once the transmitter is empty. */
static void send_(const char* s, unsigned long n) {
  while (!(inb(COM1 + 5) & 0x20)) __asm__ volatile("pause");
  __asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"((uint16_t)COM1) : "memory");
}
/* A string goes into the buffer a run at a time (up to its next '\n' or the buffer's end) with
 * string instructions: where the guest's ring 0 is emulated an instruction at a time, putc_'s ~14
 * instructions a byte were most of a line's cost (~0.3 ms for 16 bytes), ahead of its first byte.
 * With nothing buffered, whole lines and full FIFOs' worth go out straight from the string: the
 * same bytes in the same order, without the copy (~30 instructions fewer before a first byte). */
void puts_(const char* s) {
  unsigned long len = find_(s, '\0', ~0UL >> 1);
  while (len) {
    if (!tx_len) {
      unsigned long n = len < sizeof tx_buf ? len : sizeof tx_buf;
      const unsigned long nl = find_(s, '\n', n);
      if (nl < n || n == sizeof tx_buf) {
        if (nl < n) n = nl + 1;
        send_(s, n);
        s += n;
        len -= n;
        continue;
      }
    }
    const unsigned long room = sizeof tx_buf - tx_len;
    unsigned long n = len < room ? len : room;
    const unsigned long nl = find_(s, '\n', n);
    if (nl < n) n = nl + 1;
    char* d = tx_buf + tx_len;
    unsigned long c = n;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(c) : : "memory");
    tx_len += (unsigned)n;
    len -= n;
    if (tx_buf[tx_len - 1] == '\n' || tx_len == sizeof tx_buf) flush_();
  }
}
void putnow_(const char* s, unsigned long n) {
  flush_();
  while (n) {
    const unsigned long k = n < sizeof tx_buf ? n : sizeof tx_buf;
    send_(s, k);
    s += k;
    n -= k;
  }
}
void putu(unsigned v) {
  char buf[12];
  int i = 0;
  do buf[i++] = (char)('0' + v % 10); while ((v /= 10) && i < 11);
  while (i) putc_(buf[--i]);
}

void putx(uint64_t v) {
  puts_("0x");
  int started = 0;
  for (int shift = 60; shift >= 0; shift -= 4) {
    unsigned d = (unsigned)(v >> shift) & 0xf;
    if (d || started || shift == 0) putc_("0123456789abcdef"[d]), started = 1;
  }
}

void guest_exit(uint32_t status) {
  if (tg_blocked_irqs) {  /* said last, so that no answer a test reads is interleaved with it */
    puts_("testguest: the CPU delivered ");
    putu64(tg_blocked_irqs);
    puts_(" interrupt(s) where it had to hold them (the last at rip ");
    putx(tg_blocked_rip);
    puts_("): the wait ended instead of halting for ever\n");
  }
  flush_();
  outl(DEBUG_EXIT, status);
  for (;;) __asm__ volatile("cli; hlt");
}

/* ---- ACPI: count enabled processors in the MADT (ACPI 6.4 §5.2.12) ---- */
static int sig_eq(const volatile uint8_t* p, const char* s, int n) {
  for (int i = 0; i < n; i++)
    if (p[i] != (uint8_t)s[i]) return 0;
  return 1;
}
static uint32_t rd32(const volatile uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const volatile uint8_t* p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static const volatile uint8_t* find_rsdp(uint64_t hint) {
  if (hint) return (const volatile uint8_t*)hint;
  for (uint64_t a = 0xe0000; a < 0x100000; a += 16)  /* only when the loader gave no hint */
    if (sig_eq((const volatile uint8_t*)a, "RSD PTR ", 8)) return (const volatile uint8_t*)a;
  return 0;
}

static uint8_t apic_ids[256];
static unsigned count_cpus(uint64_t rsdp_hint) {
  const volatile uint8_t* rsdp = find_rsdp(rsdp_hint);
  if (!rsdp || !sig_eq(rsdp, "RSD PTR ", 8)) return 1;
  int xsdt = rsdp[15] >= 2 && rd64(rsdp + 24);
  const volatile uint8_t* sdt = (const volatile uint8_t*)(xsdt ? rd64(rsdp + 24) : rd32(rsdp + 16));
  uint32_t len = rd32(sdt + 4), step = xsdt ? 8 : 4;
  if (len < 36 || len > 0x10000) return 1;
  for (uint32_t off = 36; off + step <= len; off += step) {
    const volatile uint8_t* t = (const volatile uint8_t*)(xsdt ? rd64(sdt + off) : rd32(sdt + off));
    if (!sig_eq(t, "APIC", 4)) continue;
    uint32_t tlen = rd32(t + 4), n = 0;
    if (tlen > 0x10000) return 1;
    for (uint32_t e = 44; e + 2 <= tlen;) {
      uint8_t type = t[e], elen = t[e + 1];
      if (elen < 2) break;
      if (type == 0 && elen >= 8 && (t[e + 4] & 1) && n < 256) apic_ids[n++] = t[e + 3];
      if (type == 9 && elen >= 16 && (t[e + 8] & 1) && n < 256) apic_ids[n++] = (uint8_t)rd32(t + e + 4);
      e += elen;
    }
    if (!n) apic_ids[n++] = 0;
    return n;
  }
  return 1;
}

/* ---- scenarios ---- */
static void echo(void) {
  char line[257];
  unsigned n = 0;
  for (;;) {
    while (!(inb(COM1 + 5) & 0x01)) __asm__ volatile("pause");
    char c = (char)inb(COM1);
    if (c != '\n' && c != '\r') {
      if (n < 256) line[n++] = c;
      continue;
    }
    if (n == 0) continue;
    line[n] = 0;
    if (n == 4 && sig_eq((const uint8_t*)line, "quit", 4)) {
      puts_("echo: bye\n");
      guest_exit(0);
    }
    puts_("echo: ");
    puts_(line);
    putc_('\n');
    n = 0;
  }
}

/* A guest that takes no interrupts and never ends by itself: halted with interrupts off, so an
 * ACPI power button (or any interrupt) reaches nothing and only a hard stop ends it. Unlike echo's
 * busy poll of the UART, it costs its host nothing while it waits. */
static void deaf(void) {
  puts_("deaf: halted with interrupts off\n");
  for (;;) __asm__ volatile("cli; hlt");
}

/* ---- smp: INIT-SIPI-SIPI through the xAPIC (Intel SDM vol. 3A §8.4.4) ---- */
#define LAPIC 0xfee00000ul
extern char tramp_start[], tramp_end[];
static volatile unsigned alive = 1, print_lock;
static void lock_(void) {
  while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE)) __asm__ volatile("pause");
}
static void unlock_(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }
static uint32_t lapic_read(unsigned reg) { return *(volatile uint32_t*)(LAPIC + reg); }
static void lapic_write(unsigned reg, uint32_t v) { *(volatile uint32_t*)(LAPIC + reg) = v; }
static void send_ipi(uint8_t apic, uint32_t low) {
  lapic_write(0x310, (uint32_t)apic << 24);
  lapic_write(0x300, low);
  for (unsigned i = 0; i < 100000 && (lapic_read(0x300) & (1u << 12)); i++) __asm__ volatile("pause");
}

void ap_main(void) {
  unsigned id = lapic_read(0x20) >> 24;
  lock_();
  puts_("cpu ");
  putu(id);
  puts_(" alive\n");
  unlock_();
  __atomic_add_fetch(&alive, 1, __ATOMIC_SEQ_CST);
}

static void smp(unsigned cpus) {
  volatile uint8_t* dst = (volatile uint8_t*)0x8000;
  for (char* p = tramp_start; p < tramp_end; p++) *dst++ = (uint8_t)*p;
  uint8_t bsp = (uint8_t)(lapic_read(0x20) >> 24);
  for (unsigned i = 0; i < cpus; i++) {
    if (apic_ids[i] == bsp) continue;
    unsigned before = alive;
    send_ipi(apic_ids[i], 0x4500);         /* INIT */
    send_ipi(apic_ids[i], 0x4600 | 0x08);  /* SIPI → 0x8000 */
    for (unsigned long n = 0; n < 20000000ul && alive == before; n++) __asm__ volatile("pause");
  }
  lock_();
  puts_("smp: ");
  putu(alive);
  putc_('/');
  putu(cpus);
  puts_(" cpus alive\n");
  unlock_();
  guest_exit(alive == cpus ? 0 : 1);
}

int streq(const char* a, const char* b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}
int starts_with(const char* s, const char* prefix) {
  while (*prefix && *s == *prefix) s++, prefix++;
  return !*prefix;
}

const volatile uint8_t* tg_memmap;
uint32_t tg_memmap_entries;

void guest_main(uint32_t start_info) {
  const volatile uint8_t* si = (const volatile uint8_t*)(uint64_t)start_info;
  char scenario[64] = "hello", arg[64] = "";
  uint64_t rsdp = 0;
  if (si && rd32(si) == 0x336ec578) {
    rsdp = rd64(si + 32);
    /* The end of RAM below 4 GiB, from the memory map (hvm_start_info version 1). */
    extern uint64_t tg_ram_end;
    const volatile uint8_t* map = (const volatile uint8_t*)rd64(si + 40);
    uint32_t entries = rd32(si + 48);
    tg_memmap = map;
    tg_memmap_entries = entries < 128 ? entries : 128;
    for (uint32_t i = 0; map && i < entries && i < 128; i++) {
      uint64_t a = rd64(map + 24 * i), n = rd64(map + 24 * i + 8);
      if (rd32(map + 24 * i + 16) == 1 && a + n <= 0x100000000ull && a + n > tg_ram_end) tg_ram_end = a + n;
    }
    const volatile char* cmd = (const volatile char*)rd64(si + 24);
    /* First word without '=' is the scenario, the next such word its argument. */
    char* dst = scenario;
    while (cmd && *cmd) {
      while (*cmd == ' ') cmd++;
      const volatile char* w = cmd;
      int has_eq = 0, len = 0;
      while (*cmd && *cmd != ' ') has_eq |= *cmd++ == '=', len++;
      if (len && !has_eq) {
        if (len > 63) len = 63;
        for (int i = 0; i < len; i++) dst[i] = w[i];
        dst[len] = 0;
        if (dst == arg) break;
        dst = arg;
      }
    }
  }
  unsigned cpus = count_cpus(rsdp);
  puts_("vmm-testguest: ready cpus=");
  putu(cpus);
  puts_(" scenario=");
  puts_(scenario);
  putc_('\n');

  if (streq(scenario, "hello")) guest_exit(0);
  if (streq(scenario, "echo")) echo();
  if (streq(scenario, "deaf")) deaf();
  if (streq(scenario, "smp")) smp(cpus);
  if (streq(scenario, "wait-erratum")) tg_wait_erratum_scenario();
  virtio_scenario(scenario);
  clone_scenario(scenario, arg);
  identity_scenario(scenario);
  if (streq(scenario, "fault")) {
    puts_("fault: triple faulting now\n");
    triple_fault();
  }
  puts_("unknown scenario: ");
  puts_(scenario);
  putc_('\n');
  guest_exit(2);
}

/* Scenarios for the clone tests: each prints a ready line, after which the VMM may snapshot it, and
 * then waits with `sti; hlt` for serial lines (see tg.h / irq.c). Clones resume in the wait loop.
 *   counter   a 64-bit counter from 0: `inc N`, `get` → `counter: value=V`; `quit`
 *   ticks     PIT at 100 Hz: `get` → `ticks: n=N` (timer interrupts so far); `quit`
 *   dirty N   one write into every 4 KiB page of N MiB above the image: `check` → `dirty: ok` or
 *             `dirty: BAD page at 0x...`; `quit`
 * Unknown lines get `NAME: unknown command`. */
#include <stdint.h>

#include "tg.h"

void putu64(uint64_t v) {
  char buf[20];
  int i = 0;
  do buf[i++] = (char)('0' + v % 10); while ((v /= 10) && i < 20);
  while (i) putc_(buf[--i]);
}

/* Decimal digits only, at most 19 of them (no overflow); -1 if not a number. */
static int parse_u64(const char* s, uint64_t* out) {
  uint64_t v = 0;
  int n = 0;
  for (; *s >= '0' && *s <= '9'; s++, n++) {
    if (n == 19) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  if (!n || *s) return -1;
  *out = v;
  return 0;
}

static void unknown(const char* who) {
  puts_(who);
  puts_(": unknown command\n");
}

static void counter(void) {
  static volatile uint64_t value;  /* in memory, so that it lives in the snapshot's RAM */
  static struct tg_line l;
  tg_irq_init(1u << 4);
  puts_("counter: ready\n");
  for (;;) {
    while (tg_getline(&l)) {
      uint64_t n;
      if (streq(l.buf, "get")) {
        /* (first: the clone benchmarks time this answer) */
      } else if (starts_with(l.buf, "inc ") && parse_u64(l.buf + 4, &n) == 0) {
        value += n;
      } else if (streq(l.buf, "quit")) {
        guest_exit(0);
      } else {
        unknown("counter");
        continue;
      }
      PUTNOW("counter: value=");
      putu64(value);
      putc_('\n');
    }
    tg_wait();
  }
}

static void ticks(void) {
  static struct tg_line l;
  tg_irq_init(1u << 0 | 1u << 4);
  tg_pit_start(100);
  while (!tg_ticks) tg_wait();
  puts_("ticks: ready\n");
  for (;;) {
    while (tg_getline(&l)) {
      if (streq(l.buf, "quit")) guest_exit(0);
      if (!streq(l.buf, "get")) {
        unknown("ticks");
        continue;
      }
      puts_("ticks: n=");
      putu64(tg_ticks);
      putc_('\n');
    }
    tg_wait();
  }
}

extern char _tg_end[];  /* linker.ld: the end of the image (bss included) */
static uint64_t dirty_pattern(uint64_t page) { return page ^ 0xd1d1d1d1d1d1d1d1ull; }  /* never 0 */

static void dirty(const char* arg) {
  static struct tg_line l;
  uint64_t mib;
  if (parse_u64(arg, &mib) != 0 || mib == 0 || mib > 4096) {
    puts_("dirty: usage: dirty MIB (1..4096)\n");
    guest_exit(1);
  }
  /* The RAM entry of the memory map that holds the image's end; the boot page tables map the first
   * 4 GiB only, so the pages must end below that too. */
  uint64_t start = ((uint64_t)_tg_end + 0xfff) & ~0xfffull, end = 0;
  for (uint32_t i = 0; tg_memmap && i < tg_memmap_entries; i++) {
    const volatile uint8_t* e = tg_memmap + 24 * i;
    uint64_t a = *(const volatile uint64_t*)e, n = *(const volatile uint64_t*)(e + 8);
    if (*(const volatile uint32_t*)(e + 16) == 1 && a <= start && start < a + n) end = a + n;
  }
  if (end > 0x100000000ull) end = 0x100000000ull;
  uint64_t len = mib << 20;
  if (!end || len > end - start) {
    puts_("dirty: ");
    putu64(mib);
    puts_(" MiB do not fit in RAM between ");
    putx(start);
    puts_(" and ");
    putx(end);
    puts_(" (below 4 GiB)\n");
    guest_exit(1);
  }
  for (uint64_t p = start; p < start + len; p += 4096) *(volatile uint64_t*)p = dirty_pattern(p);
  tg_irq_init(1u << 4);
  puts_("dirty: ready mib=");
  putu64(mib);
  putc_('\n');
  for (;;) {
    while (tg_getline(&l)) {
      if (streq(l.buf, "quit")) guest_exit(0);
      if (!streq(l.buf, "check")) {
        unknown("dirty");
        continue;
      }
      uint64_t p = start;
      while (p < start + len && *(volatile uint64_t*)p == dirty_pattern(p)) p += 4096;
      if (p == start + len) {
        puts_("dirty: ok\n");
      } else {
        puts_("dirty: BAD page at ");
        putx(p);
        putc_('\n');
      }
    }
    tg_wait();
  }
}

void clone_scenario(const char* scenario, const char* arg) {
  if (streq(scenario, "counter")) counter();
  if (streq(scenario, "ticks")) ticks();
  if (streq(scenario, "dirty")) dirty(arg);
}

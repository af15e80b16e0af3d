/* The `identity` scenario: reads the clone identity that the VMM publishes through QEMU's fw_cfg
 * interface (QEMU docs/specs/fw_cfg.rst, traditional port I/O interface only: selector 0x510,
 * 16-bit key; data 0x511, read byte by byte from offset 0 after each select) as the file
 * `opt/vmm/identity`: text lines `key=value\n`, any subset and order of id, name, generation, mac0,
 * mac1, ..., hostname, ip, time, NUL-padded to a fixed size. Prints
 *   identity: ready
 *   identity: id=ID generation=G name=NAME mac0=MAC time=TIME seen=HOW changes=N   (`-` for a missing key;
 *   HOW: what made it read: boot, get, irq or poll)
 * then sleeps, waking on any interrupt (the UART; any ISA IRQ but the PIT's, such as the VMM's ACPI
 * GED interrupt on a clone, makes it re-read at once; otherwise it re-reads once a second, on every
 * 20th tick of the PIT at 20 Hz: on the direct lane the guest's ring 0 is emulated, and re-reading
 * and parsing the file ten times a second cost an idle clone ~2 % of a host CPU, so that a fleet
 * of 99 filled both CPUs and starved every other test), and prints the line again whenever the
 * generation changed (a device interrupt, the GED's, first prints `identity: notified` at once,
 * before the re-read). N counts the changes this guest's memory has seen (0 in a
 * template; a clone or fork 1; a fork of a fork 2: proof that memory carried over, and diverged). `get` prints it, `quit` exits with 0. Without fw_cfg it
 * prints `identity: no fw_cfg`, without the file `identity: no identity file`, and exits with 3.
 * The content is untrusted: reads stop at the item's size and at our buffer, values are clipped
 * and non-printable bytes are shown as '?'. */
#include <stdint.h>

#include "tg.h"

#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_FILE_DIR 0x0019
#define IDENTITY_FILE "opt/vmm/identity"
#define MAX_VALUE 64

static void fw_select(uint16_t key) { outw(FW_CFG_SEL, key); }
/* `rep insb`: one VM exit for the whole run instead of one per byte. */
static void fw_read(void* buf, uint32_t n) {
  uint8_t* p = buf;
  unsigned long c = n;
  if (n) __asm__ volatile("rep insb" : "+D"(p), "+c"(c) : "d"((uint16_t)FW_CFG_DATA) : "memory");
}
static uint32_t be32(const uint8_t* p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static uint16_t id_key;   /* the identity file's select key, from the directory (read once) */
static uint32_t id_size;  /* its size in the directory */

/* 0: found; otherwise prints why and returns 1. */
static int find_identity(void) {
  uint8_t sig[4];
  fw_select(FW_CFG_SIGNATURE);
  fw_read(sig, 4);
  if (sig[0] != 'Q' || sig[1] != 'E' || sig[2] != 'M' || sig[3] != 'U') {
    puts_("identity: no fw_cfg\n");
    return 1;
  }
  uint8_t hdr[4];
  fw_select(FW_CFG_FILE_DIR);
  fw_read(hdr, 4);
  uint32_t count = be32(hdr);
  if (count > 4096) count = 4096;  /* the selector space is 16 bits; stay bounded anyway */
  static const char want[] = IDENTITY_FILE;
  for (uint32_t i = 0; i < count; i++) {
    struct {
      uint8_t size[4], select[2], reserved[2];
      char name[56];
    } f;  /* struct FWCfgFile, big-endian */
    fw_read(&f, sizeof f);
    unsigned k = 0;
    while (k < sizeof want && f.name[k] == want[k]) k++;  /* the NUL included, within 56 bytes */
    if (k == sizeof want) {
      id_key = (uint16_t)(f.select[0] << 8 | f.select[1]);
      id_size = be32(f.size);
      return 0;
    }
  }
  puts_("identity: no identity file\n");
  return 1;
}

static char content[2048 + 1];  /* the file's first 2048 bytes; the rest is ignored */
struct field {
  const char* key;
  const char* val;
  unsigned len;
};
static struct field fields[] = {{"id", 0, 0}, {"generation", 0, 0}, {"name", 0, 0}, {"mac0", 0, 0}, {"time", 0, 0}};
#define NFIELDS (sizeof fields / sizeof fields[0])

/* Reads the file and points `fields` at its values; lines without '=' or with other keys are skipped. */
static void read_identity(void) {
  uint32_t n = id_size < sizeof content - 1 ? id_size : sizeof content - 1;
  fw_select(id_key);
  fw_read(content, n);
  content[n] = 0;
  for (unsigned i = 0; i < NFIELDS; i++) fields[i].val = 0, fields[i].len = 0;
  const char* p = content;
  while (*p) {  /* content ends at its first NUL (the padding) or at our terminator */
    const char* line = p;
    while (*p && *p != '\n') p++;
    const char* end = p;
    if (*p) p++;
    const char* eq = line;
    while (eq < end && *eq != '=') eq++;
    if (eq == end) continue;
    for (unsigned i = 0; i < NFIELDS; i++) {
      const char* k = fields[i].key;
      const char* q = line;
      while (q < eq && *k && *q == *k) q++, k++;
      if (q == eq && !*k) {
        fields[i].val = eq + 1;
        fields[i].len = (unsigned)(end - eq - 1);
      }
    }
  }
}

static uint64_t changes;  /* generation changes seen since boot */
static const char* seen_by = "boot";  /* what made it read last: boot, get, irq (any ISA IRQ but the PIT's) or poll */

static void print_identity(void) {
  puts_("identity:");
  for (unsigned i = 0; i < NFIELDS; i++) {
    putc_(' ');
    puts_(fields[i].key);
    putc_('=');
    if (!fields[i].val || !fields[i].len) {
      putc_('-');
      continue;
    }
    for (unsigned j = 0; j < fields[i].len && j < MAX_VALUE; j++) {
      char c = fields[i].val[j];
      putc_(c > ' ' && c < 0x7f ? c : '?');
    }
  }
  puts_(" seen=");
  puts_(seen_by);
  puts_(" changes=");
  putu64(changes);
  putc_('\n');
}

/* The generation last printed, to notice a change. */
static char last_gen[MAX_VALUE];
static unsigned last_gen_len;
static int generation_changed(void) {
  const struct field* g = &fields[1];
  unsigned n = g->len < MAX_VALUE ? g->len : MAX_VALUE;
  int changed = n != last_gen_len;
  for (unsigned i = 0; i < n; i++) {
    changed |= last_gen[i] != g->val[i];
    last_gen[i] = g->val[i];
  }
  last_gen_len = n;
  return changed;
}

static void identity(void) {
  static struct tg_line l;
  if (find_identity()) guest_exit(3);
  tg_irq_init(0xffff);  /* any ISA IRQ wakes us: the GED's line is the VMM's choice */
  tg_pit_start(20);     /* the PIT cannot go below 18.2 Hz: check on every 20th tick */
  read_identity();
  generation_changed();
  puts_("identity: ready\n");
  print_identity();
  uint64_t seen_ticks = tg_ticks, seen_other = tg_irqs - tg_ticks, seen_device = tg_irqs - tg_ticks - tg_serial_irqs;
  for (;;) {
    while (tg_getline(&l)) {
      if (streq(l.buf, "quit")) guest_exit(0);
      if (streq(l.buf, "get")) {
        seen_by = "get";
        read_identity();
        if (generation_changed()) changes++;
        print_identity();
      } else {
        puts_("identity: unknown command\n");
      }
    }
    uint64_t t = tg_ticks, other = tg_irqs - t, device = other - tg_serial_irqs;
    /* A device's interrupt (neither the PIT's nor the UART's: the GED's, as a clone's VMGenID
     * notification raises it) is answered at once, before the (slow) re-read: the first sign of
     * life a clone gives. */
    if (device != seen_device) {
      seen_device = device;
      PUTNOW("identity: notified\n");
    }
    if (t - seen_ticks >= 20 || other != seen_other) {
      seen_by = other != seen_other ? "irq" : "poll";
      seen_ticks = t;
      seen_other = other;
      read_identity();
      if (generation_changed()) {
        changes++;
        print_identity();
      }
    }
    tg_wait();
  }
}

void identity_scenario(const char* scenario) {
  if (streq(scenario, "identity")) identity();
}

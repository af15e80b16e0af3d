/* A minimal virtio-pci (modern) driver for the test guest and the scenarios that use it:
 *   blk-read    read sectors 0-127 and check the host's pattern (seed 0x11)
 *   blk-write   write sectors 128-255 with the guest's pattern (seed 0x5a); the host checks the file
 *   blk-verify  write sectors 64-71 (seed 0x77), read them back and compare
 *   blk-flush   write sector 300 (seed 0x33), then flush
 *   blk-churn   write 4 KiB chunks round the disk forever, each chunk all one byte (the write's
 *               number, 1-255); "blk-churn: running" once every chunk has been written: a host that
 *               copies the disk while the guest writes (a live fork) must find every chunk whole
 *   blk-id      print the disk's serial (GET_ID)
 *   blk-bench   4000 reads of 4 KiB, one at a time, spread over the disk (the disk benchmark's
 *               workload, scripts/bench/disk.sh); timed by the guest with the TSC and printed as
 *               "blk-bench: 4000 reads of 4096 bytes in N us", between two host handshakes (below)
 *   hostile-*   attack the device (see the table at the end); the device must refuse, the VMM must
 *               stay up, and after a reset the device must serve a legal read again.
 *   net-echo    (virtio-net) answer ARP requests for 10.0.2.2 and echo other frames back with the
 *               addresses swapped; exit after three ARP replies
 *   net-send    (virtio-net) after the first frame arrives, send three gratuitous ARP replies for
 *               10.0.2.2, then exit at the next frame
 *   net-serve   (virtio-net) print "net-serve: ready", then answer ARP requests for 10.0.2.2 forever,
 *               from the MAC the device's configuration holds at each request (as an agent would
 *               apply a clone's new MAC); net-serve-stale answers from the MAC read at boot (a
 *               clone whose guest never took its new MAC: the host must let none of it out)
 *   net-bench   (virtio-net) after the first frame arrives, send 20000 frames of 1514 bytes one at a
 *               time, then exit (scripts/bench/net.sh; net-bench0 sends none); timed and
 *               handshaken like blk-bench: "net-bench: sent 20000 frames in N us"
 * Interrupts are not used: the guest polls the used ring. Configuration mechanism #1 finds the
 * device; its capabilities give the BAR offsets (virtio 1.2 §4.1.4). */
#include "tg.h"

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define QSIZE 16
#define SECTOR 512

/* Waits are bounded by time, not iterations (a PAUSE can cost a VM exit on some hosts): TSC
 * cycles, ~10 s at the frequencies we run on. */
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (uint64_t)hi << 32 | lo;
}
#define WAIT_CYCLES 30000000000ull

/* ---- benchmark timing ---- */
static void cpuid(uint32_t leaf, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}

/* PIT channel 2's count, latched, and the TSC at the latch (the middle of the one exit it costs). */
static uint32_t pit2_count(uint64_t* tsc) {
  const uint64_t a = rdtsc();
  outb(0x43, 0x80); /* counter latch command, channel 2 */
  const uint64_t b = rdtsc();
  *tsc = a + (b - a) / 2;
  const uint32_t lo = inb(0x42);
  return lo | (uint32_t)inb(0x42) << 8;
}

/* The TSC frequency in kHz and where it came from: the hypervisor's timing leaf 0x40000010 (EAX =
 * TSC kHz) when offered, else measured against PIT channel 2 (8254 mode 0 from 0xffff, 1.193182
 * MHz): the count is latched and read at the start and ~48 ms later, each latch bracketed by two
 * TSC reads, so the slow exits of a nested host cancel out instead of adding up. 0: unknown. */
static uint64_t tsc_khz(const char** source) {
  uint32_t r[4];
  cpuid(1, r);
  if (r[2] & 1u << 31) { /* a hypervisor is present */
    cpuid(0x40000000, r);
    if (r[0] >= 0x40000010) {
      cpuid(0x40000010, r);
      if (r[0]) {
        *source = "cpuid 0x40000010";
        return r[0];
      }
    }
  }
  *source = "pit";
  outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01)); /* gate 2 high, speaker off */
  outb(0x43, 0xb0);                                  /* channel 2, low then high byte, mode 0 */
  outb(0x42, 0xff);
  outb(0x42, 0xff);
  uint64_t t0, t1;
  const uint32_t c0 = pit2_count(&t0);
  uint32_t c1;
  do {
    c1 = pit2_count(&t1);
    if (t1 - t0 > WAIT_CYCLES) return 0;
  } while (c1 > 0x2000 && c1 <= c0);
  const uint32_t ticks = c1 <= c0 ? c0 - c1 : c0 + 0x10000 - c1; /* mode 0 wraps after 0 */
  return ticks ? (t1 - t0) * 1193182 / ticks / 1000 : 0;
}

static void put64(uint64_t v) {
  char b[21];
  int i = 0;
  do b[i++] = (char)('0' + v % 10); while ((v /= 10) && i < 20);
  while (i) putc_(b[--i]);
}

/* The benchmarks' handshake with the host script: prints "NAME: sync" and waits up to ~3 s for one
 * byte on COM1's input, so that the host can read its threads' CPU times at the start and at the end
 * of the timed work (scripts/bench/inner-lib.sh). Without an answer the guest goes on regardless. */
static void bench_sync(const char* name, uint64_t khz) {
  puts_(name);
  puts_(": sync\n");
  const uint64_t limit = khz ? khz * 3000 : WAIT_CYCLES / 3;
  for (uint64_t t = rdtsc(); rdtsc() - t < limit;) {
    if (inb(0x3f8 + 5) & 0x01) {
      (void)inb(0x3f8);
      return;
    }
    __asm__ volatile("pause");
  }
  puts_(name);
  puts_(": sync timed out\n");
}

/* Prints " in N us (C TSC cycles at K kHz, SOURCE)\n" for C cycles. */
static void bench_report(uint64_t cycles, uint64_t khz, const char* source) {
  puts_(" in ");
  put64(khz ? cycles * 1000 / khz : 0);
  puts_(" us (");
  put64(cycles);
  puts_(" TSC cycles at ");
  put64(khz);
  puts_(" kHz, ");
  puts_(source);
  puts_(")\n");
}

/* ---- PCI ---- */
static uint32_t pci_read(unsigned slot, unsigned reg) {
  outl(PCI_ADDR, 0x80000000u | slot << 11 | (reg & 0xfc));
  return inl(PCI_DATA);
}
static void pci_write(unsigned slot, unsigned reg, uint32_t v) {
  outl(PCI_ADDR, 0x80000000u | slot << 11 | (reg & 0xfc));
  outl(PCI_DATA, v);
}

/* ---- the device's registers ---- */
static volatile uint8_t* common;
static volatile uint8_t* notify_base;
static volatile uint8_t* devcfg;
static uint32_t notify_mult;
#define C8(off) (*(volatile uint8_t*)(common + (off)))
#define C16(off) (*(volatile uint16_t*)(common + (off)))
#define C32(off) (*(volatile uint32_t*)(common + (off)))
enum { DFSEL = 0x00, DF = 0x04, GFSEL = 0x08, GF = 0x0c, STATUS = 0x14, QSEL = 0x16, QSZ = 0x18, QEN = 0x1c,
       QNOFF = 0x1e, QDESC = 0x20, QDRV = 0x28, QDEV = 0x30 };
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8, S_NEEDS_RESET = 0x40 };

static void c64(unsigned off, uint64_t v) {
  C32(off) = (uint32_t)v;
  C32(off + 4) = (uint32_t)(v >> 32);
}

static int find_device(uint16_t device_id) {
  for (unsigned slot = 0; slot < 32; slot++) {
    if (pci_read(slot, 0) != ((uint32_t)device_id << 16 | 0x1af4)) continue;
    pci_write(slot, 0x04, 0x6); /* memory space, bus master */
    for (unsigned p = pci_read(slot, 0x34) & 0xff; p; p = (pci_read(slot, p) >> 8) & 0xff) {
      uint32_t hdr = pci_read(slot, p);
      if ((hdr & 0xff) != 0x09) continue;
      unsigned type = (hdr >> 24) & 0xff, bar = pci_read(slot, p + 4) & 0xff;
      uint64_t base = pci_read(slot, 0x10 + 4 * bar) & ~0xfull;
      uint64_t at = base + pci_read(slot, p + 8);
      if (type == 1) common = (volatile uint8_t*)at;
      if (type == 2) notify_base = (volatile uint8_t*)at, notify_mult = pci_read(slot, p + 16);
      if (type == 4) devcfg = (volatile uint8_t*)at;
    }
    return common && notify_base && devcfg;
  }
  return 0;
}

/* ---- split virtqueues: queue 0 (block requests, or network receive) and queue 1 (transmit) ---- */
struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};
enum { F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4 };
struct ring {
  struct desc d[QSIZE];
  struct {
    uint16_t flags, idx, ring[QSIZE], used_event;
  } av __attribute__((aligned(4096)));
  struct {
    uint16_t flags, idx;
    struct {
      uint32_t id, len;
    } ring[QSIZE];
    uint16_t avail_event;
  } us __attribute__((aligned(4096)));
  uint16_t nd, last_used;
} __attribute__((aligned(4096)));
static struct ring rings[2];
/* Queue 0 under the names the block code uses. */
#define descs rings[0].d
#define avail rings[0].av
#define used rings[0].us
#define next_desc rings[0].nd
static struct desc indirect[64] __attribute__((aligned(16)));
static uint64_t features_wanted = 1ull << 32; /* VERSION_1 */

static void zero(volatile void* p, unsigned n) {
  for (unsigned i = 0; i < n; i++) ((volatile uint8_t*)p)[i] = 0;
}

static void setup_queue(unsigned q) {
  struct ring* r = &rings[q];
  zero(&r->av, sizeof r->av);
  zero(&r->us, sizeof r->us);
  r->nd = r->last_used = 0;
  C16(QSEL) = (uint16_t)q;
  C16(QSZ) = QSIZE;
  c64(QDESC, (uint64_t)r->d);
  c64(QDRV, (uint64_t)&r->av);
  c64(QDEV, (uint64_t)&r->us);
  C16(QEN) = 1;
}

/* Resets the device, negotiates VERSION_1 (and whatever features_wanted adds), sets up `queues`
 * queues and sets DRIVER_OK. 1: the device accepted it all. */
static int setup(unsigned queues) {
  C8(STATUS) = 0;
  C8(STATUS) = S_ACK;
  C8(STATUS) = S_ACK | S_DRIVER;
  C32(DFSEL) = 1;
  if (!(C32(DF) & 1)) return 0; /* VERSION_1 */
  C32(GFSEL) = 0;
  C32(GF) = (uint32_t)features_wanted;
  C32(GFSEL) = 1;
  C32(GF) = (uint32_t)(features_wanted >> 32);
  C8(STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
  if (!(C8(STATUS) & S_FEATURES_OK)) return 0;
  for (unsigned q = 0; q < queues; q++) setup_queue(q);
  C8(STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
  return !(C8(STATUS) & S_NEEDS_RESET);
}

static void notify(uint16_t queue) {
  *(volatile uint16_t*)(notify_base + (uint64_t)queue * notify_mult) = queue;
}

/* Makes head `h` available on queue `q` and notifies. */
static void publish(unsigned q, uint16_t h) {
  struct ring* r = &rings[q];
  r->av.ring[r->av.idx % QSIZE] = h;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  r->av.idx++;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  notify((uint16_t)q);
}

/* Waits until queue `q` has a used entry past last_used (or NEEDS_RESET). 1: there is one. A VM
 * paused mid-wait (the pause completes its request; the STATUS read is an exit, where a pause
 * lands) finds its TSC far ahead when it resumes: the ring is looked at once more after the clock
 * says time is up, so that a long pause is not called a device time-out. */
static int wait_used(unsigned q) {
  struct ring* r = &rings[q];
  for (uint64_t start = rdtsc();;) {
    if (*(volatile uint16_t*)&r->us.idx != r->last_used) return 1;
    if (C8(STATUS) & S_NEEDS_RESET) return 0;
    if (rdtsc() - start >= WAIT_CYCLES) {
      if (*(volatile uint16_t*)&r->us.idx != r->last_used) return 1;
      break;
    }
    __asm__ volatile("pause");
  }
  puts_("virtio: timed out waiting for the device\n");
  return 0;
}

/* Publishes head `h` on queue 0, waits for it to be used (or for NEEDS_RESET). 1: used. */
static int submit(uint16_t h) {
  rings[0].last_used = used.idx;
  publish(0, h);
  return wait_used(0);
}

static uint16_t add(uint64_t addr, uint32_t len, uint16_t flags) {
  uint16_t i = next_desc++ % QSIZE;
  descs[i].addr = addr;
  descs[i].len = len;
  descs[i].flags = flags;
  descs[i].next = (uint16_t)(next_desc % QSIZE);
  return i;
}

/* ---- block requests ---- */
static struct {
  uint32_t type, reserved;
  uint64_t sector;
} hdr;
static volatile uint8_t status_byte;
static uint8_t buf[64 * 1024] __attribute__((aligned(4096)));

/* One request: header, `len` bytes of data at `data` (device-writable for reads), status. */
static int blk_request(uint32_t type, uint64_t sector, void* data, uint32_t len, int data_writable) {
  hdr.type = type;
  hdr.sector = sector;
  status_byte = 0xee;
  uint16_t h = add((uint64_t)&hdr, 16, F_NEXT);
  if (len) add((uint64_t)data, len, (uint16_t)(F_NEXT | (data_writable ? F_WRITE : 0)));
  add((uint64_t)&status_byte, 1, F_WRITE);
  if (!submit(h)) return -1;
  return status_byte;
}

static uint8_t pattern(uint64_t offset, uint8_t seed) {
  return (uint8_t)((offset >> 9) * 31 + (offset & 511) * 7 + seed);
}

static int check(uint64_t sector, uint32_t len, uint8_t seed, const char* what) {
  for (uint32_t i = 0; i < len; i++) {
    if (buf[i] != pattern(sector * SECTOR + i, seed)) {
      puts_(what);
      puts_(": mismatch at byte ");
      putu((unsigned)(sector * SECTOR + i));
      putc_('\n');
      return 0;
    }
  }
  return 1;
}

static void fill(uint64_t sector, uint32_t len, uint8_t seed) {
  for (uint32_t i = 0; i < len; i++) buf[i] = pattern(sector * SECTOR + i, seed);
}

static void fail(const char* what) {
  puts_(what);
  puts_(": FAILED\n");
  guest_exit(1);
}

/* After an attack: the device either went to NEEDS_RESET or answered the request; then a reset
 * and a legal read must work. */
static void recover_and_exit(const char* name, int needs_reset_expected) {
  int nr = (C8(STATUS) & S_NEEDS_RESET) != 0;
  puts_("hostile: ");
  puts_(name);
  puts_(nr ? ": device needs reset\n" : ": device ok\n");
  if (nr != needs_reset_expected) fail(name);
  if (!setup(1)) fail("hostile: setup after reset");
  int st = blk_request(0, 0, buf, 4096, 1);
  if (st != 0 || !check(0, 4096, 0x11, "hostile")) fail("hostile: read after reset");
  puts_("hostile: recovered\n");
  guest_exit(0);
}

static uint64_t ram_end_below_4g(void);

static void hostile(const char* name) {
  const uint64_t hole = 0xd0000000; /* inside the PCI window: not RAM */
  const uint64_t end = ram_end_below_4g();
  if (streq(name, "hostile-desc-outside-ram")) {
    hdr.type = 0, hdr.sector = 0;
    uint16_t h = add((uint64_t)&hdr, 16, F_NEXT);
    add(hole, 4096, F_NEXT | F_WRITE);
    add((uint64_t)&status_byte, 1, F_WRITE);
    submit(h);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-desc-straddle")) {
    hdr.type = 0, hdr.sector = 0;
    uint16_t h = add((uint64_t)&hdr, 16, F_NEXT);
    add(end - 512, 4096, F_NEXT | F_WRITE); /* starts in RAM, ends past it */
    add((uint64_t)&status_byte, 1, F_WRITE);
    submit(h);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-huge-len")) {
    hdr.type = 0, hdr.sector = 0;
    uint16_t h = add((uint64_t)&hdr, 16, F_NEXT);
    add((uint64_t)buf, 0xffffffffu, F_NEXT | F_WRITE);
    add((uint64_t)&status_byte, 1, F_WRITE);
    submit(h);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-loop")) {
    descs[0] = (struct desc){(uint64_t)&hdr, 16, F_NEXT, 1};
    descs[1] = (struct desc){(uint64_t)buf, 512, F_NEXT | F_WRITE, 0};
    submit(0);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-long-chain")) {
    for (unsigned i = 0; i < 64; i++) indirect[i] = (struct desc){(uint64_t)buf, 8, F_NEXT | F_WRITE, (uint16_t)(i + 1)};
    indirect[63].flags = F_WRITE;
    descs[0] = (struct desc){(uint64_t)indirect, sizeof indirect, F_INDIRECT, 0}; /* 64 > the queue's 16 */
    submit(0);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-indirect-outside-ram")) {
    descs[0] = (struct desc){hole, 64, F_INDIRECT, 0};
    submit(0);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-indirect-nested")) {
    indirect[0] = (struct desc){(uint64_t)&indirect[1], 16, F_INDIRECT, 0};
    descs[0] = (struct desc){(uint64_t)indirect, 32, F_INDIRECT, 0};
    submit(0);
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-avail-idx")) {
    avail.idx = 1000; /* far more than QSIZE ahead */
    notify(0);
    for (uint64_t t = rdtsc(); rdtsc() - t < WAIT_CYCLES && !(C8(STATUS) & S_NEEDS_RESET);) __asm__ volatile("pause");
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-readonly-buffer")) {
    /* A read whose data buffer is device-readable: refused with IOERR, the buffer untouched. */
    for (unsigned i = 0; i < 512; i++) buf[i] = 0xab;
    int st = blk_request(0, 0, buf, 512, 0);
    puts_("hostile: status ");
    putu((unsigned)st);
    putc_('\n');
    if (st != 1 || buf[0] != 0xab) fail(name);
    recover_and_exit(name, 0);
  }
  if (streq(name, "hostile-past-end")) {
    uint64_t capacity = *(volatile uint64_t*)devcfg;
    fill(capacity - 1, 1024, 0x66);
    int st1 = blk_request(1, capacity - 1, buf, 1024, 0); /* straddles the end */
    int st2 = blk_request(1, capacity, buf, 512, 0);      /* past it */
    int st3 = blk_request(0, ~0ull / 512, buf, 512, 1);   /* offset overflows */
    puts_("hostile: statuses ");
    putu((unsigned)st1), putc_(' '), putu((unsigned)st2), putc_(' '), putu((unsigned)st3);
    putc_('\n');
    if (st1 != 1 || st2 != 1 || st3 != 1) fail(name);
    recover_and_exit(name, 0);
  }
  if (streq(name, "hostile-zero-len")) {
    /* Zero-length buffers are legal: a read of nothing succeeds. */
    hdr.type = 0, hdr.sector = 0;
    status_byte = 0xee;
    uint16_t h = add((uint64_t)&hdr, 16, F_NEXT);
    add((uint64_t)buf, 0, F_NEXT | F_WRITE);
    add((uint64_t)&status_byte, 1, F_WRITE);
    if (!submit(h) || status_byte != 0) fail(name);
    recover_and_exit(name, 0);
  }
  if (streq(name, "hostile-queue-outside-ram")) {
    /* Rings outside RAM: enabling the queue fails the device. */
    C8(STATUS) = 0;
    C8(STATUS) = S_ACK | S_DRIVER;
    C32(GFSEL) = 1;
    C32(GF) = 1;
    C8(STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    C16(QSEL) = 0;
    C16(QSZ) = QSIZE;
    c64(QDESC, hole);
    c64(QDRV, (uint64_t)&avail);
    c64(QDEV, end - 8); /* straddles the end of RAM */
    C16(QEN) = 1;
    recover_and_exit(name, 1);
  }
  if (streq(name, "hostile-notify-unset")) {
    /* Notifies for a queue that does not exist and for queue 0 before it is set up. */
    C8(STATUS) = 0;
    notify(0);
    notify(7);
    *(volatile uint32_t*)(notify_base + 4096 - 4) = 0xffffffff;
    recover_and_exit(name, 0);
  }
  puts_("unknown hostile scenario\n");
  guest_exit(2);
}

/* The end of the RAM region below 4 GiB, from the PVH memory map (set by main.c). */
uint64_t tg_ram_end;
static uint64_t ram_end_below_4g(void) { return tg_ram_end ? tg_ram_end : 0x10000000; }

/* ---- virtio-net ---- */
#define FRAME 2048
#define NET_HDR 12
static uint8_t rxbuf[QSIZE][FRAME] __attribute__((aligned(4096)));
static uint8_t txbuf[FRAME] __attribute__((aligned(4096)));
static uint8_t mac[6];
static const uint8_t my_ip[4] = {10, 0, 2, 2};

static void post_rx(uint16_t i) {
  rings[0].d[i] = (struct desc){(uint64_t)rxbuf[i], FRAME, F_WRITE, 0};
  publish(0, i);
}

/* The next received frame (after the 12-byte header) and its length; the caller gives the buffer
 * back with post_rx(*id). */
static uint8_t* net_recv(uint32_t* len, uint16_t* id) {
  struct ring* r = &rings[0];
  if (!wait_used(0)) fail("net: receive");
  *id = (uint16_t)r->us.ring[r->last_used % QSIZE].id;
  uint32_t n = r->us.ring[r->last_used % QSIZE].len;
  r->last_used++;
  if (*id >= QSIZE || n < NET_HDR + 14 || n > FRAME) fail("net: bad used entry");
  *len = n - NET_HDR;
  return rxbuf[*id] + NET_HDR;
}

/* Sends the frame already in txbuf after the header (net-bench builds it there once: ring-0 code is
 * emulated on some hosts, where copying 1514 bytes per frame would be the whole benchmark). */
static void net_send_txbuf(uint32_t len) {
  struct ring* r = &rings[1];
  r->d[0] = (struct desc){(uint64_t)txbuf, NET_HDR + len, 0, 0};
  r->last_used = r->us.idx;
  publish(1, 0);
  if (!wait_used(1)) fail("net: transmit");
}

static void net_send(const uint8_t* frame, uint32_t len) {
  for (unsigned i = 0; i < NET_HDR; i++) txbuf[i] = 0;
  for (uint32_t i = 0; i < len; i++) txbuf[NET_HDR + i] = frame[i];
  net_send_txbuf(len);
}

static int is_arp_request_for_me(const uint8_t* f, uint32_t len) {
  return len >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 1 && f[38] == my_ip[0] &&
         f[39] == my_ip[1] && f[40] == my_ip[2] && f[41] == my_ip[3];
}

/* An ARP reply (RFC 826) from us to `tha`/`tpa`, or a gratuitous one when tha is broadcast. */
static void arp_reply(const uint8_t* tha, const uint8_t* tpa) {
  uint8_t f[60] = {0};
  for (int i = 0; i < 6; i++) f[i] = tha[i], f[6 + i] = mac[i], f[22 + i] = mac[i], f[32 + i] = tha[i];
  f[12] = 0x08, f[13] = 0x06;             /* ARP */
  f[14] = 0, f[15] = 1, f[16] = 8, f[17] = 0; /* Ethernet, IPv4 */
  f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 2; /* reply */
  for (int i = 0; i < 4; i++) f[28 + i] = my_ip[i], f[38 + i] = tpa[i];
  net_send(f, sizeof f);
}

static void net_scenario(const char* s) {
  features_wanted = 1ull << 32 | 1ull << 5; /* VERSION_1, MAC */
  if (!find_device(0x1041)) {
    puts_("virtio: no virtio-net device\n");
    guest_exit(3);
  }
  if (!setup(2)) fail("net: setup");
  for (int i = 0; i < 6; i++) mac[i] = devcfg[i];
  puts_("net: mac ");
  for (int i = 0; i < 6; i++) {
    putc_("0123456789abcdef"[mac[i] >> 4]);
    putc_("0123456789abcdef"[mac[i] & 15]);
    if (i < 5) putc_(':');
  }
  putc_('\n');
  for (uint16_t i = 0; i < QSIZE; i++) post_rx(i);
  uint32_t len;
  uint16_t id;
  if (streq(s, "net-echo")) {
    unsigned replies = 0, echoed = 0;
    while (replies < 3) {
      uint8_t* f = net_recv(&len, &id);
      if (is_arp_request_for_me(f, len)) {
        arp_reply(f + 22, f + 28);
        replies++;
      } else {
        uint8_t tmp[FRAME];
        for (uint32_t i = 0; i < len; i++) tmp[i] = f[i];
        for (int i = 0; i < 6; i++) tmp[i] = f[6 + i], tmp[6 + i] = mac[i];
        net_send(tmp, len);
        echoed++;
      }
      post_rx(id);
    }
    puts_("net-echo: answered 3 ARP requests, echoed ");
    putu(echoed);
    puts_(" other frames\n");
    guest_exit(0);
  }
  if (streq(s, "net-bench") || streq(s, "net-bench0")) {
    const unsigned n = streq(s, "net-bench") ? 20000 : 0;
    uint8_t* frame = txbuf + NET_HDR; /* built in place once, see net_send_txbuf */
    for (unsigned i = 0; i < NET_HDR + 1514; i++) txbuf[i] = 0;
    for (int i = 0; i < 6; i++) frame[i] = 0xff, frame[6 + i] = mac[i];
    frame[12] = 0x88, frame[13] = 0xb5; /* local experimental EtherType */
    const char* source;
    const uint64_t khz = tsc_khz(&source);
    net_recv(&len, &id);
    post_rx(id);
    bench_sync("net-bench", khz);
    const uint64_t t0 = rdtsc();
    for (unsigned i = 0; i < n; i++) {
      frame[14] = (uint8_t)i;
      net_send_txbuf(1514);
    }
    const uint64_t cycles = rdtsc() - t0;
    puts_("net-bench: sent ");
    putu(n);
    puts_(" frames");
    bench_report(cycles, khz, source);
    bench_sync("net-bench", khz);
    guest_exit(0);
  }
  if (streq(s, "net-serve") || streq(s, "net-serve-stale")) {
    const int fresh = streq(s, "net-serve");
    puts_("net-serve: ready\n");
    for (;;) {
      /* No time-out: it serves until the host stops it (a clone may be resumed long after). */
      while (*(volatile uint16_t*)&rings[0].us.idx == rings[0].last_used) __asm__ volatile("pause");
      uint8_t* f = net_recv(&len, &id);
      if (is_arp_request_for_me(f, len)) {
        if (fresh) {
          for (int i = 0; i < 6; i++) mac[i] = devcfg[i];
        }
        arp_reply(f + 22, f + 28);
      }
      post_rx(id);
    }
  }
  if (streq(s, "net-send")) {
    net_recv(&len, &id);
    post_rx(id);
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    for (int i = 0; i < 3; i++) arp_reply(broadcast, my_ip);
    puts_("net-send: sent 3 frames\n");
    net_recv(&len, &id);
    guest_exit(0);
  }
  puts_("unknown virtio scenario\n");
  guest_exit(2);
}

/* Decimal number at *p (advanced past it and one space); -1 if none. */
static int64_t take_number(const char** p) {
  int64_t v = 0;
  int n = 0;
  while (**p >= '0' && **p <= '9' && n < 12) v = v * 10 + (*(*p)++ - '0'), n++;
  if (!n) return -1;
  if (**p == ' ') (*p)++;
  return v;
}

/* blk-serve: the disk set up, then `write S B` (sector S filled with byte B), `magic S` (sector S
 * starting with the qcow2 magic "QFI\xfb", zeroes after it: what a hostile guest writes to make its
 * raw disk look like a qcow2 image to the next VMM that guesses the format), `read S` (prints the
 * sector's byte, or "mixed"), `flush`, `quit`, waiting in sti;hlt between lines. For the clone tests:
 * a template is made after the ready line and each clone writes its own disk. */
static void blk_serve(void) {
  static struct tg_line l;
  tg_irq_init(1u << 4);
  puts_("blk-serve: ready\n");
  for (;;) {
    while (tg_getline(&l)) {
      const char* p = l.buf + 6;
      if (starts_with(l.buf, "write ")) {
        int64_t sector = take_number(&p), byte = take_number(&p);
        if (sector < 0 || byte < 0 || byte > 255) { puts_("blk-serve: bad write\n"); continue; }
        for (unsigned i = 0; i < 512; i++) buf[i] = (uint8_t)byte;
        if (blk_request(1, (uint64_t)sector, buf, 512, 0) != 0) { puts_("blk-serve: write failed\n"); continue; }
        puts_("blk-serve: wrote ");
        putu((unsigned)sector);
        putc_('\n');
      } else if (starts_with(l.buf, "magic ")) {
        int64_t sector = take_number(&p);
        if (sector < 0) { puts_("blk-serve: bad magic\n"); continue; }
        for (unsigned i = 0; i < 512; i++) buf[i] = 0;
        buf[0] = 'Q', buf[1] = 'F', buf[2] = 'I', buf[3] = 0xfb;
        if (blk_request(1, (uint64_t)sector, buf, 512, 0) != 0) { puts_("blk-serve: write failed\n"); continue; }
        puts_("blk-serve: wrote ");
        putu((unsigned)sector);
        putc_('\n');
      } else if (starts_with(l.buf, "read ")) {
        p = l.buf + 5;
        int64_t sector = take_number(&p);
        if (sector < 0 || blk_request(0, (uint64_t)sector, buf, 512, 1) != 0) { puts_("blk-serve: read failed\n"); continue; }
        unsigned same = 1;
        for (unsigned i = 1; i < 512; i++) same &= buf[i] == buf[0];
        puts_("blk-serve: sector ");
        putu((unsigned)sector);
        if (same) {
          puts_(" byte=");
          putx(buf[0]);
        } else {
          puts_(" mixed");
        }
        putc_('\n');
      } else if (streq(l.buf, "flush")) {
        puts_(blk_request(4, 0, 0, 0, 0) == 0 ? "blk-serve: flushed\n" : "blk-serve: flush failed\n");
      } else if (streq(l.buf, "quit")) {
        guest_exit(0);
      } else {
        puts_("blk-serve: unknown command\n");
      }
    }
    tg_wait();
  }
}

void virtio_scenario(const char* s) {
  if (starts_with(s, "net-")) net_scenario(s);
  if (!starts_with(s, "blk-") && !starts_with(s, "hostile-")) return;
  if (!find_device(0x1042)) {
    puts_("virtio: no virtio-blk device\n");
    guest_exit(3);
  }
  if (!setup(1)) fail("virtio: setup");
  if (starts_with(s, "hostile-")) hostile(s);
  if (streq(s, "blk-serve")) blk_serve();
  if (streq(s, "blk-read")) {
    for (unsigned part = 0; part < 4; part++) {
      if (blk_request(0, part * 32, buf, 16384, 1) != 0) fail("blk-read");
      if (!check(part * 32, 16384, 0x11, "blk-read")) fail("blk-read");
    }
    puts_("blk-read: 128 sectors ok\n");
    guest_exit(0);
  }
  if (streq(s, "blk-write")) {
    fill(128, 65536, 0x5a);
    if (blk_request(1, 128, buf, 65536, 0) != 0) fail("blk-write");
    puts_("blk-write: 128 sectors written\n");
    guest_exit(0);
  }
  if (streq(s, "blk-verify")) {
    fill(64, 4096, 0x77);
    if (blk_request(1, 64, buf, 4096, 0) != 0) fail("blk-verify write");
    for (unsigned i = 0; i < 4096; i++) buf[i] = 0;
    if (blk_request(0, 64, buf, 4096, 1) != 0) fail("blk-verify read");
    if (!check(64, 4096, 0x77, "blk-verify")) fail("blk-verify");
    puts_("blk-verify: ok\n");
    guest_exit(0);
  }
  if (streq(s, "blk-churn")) {
    const uint64_t capacity = *(volatile uint64_t*)devcfg;
    if (capacity < 16) fail("blk-churn: disk too small");
    const uint64_t chunks = capacity / 8;
    uint64_t* words = (uint64_t*)buf;
    for (uint64_t i = 0;; i++) {
      const uint64_t v = (i % 255 + 1) * 0x0101010101010101ull;
      for (unsigned j = 0; j < 4096 / 8; j++) words[j] = v;
      if (blk_request(1, (i % chunks) * 8, buf, 4096, 0) != 0) fail("blk-churn");
      if (i == chunks - 1) puts_("blk-churn: running\n");
    }
  }
  if (streq(s, "blk-flush")) {
    fill(300, 512, 0x33);
    if (blk_request(1, 300, buf, 512, 0) != 0) fail("blk-flush write");
    if (blk_request(4, 0, 0, 0, 0) != 0) fail("blk-flush");
    puts_("blk-flush: ok\n");
    guest_exit(0);
  }
  if (streq(s, "blk-bench")) {
    const uint64_t capacity = *(volatile uint64_t*)devcfg;
    if (capacity < 16) fail("blk-bench: disk too small");
    const unsigned n = 4000;
    const char* source;
    const uint64_t khz = tsc_khz(&source);
    bench_sync("blk-bench", khz);
    const uint64_t t0 = rdtsc();
    for (unsigned i = 0; i < n; i++) {
      const uint64_t sector = ((uint64_t)i * 8 * 7919) % (capacity - 8) / 8 * 8;
      if (blk_request(0, sector, buf, 4096, 1) != 0) fail("blk-bench");
    }
    const uint64_t cycles = rdtsc() - t0;
    puts_("blk-bench: ");
    putu(n);
    puts_(" reads of 4096 bytes");
    bench_report(cycles, khz, source);
    bench_sync("blk-bench", khz);
    guest_exit(0);
  }
  if (streq(s, "blk-id")) {
    for (unsigned i = 0; i < 21; i++) buf[i] = 0;
    if (blk_request(8, 0, buf, 20, 1) != 0) fail("blk-id");
    puts_("blk-id: ");
    puts_((const char*)buf);
    putc_('\n');
    guest_exit(0);
  }
  puts_("unknown virtio scenario\n");
  guest_exit(2);
}

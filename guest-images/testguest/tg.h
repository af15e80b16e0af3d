/* Shared helpers of the test guest (main.c): port I/O, serial output, exit. */
#pragma once
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint32_t inl(uint16_t port) {
  uint32_t v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

void putc_(char c);
void puts_(const char* s);
/* n bytes sent at once, after whatever was buffered, straight from s: no search for a length or a
 * line's end, no copy. For the answers whose first byte is timed (a clone's first output). */
void putnow_(const char* s, unsigned long n);
#define PUTNOW(lit) putnow_(lit, sizeof(lit) - 1)
void putu(unsigned v);
void putx(uint64_t v);
void guest_exit(uint32_t status) __attribute__((noreturn));
int streq(const char* a, const char* b);
int starts_with(const char* s, const char* prefix);

/* virtio.c: the virtio-pci scenarios (blk-*, hostile-*); returns only if `scenario` is not one. */
void virtio_scenario(const char* scenario);

/* irq.c: interrupts for the waiting scenarios (IDT, 8259 PIC at 0x20/0x28, LAPIC virtual wire,
 * 8250 receive interrupt, PIT channel 0). `irq_mask`: bit n unmasks IRQ n (bit 4 also turns on the
 * UART's receive interrupt). */
void tg_irq_init(uint16_t irq_mask);
void tg_pit_start(unsigned hz);  /* channel 0, mode 2; below 19 Hz it runs at 18.2 Hz */
void tg_wait(void);              /* sleep (sti; hlt) until an interrupt, unless input is pending (isr.S) */
void tg_wait_erratum_scenario(void) __attribute__((noreturn));  /* `wait-erratum` (irq.c) */
struct tg_line {
  char buf[128];
  unsigned len;
};
int tg_getline(struct tg_line* l);  /* 1: a complete line (NUL-terminated, no CR/LF) is in l->buf */
extern volatile uint64_t tg_ticks, tg_irqs, tg_serial_irqs;
extern volatile uint64_t tg_blocked_irqs, tg_blocked_rip;  /* interrupts a broken CPU delivered in tg_wait's check */
void putu64(uint64_t v);

/* clone.c and identity.c: the scenarios that clone tests snapshot at their ready line (counter,
 * ticks, dirty, identity); each returns only if `scenario` is not one of them. */
extern const volatile uint8_t* tg_memmap;  /* hvm_memmap_table_entry[] from PVH start info, or 0 */
extern uint32_t tg_memmap_entries;
void clone_scenario(const char* scenario, const char* arg);
void identity_scenario(const char* scenario);

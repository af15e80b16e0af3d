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
void putu(unsigned v);
void putx(uint64_t v);
void guest_exit(uint32_t status) __attribute__((noreturn));
int streq(const char* a, const char* b);
int starts_with(const char* s, const char* prefix);

/* virtio.c: the virtio-pci scenarios (blk-*, hostile-*); returns only if `scenario` is not one. */
void virtio_scenario(const char* scenario);

/* The clone identity file that vmm publishes through fw_cfg as `opt/vmm/identity`, and its strict
 * parser (pure C11, no I/O, no allocation; usable from C++).
 *
 * The file is exactly VMM_IDENTITY_SIZE (1024) bytes: text lines `key=value\n`, then at least one
 * NUL, then only NULs. The host is not trusted: anything that does not match the grammar below
 * rejects the whole file (nothing of it is to be used), with one reason in `err`.
 *   - every byte of the text is printable ASCII (0x20..0x7e) or '\n' (so no CR, no tab, no NUL
 *     mid-line, no byte >= 0x80); every line ends with '\n' and is at most 255 bytes without it;
 *     every line has a key of [a-z0-9_]+ and '='; an empty line is malformed;
 *   - known keys appear at most once; unknown keys (same key grammar) are ignored, whatever their
 *     (printable) value, for forward compatibility;
 *   - `generation` is required.
 * Values of the known keys:
 *   id          32 lowercase hex digits, not all zero (it becomes /etc/machine-id)
 *   name        1..64 of [A-Za-z0-9._-]
 *   generation  32 lowercase hex digits
 *   macN        N decimal without leading zeros, < VMM_IDENTITY_MAX_MACS; xx:xx:xx:xx:xx:xx with
 *               lowercase hex, unicast (bit 0 of the first octet clear), not all zero
 *   hostname    RFC 1123: labels of 1..63 [A-Za-z0-9-], not starting or ending with '-', joined by
 *               '.', 1..64 bytes in all (no trailing dot)
 *   ip          `dhcp`, or A.B.C.D[/P]: each part 0..255 in decimal without leading zeros ("0" is
 *               fine, "01" is not), P 0..32 without leading zeros, default 24; the address must be
 *               a unicast host address: not in 0/8, 127/8 or 224/3 (multicast, reserved, broadcast)
 *   gateway     A.B.C.D, the same rules as ip's address
 *   seed        64 lowercase hex digits (32 bytes)
 *   time        decimal seconds, time_ms decimal milliseconds: 1..19 digits, no leading zeros
 *               (except "0") */
#ifndef VMM_AGENT_IDENTITY_H
#define VMM_AGENT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VMM_IDENTITY_SIZE 1024
#define VMM_IDENTITY_MAX_LINE 255
#define VMM_IDENTITY_MAX_MACS 32

enum vmm_ip_mode { VMM_IP_NONE = 0, VMM_IP_STATIC = 1, VMM_IP_DHCP = 2 };

struct vmm_identity {
  int has_id, has_name, has_hostname, has_gateway, has_seed, has_time, has_time_ms;
  char id[33];          /* 32 hex digits + NUL */
  char name[65];
  char generation[33];  /* always present in a parsed identity */
  char hostname[65];
  unsigned char has_mac[VMM_IDENTITY_MAX_MACS];
  unsigned char mac[VMM_IDENTITY_MAX_MACS][6];
  int ip_mode;          /* enum vmm_ip_mode */
  unsigned char ip[4];  /* network order (ip[0] is A) */
  unsigned prefix;      /* 0..32 */
  unsigned char gateway[4];
  unsigned char seed[32];
  uint64_t time, time_ms;
};

/* Parses `len` bytes at `buf`. Returns 0 and fills *out, or -1 with *out zeroed and a one-line
 * reason (starting with the line number where there is one) in err (truncated to errlen). */
int vmm_identity_parse(const char *buf, size_t len, struct vmm_identity *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif

/* The strict parser of vmm's clone identity file: see identity.h for the grammar. Every check
 * works on (pointer, length) pairs inside the caller's buffer; nothing is copied before it has
 * been validated, and the output is filled only when the whole file passed. */
#include "identity.h"

#include <stdio.h>
#include <string.h>

static int is_lhex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
static int lhex_val(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alnum(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* n lowercase hex digits decoded into n/2 bytes at out (out may be NULL). */
static int parse_hex(const char *v, size_t len, size_t n, unsigned char *out) {
  if (len != n) return -1;
  for (size_t i = 0; i < n; i++)
    if (!is_lhex(v[i])) return -1;
  if (out)
    for (size_t i = 0; i < n / 2; i++) out[i] = (unsigned char)(lhex_val(v[2 * i]) << 4 | lhex_val(v[2 * i + 1]));
  return 0;
}

/* A decimal number of 1..maxdigits digits without leading zeros, at most max. */
static int parse_dec(const char *v, size_t len, size_t maxdigits, uint64_t max, uint64_t *out) {
  if (len == 0 || len > maxdigits || (len > 1 && v[0] == '0')) return -1;
  uint64_t x = 0;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit(v[i])) return -1;
    x = x * 10 + (uint64_t)(v[i] - '0');  /* maxdigits <= 19: cannot overflow */
  }
  if (x > max) return -1;
  *out = x;
  return 0;
}

static int all_zero(const char *v, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (v[i] != '0') return 0;
  return 1;
}

static int parse_name(const char *v, size_t len) {
  if (len == 0 || len > 64) return -1;
  for (size_t i = 0; i < len; i++)
    if (!is_alnum(v[i]) && v[i] != '.' && v[i] != '_' && v[i] != '-') return -1;
  return 0;
}

static int parse_hostname(const char *v, size_t len) {
  if (len == 0 || len > 64) return -1;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i < len && v[i] != '.') {
      if (!is_alnum(v[i]) && v[i] != '-') return -1;
      continue;
    }
    size_t n = i - start;  /* the label v[start..i) */
    if (n == 0 || n > 63 || v[start] == '-' || v[i - 1] == '-') return -1;
    if (i == len && start > 0) {  /* dotted, its last label all digits: an address's form (RFC 1123 2.1) */
      size_t d = start;
      while (d < len && v[d] >= '0' && v[d] <= '9') d++;
      if (d == len) return -1;
    }
    start = i + 1;
  }
  return 0;
}

static int parse_mac(const char *v, size_t len, unsigned char mac[6]) {
  if (len != 17) return -1;
  unsigned char m[6];
  for (int i = 0; i < 6; i++) {
    if (parse_hex(v + 3 * i, 2, 2, &m[i]) != 0) return -1;
    if (i < 5 && v[3 * i + 2] != ':') return -1;
  }
  if (m[0] & 1) return -1;  /* multicast (broadcast included) */
  if ((m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0) return -1;
  memcpy(mac, m, 6);
  return 0;
}

/* A.B.C.D, decimal parts 0..255 without leading zeros; a unicast host address. */
static int parse_addr(const char *v, size_t len, unsigned char a[4]) {
  size_t start = 0;
  int part = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i < len && v[i] != '.') continue;
    uint64_t x;
    if (part == 4 || parse_dec(v + start, i - start, 3, 255, &x) != 0) return -1;
    a[part++] = (unsigned char)x;
    start = i + 1;
  }
  if (part != 4) return -1;
  if (a[0] == 0 || a[0] == 127 || a[0] >= 224) return -1;
  return 0;
}

static int parse_ip(const char *v, size_t len, struct vmm_identity *id) {
  if (len == 4 && memcmp(v, "dhcp", 4) == 0) {
    id->ip_mode = VMM_IP_DHCP;
    return 0;
  }
  const char *slash = memchr(v, '/', len);
  size_t alen = slash ? (size_t)(slash - v) : len;
  uint64_t prefix = 24;
  if (parse_addr(v, alen, id->ip) != 0) return -1;
  if (slash && parse_dec(slash + 1, len - alen - 1, 2, 32, &prefix) != 0) return -1;
  id->ip_mode = VMM_IP_STATIC;
  id->prefix = (unsigned)prefix;
  return 0;
}

static int key_is(const char *k, size_t klen, const char *name) {
  return strlen(name) == klen && memcmp(k, name, klen) == 0;
}

/* A known key: its slot in `seen` (duplicates), or -1 for an unknown key. mac<N> sets *mac. */
enum { K_ID, K_NAME, K_GENERATION, K_HOSTNAME, K_IP, K_GATEWAY, K_SEED, K_TIME, K_TIME_MS, K_MAC, K_COUNT };
static int known_key(const char *k, size_t klen, int *mac) {
  static const char *const names[] = {"id", "name", "generation", "hostname", "ip", "gateway", "seed", "time", "time_ms"};
  for (int i = 0; i < K_MAC; i++)
    if (key_is(k, klen, names[i])) return i;
  if (klen > 3 && memcmp(k, "mac", 3) == 0) {
    size_t i = 3;
    while (i < klen && is_digit(k[i])) i++;
    if (i == klen) {
      *mac = -1;  /* mac + digits: a MAC key, valid or not */
      uint64_t n;
      if (parse_dec(k + 3, klen - 3, 3, VMM_IDENTITY_MAX_MACS - 1, &n) == 0) *mac = (int)n;
      return K_MAC;
    }
  }
  return -1;
}

#define FAIL(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); memset(out, 0, sizeof *out); return -1; } while (0)

int vmm_identity_parse(const char *buf, size_t len, struct vmm_identity *out, char *err, size_t errlen) {
  struct vmm_identity id;
  memset(&id, 0, sizeof id);
  if (err && errlen) err[0] = '\0';
  if (len != VMM_IDENTITY_SIZE) FAIL("size %zu, expected %d bytes", len, VMM_IDENTITY_SIZE);
  const char *nul = memchr(buf, '\0', len);
  if (!nul) FAIL("no NUL padding after the text");
  size_t text = (size_t)(nul - buf);
  for (size_t i = text; i < len; i++)
    if (buf[i] != '\0') FAIL("byte 0x%02x at offset %zu after the first NUL (offset %zu)", (unsigned char)buf[i], i, text);
  if (text > 0 && buf[text - 1] != '\n') FAIL("the last line has no newline (truncated?)");

  unsigned char seen[K_COUNT + VMM_IDENTITY_MAX_MACS];
  memset(seen, 0, sizeof seen);
  int lineno = 0;
  for (size_t pos = 0; pos < text; ) {
    lineno++;
    const char *line = buf + pos;
    const char *nl = memchr(line, '\n', text - pos);  /* found: the text ends with '\n' */
    size_t llen = (size_t)(nl - line);
    pos += llen + 1;
    if (llen > VMM_IDENTITY_MAX_LINE) FAIL("line %d: %zu bytes, at most %d", lineno, llen, VMM_IDENTITY_MAX_LINE);
    for (size_t i = 0; i < llen; i++)
      if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
        FAIL("line %d: byte 0x%02x at column %zu is not printable ASCII", lineno, (unsigned char)line[i], i + 1);
    const char *eq = memchr(line, '=', llen);
    if (!eq) FAIL("line %d: no '='", lineno);
    size_t klen = (size_t)(eq - line);
    if (klen == 0) FAIL("line %d: empty key", lineno);
    for (size_t i = 0; i < klen; i++)
      if (!(is_digit(line[i]) || (line[i] >= 'a' && line[i] <= 'z') || line[i] == '_'))
        FAIL("line %d: bad key (use a-z, 0-9 and _)", lineno);
    const char *v = eq + 1;
    size_t vlen = llen - klen - 1;
    int mac = -1;
    int k = known_key(line, klen, &mac);
    if (k < 0) continue;  /* unknown: ignored */
    if (k == K_MAC && mac < 0) FAIL("line %d: bad MAC key %.*s (mac0..mac%d)", lineno, (int)klen, line, VMM_IDENTITY_MAX_MACS - 1);
    int slot = k == K_MAC ? K_COUNT + mac : k;
    if (seen[slot]) FAIL("line %d: duplicate key %.*s", lineno, (int)klen, line);
    seen[slot] = 1;
    int bad = 0;
    switch (k) {
      case K_ID:
        bad = parse_hex(v, vlen, 32, NULL) || all_zero(v, vlen);
        if (!bad) { memcpy(id.id, v, 32); id.has_id = 1; }
        break;
      case K_NAME:
        bad = parse_name(v, vlen);
        if (!bad) { memcpy(id.name, v, vlen); id.has_name = 1; }
        break;
      case K_GENERATION:
        bad = parse_hex(v, vlen, 32, NULL);
        if (!bad) memcpy(id.generation, v, 32);
        break;
      case K_HOSTNAME:
        bad = parse_hostname(v, vlen);
        if (!bad) { memcpy(id.hostname, v, vlen); id.has_hostname = 1; }
        break;
      case K_IP: bad = parse_ip(v, vlen, &id); break;
      case K_GATEWAY:
        bad = parse_addr(v, vlen, id.gateway);
        id.has_gateway = !bad;
        break;
      case K_SEED:
        bad = parse_hex(v, vlen, 64, id.seed);
        id.has_seed = !bad;
        break;
      case K_TIME:
        bad = parse_dec(v, vlen, 19, UINT64_MAX, &id.time);
        id.has_time = !bad;
        break;
      case K_TIME_MS:
        bad = parse_dec(v, vlen, 19, UINT64_MAX, &id.time_ms);
        id.has_time_ms = !bad;
        break;
      case K_MAC:
        bad = parse_mac(v, vlen, id.mac[mac]);
        id.has_mac[mac] = !bad;
        break;
    }
    /* The value is not echoed: it is the host's text, and the log is the guest's console. */
    if (bad) FAIL("line %d: bad value for %.*s", lineno, (int)klen, line);
  }
  if (!seen[K_GENERATION]) FAIL("no generation");
  /* The router's own address on eth0 would have the clone answer ARP for it (the host refuses
   * this everywhere; a file that says it anyway is not applied). */
  if (id.ip_mode == VMM_IP_STATIC && id.has_gateway && memcmp(id.ip, id.gateway, 4) == 0) FAIL("ip is the gateway's address");
  *out = id;
  return 0;
}

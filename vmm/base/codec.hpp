// A small binary codec for saved state: ByteWriter appends little-endian values, ByteReader takes
// them back out of bytes that came from a file and are therefore untrusted. Every read is checked
// against what is left; every count and length against a caller-given maximum; booleans must be 0
// or 1. Errors are one line naming the context (file, section) and the field.
//
// Encoding: integers in the host's (x86-64: little-endian) byte order and their natural size; a
// blob or string is a u32 length and the bytes; a vector a u32 count and the elements. Kernel
// structs (kvm_regs, kvm_lapic_state, ...) go in whole with put_raw/get_raw: they are plain
// integers and byte arrays, so every bit pattern is a valid value.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "vmm/base/error.hpp"

namespace vmm {

/// Appends encoded values to a byte vector.
class ByteWriter {
 public:
  template <typename T>
    requires std::is_integral_v<T>
  void put(T value) {
    if constexpr (std::is_same_v<T, bool>) {
      put<uint8_t>(value ? 1 : 0);
    } else {
      put_bytes(std::span(reinterpret_cast<const uint8_t*>(&value), sizeof value));
    }
  }
  /// A plain struct whose every bit pattern is valid (kernel ABI structs), byte for byte.
  template <typename T>
    requires(std::is_trivially_copyable_v<T> && !std::is_integral_v<T>)
  void put_raw(const T& value) {
    put_bytes(std::span(reinterpret_cast<const uint8_t*>(&value), sizeof value));
  }
  void put_bytes(std::span<const uint8_t> bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }
  /// u32 length, then the bytes.
  void put_blob(std::span<const uint8_t> bytes) {
    put(static_cast<uint32_t>(bytes.size()));
    put_bytes(bytes);
  }
  void put_string(std::string_view s) { put_blob(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())); }
  /// u32 count, then each element with put() (integers) or put_raw() (plain structs).
  template <typename T>
  void put_vector(const std::vector<T>& v) {
    put(static_cast<uint32_t>(v.size()));
    for (const auto& e : v) {
      if constexpr (std::is_integral_v<T>) {
        put(e);
      } else {
        put_raw(e);
      }
    }
  }

  size_t size() const { return out_.size(); }
  const std::vector<uint8_t>& bytes() const { return out_; }
  std::vector<uint8_t> take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

/// Reads encoded values from untrusted bytes; never reads past the end.
class ByteReader {
 public:
  /// `context` prefixes every error ("state.bin: section serial0").
  ByteReader(std::span<const uint8_t> bytes, std::string context) : bytes_(bytes), context_(std::move(context)) {}

  template <typename T>
    requires std::is_integral_v<T>
  Result<T> get(std::string_view field) {
    if constexpr (std::is_same_v<T, bool>) {
      auto b = get<uint8_t>(field);
      if (!b) return std::unexpected(b.error());
      if (*b > 1) return fail("{}: {}: {} is not a boolean (0 or 1)", context_, field, *b);
      return *b == 1;
    } else {
      T value{};
      if (auto r = get_into(std::span(reinterpret_cast<uint8_t*>(&value), sizeof value), field); !r) {
        return std::unexpected(r.error());
      }
      return value;
    }
  }
  template <typename T>
    requires(std::is_trivially_copyable_v<T> && !std::is_integral_v<T>)
  Result<T> get_raw(std::string_view field) {
    T value{};
    if (auto r = get_into(std::span(reinterpret_cast<uint8_t*>(&value), sizeof value), field); !r) {
      return std::unexpected(r.error());
    }
    return value;
  }
  /// Copies exactly out.size() bytes.
  Result<> get_into(std::span<uint8_t> out, std::string_view field) {
    if (out.size() > remaining()) {
      return fail("{}: {}: truncated ({} bytes needed at offset {}, {} left)", context_, field, out.size(), pos_,
                  remaining());
    }
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + pos_, out.size());
    pos_ += out.size();
    return {};
  }
  /// A u32 length (at most `max`), then that many bytes, as a view into the input.
  Result<std::span<const uint8_t>> get_blob(std::string_view field, size_t max) {
    auto n = get<uint32_t>(field);
    if (!n) return std::unexpected(n.error());
    if (*n > max) return fail("{}: {}: length {} is over the limit of {}", context_, field, *n, max);
    if (*n > remaining()) {
      return fail("{}: {}: truncated ({} bytes needed at offset {}, {} left)", context_, field, *n, pos_, remaining());
    }
    auto view = bytes_.subspan(pos_, *n);
    pos_ += *n;
    return view;
  }
  Result<std::string> get_string(std::string_view field, size_t max) {
    auto b = get_blob(field, max);
    if (!b) return std::unexpected(b.error());
    return std::string(reinterpret_cast<const char*>(b->data()), b->size());
  }
  /// A u32 count (at most `max`), then the elements.
  template <typename T>
  Result<std::vector<T>> get_vector(std::string_view field, size_t max) {
    auto n = get<uint32_t>(field);
    if (!n) return std::unexpected(n.error());
    if (*n > max) return fail("{}: {}: count {} is over the limit of {}", context_, field, *n, max);
    if (static_cast<uint64_t>(*n) * sizeof(T) > remaining()) {
      return fail("{}: {}: truncated ({} elements of {} bytes at offset {}, {} bytes left)", context_, field, *n,
                  sizeof(T), pos_, remaining());
    }
    std::vector<T> v;
    v.reserve(*n);
    for (uint32_t i = 0; i < *n; ++i) {
      Result<T> e;
      if constexpr (std::is_integral_v<T>) {
        e = get<T>(field);
      } else {
        e = get_raw<T>(field);
      }
      if (!e) return std::unexpected(e.error());
      v.push_back(*e);
    }
    return v;
  }
  /// Fails unless every byte was consumed (a section longer than its reader expects is corrupt).
  Result<> finish() const {
    if (remaining()) return fail("{}: {} unexpected bytes at the end (offset {})", context_, remaining(), pos_);
    return {};
  }

  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }
  const std::string& context() const { return context_; }
  /// The minor version of the file format being read, where the caller knows it (a state file's):
  /// a reader of an older one's layout looks here. Unset: this vmm's own.
  void set_format_minor(uint16_t minor) { format_minor_ = minor; }
  std::optional<uint16_t> format_minor() const { return format_minor_; }
  /// An error in this reader's context: "{context}: {field}: {message}".
  Error error(std::string_view field, std::string_view message) const {
    return Error(fmt::format("{}: {}: {}", context_, field, message));
  }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
  std::string context_;
  std::optional<uint16_t> format_minor_;
};

}  // namespace vmm

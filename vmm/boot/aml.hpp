// A small AML (ACPI Machine Language) byte emitter: just the terms our DSDT uses. Each function
// returns the encoded bytes of one term, so terms nest by passing one's bytes into another.
// ACPI 6.4 §20 (AML grammar) and §6.4 (resource descriptors).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

namespace vmm::boot::aml {

using Bytes = std::vector<uint8_t>;

/// Longest body a PkgLength can describe: 2^28 - 1 bytes minus its own 4 bytes (§20.2.4).
inline constexpr size_t kMaxPkgBody = (1u << 28) - 5;

/// PkgLength for a body of `body_len` bytes: the encoded length counts its own bytes (§20.2.4).
/// `body_len` must be at most kMaxPkgBody.
Bytes pkg_length(size_t body_len);

/// NameString from ASL-like text: "\\_SB_.COM1", "_HID", "^PCI0"; segments shorter than 4
/// characters are padded with '_' (§20.2.2). Characters must be A-Z, 0-9 or '_' (first not a digit);
/// an invalid name yields an empty result.
Bytes name_string(std::string_view path);

/// An integer with the shortest encoding: ZeroOp, OneOp, BytePrefix .. QWordPrefix (§20.2.3).
Bytes integer(uint64_t value);
/// A null-terminated ASCII String (StringPrefix, §20.2.3).
Bytes string(std::string_view text);
/// EisaId("PNP0501"): the compressed 32-bit EISA id as a DWord integer (§6.1.5 _HID). `id` must be
/// 3 uppercase letters and 4 hex digits; anything else yields an empty result.
Bytes eisa_id(std::string_view id);

/// Name(name, object) (DefName, §20.2.5.1).
Bytes name(std::string_view name, const Bytes& object);
/// Package(){ elements... } (DefPackage, §20.2.5.4); at most 255 elements.
Bytes package(std::initializer_list<Bytes> elements);
/// The same for a run-time list (at most 255 elements).
Bytes package(std::span<const Bytes> elements);
/// Buffer(){ bytes } (DefBuffer, §20.2.5.4).
Bytes buffer(std::span<const uint8_t> bytes);
/// Scope(name){ terms } (DefScope, §20.2.5.1).
Bytes scope(std::string_view name, std::span<const uint8_t> terms);
/// Device(name){ terms } (DefDevice, §20.2.5.2).
Bytes device(std::string_view name, std::span<const uint8_t> terms);

/// ResourceTemplate(){ descriptors }: a Buffer ending with an End Tag (§6.4.2.9, §19.6.114).
Bytes resource_template(std::initializer_list<Bytes> descriptors);
/// IO(Decode16, min, max, alignment, length): I/O Port Descriptor (§6.4.2.5).
Bytes io_port(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length);
/// IRQNoFlags(){irq}: IRQ Descriptor, edge-triggered, active-high (§6.4.2.1); irq 0..15.
Bytes irq_no_flags(uint8_t irq);
/// Address space descriptors of a host bridge's resources (producer, fixed range [min, max]).
Bytes word_bus_number(uint16_t min, uint16_t max);
Bytes word_io(uint16_t min, uint16_t max);
Bytes dword_memory(uint32_t min, uint32_t max);

/// Interrupt descriptor settings (§6.4.3.6 Interrupt Vector Flags).
enum class Trigger : uint8_t { Level = 0, Edge = 1 };
enum class Polarity : uint8_t { ActiveHigh = 0, ActiveLow = 1 };
enum class Sharing : uint8_t { Exclusive = 0, Shared = 1 };
/// Interrupt(ResourceConsumer, trigger, polarity, sharing){gsi}: Extended Interrupt Descriptor
/// (§6.4.3.6) with one interrupt number (a GSI).
Bytes interrupt(uint32_t gsi, Trigger trigger, Polarity polarity, Sharing sharing);

// ---- Control methods (§20.2.5.2 NamedObj, §20.2.5.3 Statements, §20.2.5.4 Expressions) ------------

/// MethodFlags' SerializeFlag.
enum class Serialize : uint8_t { NotSerialized = 0, Serialized = 1 };
/// Method(name, argc, NotSerialized | Serialized){ terms } (DefMethod); argc 0..7 (else empty).
Bytes method(std::string_view name, uint8_t argc, Serialize serialize, std::span<const uint8_t> terms);
/// If(predicate){ terms } (DefIfElse without Else).
Bytes if_(const Bytes& predicate, std::span<const uint8_t> terms);
/// LEqual(a, b) (DefLEqual).
Bytes lequal(const Bytes& a, const Bytes& b);
/// Notify(object, value) (DefNotify); `object` is a name path such as "\\_SB_.VGEN".
Bytes notify(std::string_view object, const Bytes& value);
/// ArgN (Arg0Op .. Arg6Op); n 0..6 (else empty).
Bytes arg(uint8_t n);
/// A reference to a named object, as a term (a bare NameString).
Bytes name_ref(std::string_view path);

/// Concatenates terms.
Bytes concat(std::initializer_list<Bytes> terms);

}  // namespace vmm::boot::aml

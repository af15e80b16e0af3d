// fmt's compiled part, built once here instead of in every translation unit.
//
// Debian's libfmt-dev ships fmt as headers and a shared library only. The vmm binary links its
// libraries statically (CMakeLists.txt says why: every shared object loaded is time at each clone's
// exec), and it used to get there by compiling fmt header-only (FMT_HEADER_ONLY): then every file
// that includes <fmt/core.h> also parses and compiles <fmt/format.h> and <fmt/format-inl.h>, a fifth
// to a third of a file's build time here (clone/template.cpp 18.2 -> 14.7 s, vmm/cli/cli.cpp 27 ->
// 18.5 s). So the rest of the code sees fmt's declarations only, and this file holds the definitions
// that fmt/format-inl.h gives (FMT_FUNC, non-inline when FMT_HEADER_ONLY is not defined) and the
// template instances fmt's headers declare without defining (format.h: to_decimal, the locale
// helpers, and the extern templates at its end; core.h: locale_ref's constructor and get()).
// A fmt upgrade that declares another such function fails to link, naming it.
//
// A print to a file that cannot be written (stderr a pipe whose reader is gone, or a log on a full
// disk) is not an exception here: fmt threw std::system_error from fmt::print(FILE*), so a message
// printed on an error path ended vmm with an abort (SIGABRT, a core, a VM's disks unflushed:
// `vmm run --kernel /nonexistent 2>/dev/full`). The file's error indicator stays set (main() looks
// at stdout's). Every other exception fmt raises is thrown as before (the same in every file).
#include <system_error>

namespace vmm::fmt_detail {
inline void raise(const std::system_error&) {}
template <class E>
[[noreturn]] void raise(const E& e) {
  throw e;
}
}  // namespace vmm::fmt_detail
#define FMT_THROW(x) ::vmm::fmt_detail::raise(x)

#include <fmt/format-inl.h>

#include <locale>

FMT_BEGIN_NAMESPACE
namespace detail {

template auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;

template locale_ref::locale_ref(const std::locale& loc);
template auto locale_ref::get<std::locale>() const -> std::locale;

template auto thousands_sep_impl<char>(locale_ref) -> thousands_sep_result<char>;
template auto thousands_sep_impl<wchar_t>(locale_ref) -> thousands_sep_result<wchar_t>;
template auto decimal_point_impl(locale_ref) -> char;
template auto decimal_point_impl(locale_ref) -> wchar_t;

}  // namespace detail
FMT_END_NAMESPACE

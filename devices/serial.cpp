#include "devices/serial.hpp"

namespace vmm::devices {

namespace {
// Register offsets and bits (PC16550D §8).
constexpr uint8_t kIerRda = 0x01, kIerThre = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRda = 0x04, kIirFifo = 0xc0;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMcrLoop = 0x10;
}  // namespace

bool Serial::update_iir() {
  const bool was = !(s_.iir & kIirNone);
  uint8_t id = kIirNone;
  if ((s_.ier & kIerRda) && !rx_.empty()) {
    id = kIirRda;
  } else if ((s_.ier & kIerThre) && s_.thre_pending) {
    id = kIirThre;
  }
  s_.iir = static_cast<uint8_t>(id | kIirFifo);
  return !was && id != kIirNone;
}

void Serial::read(uint64_t offset, std::span<uint8_t> data) {
  bool raise = false;
  {
    std::lock_guard lock(mutex_);
    for (auto& b : data) b = read_reg(offset);
    raise = update_iir();
  }
  if (raise) irq_->trigger();
}

void Serial::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  bool raise = false;
  {
    std::lock_guard lock(mutex_);
    write_reg(offset, data[0]);
    raise = update_iir();
  }
  if (raise) irq_->trigger();
}

uint8_t Serial::read_reg(uint64_t offset) {
  const bool dlab = s_.lcr & kLcrDlab;
  switch (offset) {
    case 0:
      if (dlab) return s_.dll;
      if (rx_.empty()) return 0;
      {
        const uint8_t b = rx_.front();
        rx_.pop_front();
        return b;
      }
    case 1:
      return dlab ? s_.dlm : s_.ier;
    case 2: {
      const uint8_t v = s_.iir;
      if ((v & 0x0f) == kIirThre) s_.thre_pending = false;  // reading IIR clears a THRE interrupt
      return v;
    }
    case 3:
      return s_.lcr;
    case 4:
      return s_.mcr;
    case 5:
      return static_cast<uint8_t>(kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr));
    case 6:
      if (s_.mcr & kMcrLoop) {
        // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
        const uint8_t m = s_.mcr;
        return static_cast<uint8_t>(((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4));
      }
      return s_.msr;
    case 7:
      return s_.scr;
    default:
      return 0xff;
  }
}

void Serial::write_reg(uint64_t offset, uint8_t v) {
  const bool dlab = s_.lcr & kLcrDlab;
  switch (offset) {
    case 0:
      if (dlab) {
        s_.dll = v;
      } else if (s_.mcr & kMcrLoop) {
        if (rx_.size() < kRxFifoSize) rx_.push_back(v);
        s_.thre_pending = true;
      } else {
        if (first_output_ns_.load(std::memory_order_relaxed) == 0) {
          first_output_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
        }
        sink_(std::span<const uint8_t>(&v, 1));
        s_.thre_pending = true;
      }
      break;
    case 1:
      if (dlab) {
        s_.dlm = v;
      } else {
        if (!(s_.ier & kIerThre) && (v & kIerThre)) s_.thre_pending = true;  // THR is always empty
        s_.ier = v & 0x0f;
      }
      break;
    case 2:
      if (v & 0x02) rx_.clear();  // FCR: clear RX FIFO
      break;
    case 3:
      s_.lcr = v;
      break;
    case 4:
      s_.mcr = v & 0x1f;
      break;
    case 7:
      s_.scr = v;
      break;
    default:
      break;
  }
}

size_t Serial::enqueue_input(std::span<const uint8_t> bytes) {
  // The interrupt is raised under the lock too: once hold_input(true) has it, nothing of this
  // reaches the UART or the PIC any more (a capture of both follows).
  std::lock_guard lock(mutex_);
  if (input_held_) return 0;
  size_t n = 0;
  while (n < bytes.size() && rx_.size() < kRxFifoSize) rx_.push_back(bytes[n++]);
  if (update_iir()) irq_->trigger();
  return n;
}

bool Serial::can_accept() const {
  std::lock_guard lock(mutex_);
  return !input_held_ && rx_.size() < kRxFifoSize;
}

Serial::State Serial::save() const {
  std::lock_guard lock(mutex_);
  State s = s_;
  s.rx.assign(rx_.begin(), rx_.end());
  return s;
}

void Serial::restore(const State& s) {
  std::lock_guard lock(mutex_);
  s_ = s;
  rx_.assign(s.rx.begin(), s.rx.begin() + static_cast<std::ptrdiff_t>(std::min(s.rx.size(), kRxFifoSize)));
  s_.rx.clear();
}

void Serial::save(ByteWriter& out) const {
  const State s = save();
  for (uint8_t r : {s.ier, s.iir, s.lcr, s.mcr, s.lsr, s.msr, s.scr, s.dll, s.dlm}) out.put(r);
  out.put(s.thre_pending);
  out.put_vector(s.rx);
}

Result<> Serial::restore(ByteReader& in) {
  State s;
  for (auto [field, name] : {std::pair{&s.ier, "ier"}, {&s.iir, "iir"}, {&s.lcr, "lcr"}, {&s.mcr, "mcr"},
                             {&s.lsr, "lsr"}, {&s.msr, "msr"}, {&s.scr, "scr"}, {&s.dll, "dll"}, {&s.dlm, "dlm"}}) {
    auto v = in.get<uint8_t>(name);
    if (!v) return std::unexpected(v.error());
    *field = *v;
  }
  auto thre = in.get<bool>("thre_pending");
  if (!thre) return std::unexpected(thre.error());
  s.thre_pending = *thre;
  auto rx = in.get_vector<uint8_t>("rx", kRxFifoSize);
  if (!rx) return std::unexpected(rx.error());
  s.rx = std::move(*rx);
  restore(s);
  return {};
}

}  // namespace vmm::devices

// The counting CPU allocator of mhc/live_bytes.h: it wraps the allocator it replaces, so tensors
// keep the memory and alignment they had; each allocation carries its size to its deleter.
#include "mhc/live_bytes.h"

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace mhc::live_bytes {

namespace {

std::atomic<int64_t> live_count{0}, peak_count{0};

void add(int64_t bytes) {
  const int64_t now = live_count.fetch_add(bytes) + bytes;
  for (int64_t seen = peak_count.load(); now > seen && !peak_count.compare_exchange_weak(seen, now);) {
  }
}

// One allocation: the wrapped allocator's pointer (freed with this) and its size.
struct Allocation {
  c10::DataPtr inner;
  int64_t bytes;
};

void free_allocation(void* context) {
  auto* a = static_cast<Allocation*>(context);
  live_count.fetch_sub(a->bytes);
  delete a;
}

class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = inner_->allocate(bytes);
    void* data = inner.get();
    const c10::Device device = inner.device();
    add(static_cast<int64_t>(bytes));
    return {data, new Allocation{std::move(inner), static_cast<int64_t>(bytes)}, &free_allocation, device};
  }
  // Raw allocations (no DataPtr to carry the size) are not offered.
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  c10::Allocator* inner_;
};

// Above the priority of any allocator LibTorch registers for the CPU itself.
constexpr uint8_t kPriority = 200;
std::once_flag installing;
std::atomic<bool> is_installed{false};

}  // namespace

void install() {
  std::call_once(installing, [] {
    // Never destroyed: storages it made may be freed, or tensors made, during the process's exit.
    static auto* counter = new CountingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(counter, kPriority);
    is_installed = true;
  });
}

bool installed() { return is_installed; }
int64_t live() { return live_count; }
int64_t peak() { return peak_count; }
void reset_peak() { peak_count = live_count.load(); }

}  // namespace mhc::live_bytes

// dist::Group::leader_work (mhc/distributed.h): rank 0's long work, waited out by the others on a
// heartbeat, so that a busy rank 0 is not taken for a dead one.
#include <condition_variable>
#include <mutex>

#include "group_state.h"

namespace mhc::dist {

namespace {

// Bumps `key` in the store every `period` until stopped (or destroyed).
class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, std::string key, std::chrono::milliseconds period)
      : thread_([this, store = std::move(store), key = std::move(key), period] {
          std::unique_lock<std::mutex> lock(mutex_);
          do {
            lock.unlock();
            store->add(key, 1);
            lock.lock();
          } while (!stop_.wait_for(lock, period, [this] { return stopped_; }));
        }) {}
  ~Heartbeat() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stopped_ = true;
    }
    stop_.notify_one();
    thread_.join();
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopped_ = false;
  std::thread thread_;  // last: started once the members it uses exist
};

}  // namespace

void Group::leader_work(const std::string& what, const std::function<void()>& work) {
  if (world_size() == 1) return work();
  const std::string prefix = "mhc/leader/" + std::to_string(state_->leader_works++) + "/";
  const c10::intrusive_ptr<c10d::Store> store = state_->store;
  if (leader()) {
    {
      const Heartbeat heartbeat(store, prefix + "beat", timeout_ / 4);
      work();
    }
    store->set(prefix + "done", std::vector<uint8_t>{1});
    return;
  }
  // Wait while the beat advances; each store call bounded (a stopped rank 0's store never answers).
  const std::string silent = "waiting for rank 0 (" + what + ") failed on rank " + std::to_string(rank()) + " of " +
                             std::to_string(world_size()) + " (--dist-timeout " + seconds(timeout_) +
                             "): rank 0 did not answer (dead or stalled: ";
  int64_t beats = -1;
  Clock::time_point last_beat = Clock::now();
  for (;;) {
    const auto [done, now_beats] = within<std::pair<bool, int64_t>>(
        Clock::now() + timeout_, silent + "the rendezvous store does not answer)", [store, prefix] {
          return std::pair<bool, int64_t>{store->check({prefix + "done"}), store->add(prefix + "beat", 0)};
        });
    if (done) return;
    if (now_beats != beats) beats = now_beats, last_beat = Clock::now();
    else if (Clock::now() - last_beat > timeout_) throw std::runtime_error(silent + "its heartbeat stopped)");
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(timeout_ / 8, std::chrono::milliseconds(200)));
  }
}

}  // namespace mhc::dist

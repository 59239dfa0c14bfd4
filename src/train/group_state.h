// What a dist::Group holds (its store and process group, mhc/distributed.h), and the bounded wait on
// a store call, shared by src/train/distributed.cpp and src/train/leader_work.cpp.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "mhc/distributed.h"

namespace mhc::dist {

using Clock = std::chrono::steady_clock;

// "2.5 s": a timeout as the errors state it.
inline std::string seconds(std::chrono::milliseconds t) {
  std::ostringstream s;
  s << t.count() / 1000.0 << " s";
  return s.str();
}

struct Group::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int64_t digests = 0;      // same_everywhere() calls so far: each uses fresh store keys
  int64_t leader_works = 0;  // leader_work() calls so far: each uses fresh store keys
  std::map<std::string, int> subgroups_made;  // by members: subgroup() calls so far
};

// Runs `step` on a thread of its own and waits for it until `deadline`. c10d's store client waits
// without any timeout on a peer that accepts connections and never answers (another program on
// MASTER_PORT, a stopped rank 0), and a blocked call cannot be cancelled: it is abandoned and
// `timed_out` thrown (the process is on its way out with that error). The step may outlive the
// caller: it must own what it uses.
template <typename Result>
Result within(Clock::time_point deadline, const std::string& timed_out, std::function<Result()> step) {
  std::promise<Result> promise;
  std::future<Result> result = promise.get_future();
  std::thread([step = std::move(step), promise = std::move(promise)]() mutable {
    try {
      promise.set_value(step());
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
  }).detach();
  if (result.wait_until(deadline) == std::future_status::timeout) throw std::runtime_error(timed_out);
  return result.get();
}

}  // namespace mhc::dist

// c10d behind mhc/distributed.h: a TCPStore for the rendezvous, a ProcessGroupGloo for the
// collectives, flattened buckets so that a step is a handful of collectives whatever the number of
// parameter tensors, and failures turned into one line that names the ranks that did not answer.
#include "mhc/distributed.h"

#include <algorithm>
#include <sstream>
#include <thread>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "mhc/files.h"
#include "mhc/ops.h"
#include "mhc/parse.h"

namespace mhc::dist {

namespace {

using Clock = std::chrono::steady_clock;

// Large enough that a model of a few million parameters is one bucket, small enough that the
// flattened copy never doubles a large model's memory at once.
constexpr int64_t kBucketBytes = 32 << 20;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string seconds(std::chrono::milliseconds t) {
  std::ostringstream s;
  s << t.count() / 1000.0 << " s";
  return s.str();
}

// Consecutive runs of same-dtype tensors holding at most kBucketBytes (a larger tensor is a bucket alone).
std::vector<std::vector<torch::Tensor>> buckets(const std::vector<torch::Tensor>& tensors) {
  std::vector<std::vector<torch::Tensor>> out;
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    const int64_t b = t.numel() * t.element_size();
    if (out.empty() || bytes + b > kBucketBytes || out.back().front().scalar_type() != t.scalar_type())
      out.emplace_back(), bytes = 0;
    out.back().push_back(t);
    bytes += b;
  }
  return out;
}

}  // namespace

Environment Environment::read(const std::function<const char*(const char*)>& get) {
  auto value = [&](const char* name) -> std::string {
    const char* v = get(name);
    return v ? v : "";
  };
  Environment e;
  const std::string rank = value("RANK"), world = value("WORLD_SIZE");
  if (rank.empty() && world.empty()) return e;
  if (rank.empty() || world.empty())
    throw std::invalid_argument(std::string(rank.empty() ? "WORLD_SIZE" : "RANK") + " is set but " +
                                (rank.empty() ? "RANK" : "WORLD_SIZE") +
                                " is not (a distributed run sets both, as torchrun and mhc launch do)");
  e.world_size = static_cast<int>(parse_integer("WORLD_SIZE", world, 1, 1 << 20));
  e.rank = static_cast<int>(parse_integer("RANK", rank, 0, 1 << 20));
  if (e.rank >= e.world_size)
    throw std::invalid_argument("RANK=" + rank + " is out of range for WORLD_SIZE=" + world + " (accepted: 0 to " +
                                std::to_string(e.world_size - 1) + ")");
  if (!value("LOCAL_RANK").empty()) e.local_rank = static_cast<int>(parse_integer("LOCAL_RANK", value("LOCAL_RANK"), 0, 1 << 20));
  if (e.world_size == 1) return e;
  e.master_addr = value("MASTER_ADDR");
  if (e.master_addr.empty()) throw std::invalid_argument("WORLD_SIZE=" + world + " needs MASTER_ADDR (the rendezvous host)");
  if (value("MASTER_PORT").empty()) throw std::invalid_argument("WORLD_SIZE=" + world + " needs MASTER_PORT (the rendezvous port)");
  e.master_port = static_cast<int>(parse_integer("MASTER_PORT", value("MASTER_PORT"), 1, 65535));
  e.agent_store = value("TORCHELASTIC_USE_AGENT_STORE") == "True";
  if (e.agent_store && !value("TORCHELASTIC_RESTART_COUNT").empty())
    e.restart_count = static_cast<int>(parse_integer("TORCHELASTIC_RESTART_COUNT", value("TORCHELASTIC_RESTART_COUNT"), 0, 1 << 20));
  return e;
}

struct Group::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int64_t digests = 0;  // same_everywhere() calls so far: each uses fresh store keys
};

Group::Group(const Environment& environment, std::chrono::milliseconds timeout)
    : environment_(environment), timeout_(timeout), state_(std::make_unique<State>()) {
  if (world_size() == 1) return;
  const std::string where = environment_.master_addr + ":" + std::to_string(environment_.master_port);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(environment_.master_port);
    options.isServer = !environment_.agent_store && leader();
    options.numWorkers = world_size();
    options.waitWorkers = !environment_.agent_store;
    options.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(environment_.master_addr, options);
    state_->store = environment_.agent_store
                        ? c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::PrefixStore>(
                              "/worker/attempt_" + std::to_string(environment_.restart_count), tcp))
                        : c10::intrusive_ptr<c10d::Store>(tcp);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(rank()) + " cannot reach the rendezvous store at " + where +
                             " (MASTER_ADDR:MASTER_PORT) within " + seconds(timeout) + ": " +
                             first_line(error_message(e)));
  }
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->timeout = timeout;
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  options->devices.push_back(interface && *interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                                      : c10d::ProcessGroupGloo::createDefaultDevice());
  run("connecting the process group", [&] {
    state_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(state_->store, rank(), world_size(), options);
  });
}

Group::~Group() = default;

void Group::run(const char* what, const std::function<void()>& collective) {
  try {
    collective();
    return;
  } catch (const std::exception& e) {
    // Roll call: every rank that saw the failure checks in; whoever has not within a few seconds
    // is dead or stalled. (If the store's host is the one gone, the store itself is unreachable.)
    std::string absent;
    try {
      const std::string key = "mhc/failed/";
      state_->store->set(key + std::to_string(rank()), std::vector<uint8_t>{1});
      const auto deadline = Clock::now() + std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(5));
      for (int r = 0; r < world_size(); ++r) {
        while (r != rank() && !state_->store->check({key + std::to_string(r)}) && Clock::now() < deadline)
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (r != rank() && !state_->store->check({key + std::to_string(r)}))
          absent += (absent.empty() ? "" : ", ") + std::to_string(r);
      }
      absent = absent.empty() ? "every rank answered the roll call"
                              : "rank " + absent + " did not answer (dead or stalled)";
    } catch (const std::exception&) {
      absent = environment_.agent_store ? "the launcher's rendezvous store is gone"
                                        : "rank 0 did not answer (dead: the rendezvous store it hosted is gone)";
    }
    throw std::runtime_error(std::string(what) + " failed on rank " + std::to_string(rank()) + " of " +
                             std::to_string(world_size()) + " (--dist-timeout " + seconds(timeout_) + "): " + absent +
                             " [" + first_line(error_message(e)) + "]");
  }
}

void Group::on_buckets(const char* what, const std::vector<torch::Tensor>& tensors,
                       const std::function<void(std::vector<torch::Tensor>&)>& collective) {
  if (world_size() == 1) return;
  torch::NoGradGuard no_grad;
  for (const auto& bucket : buckets(tensors)) {
    std::vector<torch::Tensor> parts;
    for (const auto& t : bucket) parts.push_back(t.reshape({-1}));
    std::vector<torch::Tensor> flat = {torch::cat(parts)};
    run(what, [&] { collective(flat); });
    int64_t offset = 0;
    for (const auto& t : bucket) {
      t.copy_(flat[0].narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  }
}

void Group::broadcast(const std::vector<torch::Tensor>& tensors) {
  on_buckets("broadcast", tensors, [&](std::vector<torch::Tensor>& one) { state_->group->broadcast(one)->wait(); });
}

void Group::sum(const std::vector<torch::Tensor>& tensors) {
  on_buckets("all-reduce", tensors, [&](std::vector<torch::Tensor>& one) { state_->group->allreduce(one)->wait(); });
}

void Group::average(const std::vector<torch::Tensor>& tensors) {
  if (world_size() == 1) return;
  sum(tensors);
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) t.div_(world_size());
}

void Group::barrier() {
  if (world_size() == 1) return;
  run("barrier", [&] { state_->group->barrier()->wait(); });
}

bool Group::same_everywhere(const std::vector<torch::Tensor>& tensors) {
  if (world_size() == 1) return true;
  Sha256 digest;
  for (const auto& t : tensors) {
    const torch::Tensor c = t.detach().contiguous();
    digest.update(c.data_ptr(), c.numel() * c.element_size());
  }
  const std::string mine = digest.hex();
  const std::string key = "mhc/digest/" + std::to_string(state_->digests++) + "/";
  bool same = true;
  run("comparing parameters", [&] {
    state_->store->set(key + std::to_string(rank()), std::vector<uint8_t>(mine.begin(), mine.end()));
    for (int r = 0; r < world_size(); ++r) {
      const auto theirs = state_->store->get(key + std::to_string(r));
      same = same && std::string(theirs.begin(), theirs.end()) == mine;
    }
  });
  barrier();  // rank 0 hosts the store: nobody may leave before everyone has read it
  return same;
}

}  // namespace mhc::dist

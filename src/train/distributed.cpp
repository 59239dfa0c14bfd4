// c10d behind mhc/distributed.h: a TCPStore for the rendezvous, a ProcessGroupGloo for the
// collectives, flattened buckets so that a step is a handful of collectives whatever the number of
// parameter tensors, and failures turned into one line that names the ranks that did not answer.
// Every step of the rendezvous ends by --dist-timeout, even against a port that never answers.
#include "mhc/distributed.h"
#include "group_state.h"

#include <algorithm>
#include <csignal>
#include <future>
#include <map>
#include <thread>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "mhc/files.h"
#include "mhc/errors.h"
#include "mhc/parse.h"

namespace mhc::dist {

namespace {

// Large enough that a model of a few million parameters is one bucket, small enough that the
// flattened copy never doubles a large model's memory at once.
constexpr int64_t kBucketBytes = 32 << 20;

// How long past its own deadline a step may take before it is abandoned: when c10d's own timeout
// fires, its error says more than "no answer"; a step that polls until the deadline ends just after.
constexpr std::chrono::milliseconds kOwnTimeoutFirst{1000}, kPollEnds{300};

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Posts this rank's key `prefix` + rank (holding `value`), then waits until every rank has posted
// its own or `deadline` passes; returns the ranks absent by then, as their `names` "1, 3" (empty: none).
std::string absent_ranks(c10d::Store& store, const std::string& prefix, const std::vector<uint8_t>& value, int rank,
                         const std::vector<int>& names, Clock::time_point deadline) {
  store.set(prefix + std::to_string(rank), value);
  std::string absent;
  for (size_t r = 0; r < names.size(); ++r) {
    const std::vector<std::string> key = {prefix + std::to_string(r)};
    while (!store.check(key) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!store.check(key)) absent += (absent.empty() ? "" : ", ") + std::to_string(names[r]);
  }
  return absent;
}

std::vector<int> identity(int size) {
  std::vector<int> names(size);
  for (int r = 0; r < size; ++r) names[r] = r;
  return names;
}

std::string serialize(const Group::SharedSettings& settings) {
  std::string text;
  for (const auto& [name, value] : settings) text += name + "=" + value + "\n";
  return text;
}

std::map<std::string, std::string> deserialize(const std::vector<uint8_t>& bytes) {
  std::map<std::string, std::string> settings;
  std::istringstream lines(std::string(bytes.begin(), bytes.end()));
  for (std::string line; std::getline(lines, line);)
    settings[line.substr(0, line.find('='))] = line.substr(line.find('=') + 1);
  return settings;
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


Group::Group(const Environment& environment, std::chrono::milliseconds timeout, const SharedSettings& shared_settings)
    : environment_(environment), timeout_(timeout), state_(std::make_unique<State>()), names_(identity(world_size())) {
  if (world_size() == 1) return;
  // Gloo writes to its sockets with writev, which raises SIGPIPE when the peer has died: by default
  // that kills this rank without a word. Ignored, the write fails with EPIPE, and the failure becomes
  // the error that names the dead rank. (Python ignores SIGPIPE from the start; a C++ program must.)
  std::signal(SIGPIPE, SIG_IGN);
  const Clock::time_point deadline = Clock::now() + timeout;
  const Environment e = environment_;
  const std::string me = "rank " + std::to_string(rank());
  const std::string port = std::to_string(e.master_port);
  const std::string store_at = "the rendezvous store at " + e.master_addr + ":" + port + " (MASTER_ADDR:MASTER_PORT)";
  const auto timed_out_awaiting = [me, store_at, timeout](const std::string& what) {
    return me + " timed out after " + seconds(timeout) + " (--dist-timeout) awaiting " + what + " at " + store_at + ": ";
  };

  // The store, hosted by rank 0 unless torchrun's agent hosts it.
  const bool hosting = !e.agent_store && leader();
  const std::string unusable =
      me + (hosting ? " cannot host " : " cannot reach ") + store_at + " within " + seconds(timeout) + " (--dist-timeout): ";
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(e.master_port);
  options.isServer = hosting;
  options.numWorkers = world_size();
  options.waitWorkers = false;  // the join below waits for them, and names the missing ones
  options.timeout = timeout;
  state_->store = within<c10::intrusive_ptr<c10d::Store>>(
      deadline + kOwnTimeoutFirst, unusable + "connected, but nothing answered (is another program listening on port " + port + "?)",
      [e, options, unusable]() -> c10::intrusive_ptr<c10d::Store> {
        try {
          auto tcp = c10::make_intrusive<c10d::TCPStore>(e.master_addr, options);
          if (!e.agent_store) return tcp;
          return c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(e.restart_count), tcp);
        } catch (const std::exception& error) {
          throw std::runtime_error(unusable + first_line(error_message(error)));
        }
      });

  // The join: every rank posts its shared settings and reads everyone's; then the others say so,
  // their last word to the store, and rank 0, which hosts it, waits for that before going on.
  const std::string mine = serialize(shared_settings);
  const std::vector<std::map<std::string, std::string>> settings = within<std::vector<std::map<std::string, std::string>>>(
      deadline + kPollEnds, timed_out_awaiting("the other ranks") + "the store stopped answering",
      [store = state_->store, r = rank(), world = world_size(), names = names_, mine, deadline, timed_out_awaiting] {
        const std::string joined = "mhc/rendezvous/joined/", read = "mhc/rendezvous/read/";
        if (const std::string absent = absent_ranks(*store, joined, {mine.begin(), mine.end()}, r, names, deadline);
            !absent.empty())
          throw std::runtime_error(timed_out_awaiting("rank " + absent) +
                                   "it never joined (not started, failed first, or given another MASTER_ADDR:MASTER_PORT)");
        std::vector<std::map<std::string, std::string>> all;
        for (int other = 0; other < world; ++other) all.push_back(deserialize(store->get(joined + std::to_string(other))));
        if (r != 0) {
          store->set(read + std::to_string(r), std::vector<uint8_t>{1});
          return all;
        }
        if (const std::string absent = absent_ranks(*store, read, {1}, r, names, deadline); !absent.empty())
          throw std::runtime_error(timed_out_awaiting("rank " + absent) + "it joined, then stopped answering");
        return all;
      });

  // The same settings everywhere, or a collective would fail later without saying why. This rank
  // is compared first, so that its own value is named when it differs.
  std::vector<int> ranks = {rank()};
  for (int r = 0; r < world_size(); ++r)
    if (r != rank()) ranks.push_back(r);
  const auto value_on = [&](int r, const std::string& name) {
    const auto found = settings[r].find(name);
    return found == settings[r].end() ? std::string("(not set)") : found->second;
  };
  const auto which = [&](int r) { return "rank " + std::to_string(r) + (r == rank() ? " (this rank)" : ""); };
  for (const int r : ranks)
    for (const auto& [name, value] : shared_settings)
      if (value_on(r, name) != value_on(0, name))
        throw std::invalid_argument(name + " is " + value_on(0, name) + " on " + which(0) + " but " + value_on(r, name) +
                                    " on " + which(r) + ": every rank must be given the same settings");

  connect();
}

void Group::connect() {
  auto group_options = c10d::ProcessGroupGloo::Options::create();
  group_options->timeout = timeout_;
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  group_options->devices.push_back(interface && *interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                                            : c10d::ProcessGroupGloo::createDefaultDevice());
  run("connecting the process group", [&] {
    state_->group = within<c10::intrusive_ptr<c10d::ProcessGroupGloo>>(
        Clock::now() + timeout_ + kOwnTimeoutFirst, "no connection within " + seconds(timeout_),
        [store = state_->store, r = rank(), world = world_size(), group_options] {
          return c10::make_intrusive<c10d::ProcessGroupGloo>(store, r, world, group_options);
        });
  });
}

Group::Group(Group& parent, const std::vector<int>& members)
    : environment_(parent.environment_), timeout_(parent.timeout_), state_(std::make_unique<State>()), subgroup_(true) {
  std::string key;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] < 0 || members[i] >= parent.world_size() || (i > 0 && members[i] <= members[i - 1]))
      throw std::invalid_argument("subgroup: members must be ascending ranks of the group, got " + std::to_string(members[i]));
    if (members[i] == parent.rank()) environment_.rank = static_cast<int>(i);
    names_.push_back(parent.names_[members[i]]);
    key += (i ? "," : "") + std::to_string(members[i]);
  }
  if (std::find(members.begin(), members.end(), parent.rank()) == members.end())
    throw std::invalid_argument("subgroup: rank " + std::to_string(parent.rank()) + " is not among its members " + key);
  environment_.world_size = static_cast<int>(members.size());
  if (world_size() == 1) return;
  // Each subgroup of the same members gets keys of its own: the members count them alike.
  const int made = parent.state_->subgroups_made[key]++;
  state_->store = c10::make_intrusive<c10d::PrefixStore>("mhc/group/" + key + "/" + std::to_string(made) + "/",
                                                          parent.state_->store);
  connect();
}

std::unique_ptr<Group> Group::subgroup(const std::vector<int>& members) {
  return std::unique_ptr<Group>(new Group(*this, members));
}

Group::~Group() = default;

void Group::run(const char* what, const std::function<void()>& collective, int peer) {
  try {
    collective();
    return;
  } catch (const std::exception& e) {
    // Roll call: every rank that saw the failure checks in; whoever has not within a few seconds
    // is dead or stalled. (If the store's host is the one gone, the store itself does not answer.)
    const std::string store_gone = environment_.agent_store
                                       ? "the launcher's rendezvous store does not answer"
                                       : "rank 0 did not answer (dead or stalled: the rendezvous store it hosts does not answer)";
    const auto deadline = Clock::now() + std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(5));
    std::string verdict;
    try {
      const std::string absent = within<std::string>(
          deadline + kPollEnds, store_gone, [store = state_->store, r = rank(), names = names_, deadline, peer] {
            if (peer < 0) return absent_ranks(*store, "mhc/failed/", {1}, r, names, deadline);
            // Post this rank's key, then wait for the peer's alone.
            store->set("mhc/failed/" + std::to_string(r), std::vector<uint8_t>{1});
            const std::vector<std::string> key = {"mhc/failed/" + std::to_string(peer)};
            while (!store->check(key) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
            return store->check(key) ? std::string() : std::to_string(names[peer]);
          });
      verdict = absent.empty() ? (peer < 0 ? "every rank answered the roll call" : "rank " + std::to_string(names_[peer]) +
                                                                                      " answered the roll call")
                               : "rank " + absent + " did not answer (dead or stalled)";
    } catch (const std::exception&) {
      verdict = store_gone;
    }
    throw std::runtime_error(std::string(what) + " failed on rank " + std::to_string(names_[rank()]) +
                             (subgroup_ ? " (in a group of " + std::to_string(world_size()) + " ranks)"
                                        : " of " + std::to_string(world_size())) + " (--dist-timeout " + seconds(timeout_) + "): " + verdict +
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

struct Transfer::Work {
  c10::intrusive_ptr<c10d::Work> work;
  torch::Tensor tensor;  // kept alive until the transfer is done
};

Transfer::Transfer() = default;
Transfer::~Transfer() = default;
Transfer::Transfer(Transfer&&) noexcept = default;
Transfer& Transfer::operator=(Transfer&&) noexcept = default;

void Transfer::wait() {
  if (!work_) return;
  group_->run(
      what_.c_str(),
      [&] {
        if (!work_->work->wait(group_->timeout_)) throw std::runtime_error("no transfer within " + seconds(group_->timeout_));
      },
      peer_);
  work_.reset();
}

namespace {

void check_transfer(const char* what, const torch::Tensor& tensor, int peer, int64_t tag, int rank, int world_size) {
  if (!tensor.device().is_cpu() || !tensor.is_contiguous())
    throw std::invalid_argument(std::string(what) + ": the tensor must be a contiguous CPU tensor (Gloo), got " +
                                tensor.device().str() + (tensor.is_contiguous() ? "" : ", not contiguous"));
  if (peer < 0 || peer >= world_size || peer == rank)
    throw std::invalid_argument(std::string(what) + ": peer rank " + std::to_string(peer) + " (accepted: another rank of 0 to " +
                                std::to_string(world_size - 1) + ")");
  if (tag < 0 || tag > INT32_MAX)
    throw std::invalid_argument(std::string(what) + ": tag " + std::to_string(tag) + " (accepted: 0 to 2^31 - 1)");
}

}  // namespace

Transfer Group::post(bool sending, const torch::Tensor& tensor, int peer, int64_t tag) {
  check_transfer(sending ? "send" : "receive", tensor, peer, tag, rank(), world_size());
  Transfer t;
  t.group_ = this;
  t.peer_ = peer;
  t.what_ = (sending ? "sending to rank " : "receiving from rank ") + std::to_string(names_[peer]);
  t.work_ = std::make_unique<Transfer::Work>();
  t.work_->tensor = tensor;
  std::vector<torch::Tensor> one = {tensor};
  run(
      t.what_.c_str(),
      [&] {
        t.work_->work = sending ? state_->group->send(one, peer, static_cast<int>(tag))
                                : state_->group->recv(one, peer, static_cast<int>(tag));
      },
      peer);
  return t;
}

Transfer Group::send(const torch::Tensor& tensor, int peer, int64_t tag) { return post(true, tensor, peer, tag); }
Transfer Group::receive(const torch::Tensor& tensor, int peer, int64_t tag) { return post(false, tensor, peer, tag); }

}  // namespace mhc::dist

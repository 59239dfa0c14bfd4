// Data-parallel training on torch's own c10d: rendezvous through a c10d TCPStore, collectives
// through a c10d process group (Gloo on CPU), behind the few operations the trainer needs. The
// c10d and Gloo headers stay in src/train/distributed.cpp: they are torch's internals, which change
// between releases, and they need Gloo's own headers, so nothing else should depend on them.
//
// A process learns its place from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), so `torchrun --no-python … mhc train` and `mhc launch` both work.
// Without those variables it is a world of one: no store, no sockets, every collective a no-op.
#pragma once

#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace mhc::dist {

class Group;

// A point-to-point send or receive in flight (Group::send, Group::receive). The transfer proceeds
// in the background while the caller computes; wait() blocks until it is done. It keeps its tensor
// alive; the caller must not touch the tensor until then.
class Transfer {
 public:
  Transfer();
  ~Transfer();
  Transfer(Transfer&&) noexcept;
  Transfer& operator=(Transfer&&) noexcept;
  // Waits at most the group's timeout; then, or when the peer is gone, throws std::runtime_error
  // naming the ranks that did not answer (as the collectives do). A no-op once done.
  void wait();
  bool pending() const { return work_ != nullptr; }

 private:
  friend class Group;
  struct Work;
  std::unique_ptr<Work> work_;
  Group* group_ = nullptr;
  int peer_ = -1;
  std::string what_;
};

struct Environment {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  // torchrun's agent hosts the store itself (TORCHELASTIC_USE_AGENT_STORE=True): every rank is a
  // client, under the prefix of the agent's restart attempt.
  bool agent_store = false;
  int restart_count = 0;

  // Reads the variables through `get` (the process environment by default). Throws
  // std::invalid_argument naming the variable: RANK without WORLD_SIZE or the reverse, a rank
  // outside [0, WORLD_SIZE), a missing MASTER_ADDR/MASTER_PORT, a value that is not a number.
  static Environment read(const std::function<const char*(const char*)>& get = std::getenv);
};

class Group {
 public:
  // (name, value) pairs that must be equal on every rank, compared at the rendezvous.
  using SharedSettings = std::vector<std::pair<std::string, std::string>>;

  // Rendezvous (every rank must arrive within `timeout`, each step of it bounded by that timeout
  // even when whatever listens on MASTER_PORT never answers) and the process group. The same
  // timeout bounds every collective: a rank that died or stalled makes the others throw, never
  // hang. Throws std::runtime_error naming MASTER_ADDR:MASTER_PORT and what was awaited when the
  // rendezvous fails, std::invalid_argument naming the first setting on which a rank differs from
  // rank 0 (every rank throws it).
  Group(const Environment& environment, std::chrono::milliseconds timeout, const SharedSettings& shared_settings);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return environment_.rank; }
  int world_size() const { return environment_.world_size; }
  bool leader() const { return environment_.rank == 0; }

  // The process group of some of this group's ranks (`members`, ascending, this rank among them):
  // every member calls it with the same members, the others do not. Its ranks are positions in
  // `members`; its errors name the ranks of this group. Bounded by the same timeout.
  std::unique_ptr<Group> subgroup(const std::vector<int>& members);

  // Point-to-point, posted at once and completed in the background: the contiguous CPU tensor's
  // bytes go to (come from) rank `peer`, matched with the peer's receive (send) of the same `tag`
  // (0 to 2^31 - 1), in order. Any dtype: both sides must agree on the shape and dtype.
  Transfer send(const torch::Tensor& tensor, int peer, int64_t tag);
  Transfer receive(const torch::Tensor& tensor, int peer, int64_t tag);

  // Overwrites the tensors with rank 0's values: flattened into buckets, one broadcast per bucket.
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // Replaces the tensors by their sum (or mean) over ranks: flattened buckets, one all-reduce each.
  void sum(const std::vector<torch::Tensor>& tensors);
  void average(const std::vector<torch::Tensor>& tensors);
  void barrier();
  // Whether every rank holds the same bytes (compared through the store by their SHA-256).
  bool same_everywhere(const std::vector<torch::Tensor>& tensors);
  // Rank 0's own work that the others wait out (evaluation, diagnostics, a checkpoint, the
  // tokenizer): every rank calls it at the same point; rank 0 runs `work` while a heartbeat in the
  // store says it is alive, and the others wait until it is done however long it takes. Only a
  // heartbeat that stops for the timeout (rank 0 dead or stalled) makes them throw, naming rank 0
  // and `what`. In a world of one: work().
  void leader_work(const std::string& what, const std::function<void()>& work);

 private:
  struct State;
  // Runs `collective` on each flattened bucket of the tensors (a no-op in a world of one).
  void on_buckets(const char* what, const std::vector<torch::Tensor>& tensors,
                  const std::function<void(std::vector<torch::Tensor>&)>& collective);
  // Runs a collective; on failure throws std::runtime_error naming the ranks that did not answer
  // the roll call (with `peer`, a point-to-point transfer's other end: that rank alone, since the
  // others may be healthy and waiting on someone else).
  void run(const char* what, const std::function<void()>& collective, int peer = -1);
  friend class Transfer;
  Group(Group& parent, const std::vector<int>& members);
  void connect();  // the Gloo process group over state_->store
  Transfer post(bool sending, const torch::Tensor& tensor, int peer, int64_t tag);
  Environment environment_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<State> state_;
  // The rank, in the group that made this one (the world's, for the world), of each rank of it:
  // errors name those.
  std::vector<int> names_;
  bool subgroup_ = false;
};

}  // namespace mhc::dist

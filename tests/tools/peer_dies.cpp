// Test helper: a rank whose peer has died gets SIGPIPE and must still end with one error line.
// Gloo writes to its sockets with writev; a write to the socket of a peer that died raises SIGPIPE,
// which kills a process that does not ignore it, without a word. Whether a write lands in that
// window is a race (1 survivor in 60 of `mhc train --pipeline-stages 2` under load died so, status
// 141), so this helper raises the signal itself, as the kernel would, once the peer is gone.
// Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=… MASTER_PORT=… peer_dies
// Rank 1 joins and exits. Rank 0 must exit 1 with "error: … rank 1 …", not 141.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>

#include "mhc/distributed.h"

int main() {
  try {
    mhc::dist::Group group(mhc::dist::Environment::read(), std::chrono::seconds(5), {});
    torch::Tensor one = torch::zeros({1});
    if (group.rank() == 1) {
      group.receive(one, 0, 0).wait();
      std::_Exit(0);  // no goodbye, as when the process is killed
    }
    group.send(one, 1, 0).wait();
    std::raise(SIGPIPE);
    for (int tag = 1; tag <= 100; ++tag) group.send(one, 1, tag).wait();
    group.barrier();
    std::fprintf(stderr, "rank 0 sent to a dead peer and met it at a barrier without an error\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// `mhc`: the project's one command-line tool (libmhc_cli.so, started by launcher.cpp). Each
// subcommand takes its own flags (`mhc SUBCOMMAND --help`). Errors are one line on stderr and exit
// status 2 for bad input, 1 for failures.
#include <c10/util/Logging.h>
#include <malloc.h>

#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "mhc/errors.h"

namespace {

// Keep freed memory in the process instead of handing large blocks back to the kernel: LibTorch on
// CPU has no caching allocator, so without this every activation-sized tensor is a fresh mmap
// whose pages the kernel must fault in and zero — measured here at ~16 ms per 32 MB tensor, more
// than the kernels themselves (the role jemalloc/tcmalloc play for PyTorch users).
void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
}

// LibTorch says bad input with ValueError, TypeError and IndexError (TORCH_CHECK_VALUE, …); any
// other error of its own is a failure, not the user's.
bool is_bad_input(const c10::Error& e) {
  return dynamic_cast<const c10::ValueError*>(&e) || dynamic_cast<const c10::TypeError*>(&e) ||
         dynamic_cast<const c10::IndexError*>(&e);
}

const char* kUsage =
    "usage: mhc COMMAND [flags]\n"
    "\n"
    "commands:\n"
    "  train           train a GPT with any residual variant (default: mHC, n = 4, on the Brown corpus)\n"
    "  sample          continue a prompt with a trained model\n"
    "  eval            validation loss and perplexity of a trained model\n"
    "  analyze         signal-gain diagnostics of a checkpoint: table and plots\n"
    "  compare         train several variants identically; report with plots\n"
    "  launch          run a command as N local ranks of a data-parallel job (mhc launch --nproc 2 -- train)\n"
    "  bench layer     time one sublayer's fused ops against the plain-LibTorch reference\n"
    "  bench train     training step time of every variant, as ratios to the plain residual\n"
    "  bench memory    peak activation bytes of a training step per variant and recomputation policy\n"
    "  bench pipeline  a training step over pipeline stages: bubble, bytes between stages, communication wait\n"
    "  bench decode    generation with the KV cache: prefill and decode tokens/s of every variant vs the residual\n"
    "\n"
    "Run `mhc COMMAND --help` for the flags of a command.\n";

}  // namespace

// Called by the `mhc` launcher (launcher.cpp) once the thread pools' environment is set.
extern "C" __attribute__((visibility("default"))) int mhc_main(int argc, char** argv) {
  c10::initLogging();  // reads TORCH_CPP_LOG_LEVEL (the launcher's default: fatal only); torch's Python does this on import
  keep_freed_memory();
  mhc::cli::die_with_launcher();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  try {
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (args[0] == "train") return mhc::cli::train(rest);
    if (args[0] == "sample") return mhc::cli::sample(rest);
    if (args[0] == "eval") return mhc::cli::eval(rest);
    if (args[0] == "analyze") return mhc::cli::analyze(rest);
    if (args[0] == "compare") return mhc::cli::compare(rest);
    if (args[0] == "launch") return mhc::cli::launch(rest);
    if (args[0] == "bench") {
      if (args.size() >= 2 && args[1] == "layer") return mhc::cli::bench_layer({args.begin() + 2, args.end()});
      if (args.size() >= 2 && args[1] == "train") return mhc::cli::bench_train({args.begin() + 2, args.end()});
      if (args.size() >= 2 && args[1] == "memory") return mhc::cli::bench_memory({args.begin() + 2, args.end()});
      if (args.size() >= 2 && args[1] == "pipeline") return mhc::cli::bench_pipeline({args.begin() + 2, args.end()});
      if (args.size() >= 2 && args[1] == "decode") return mhc::cli::bench_decode({args.begin() + 2, args.end()});
      throw std::invalid_argument("mhc bench: unknown benchmark '" + (args.size() >= 2 ? args[1] : "") +
                                  "' (accepted: layer, train, memory, pipeline, decode)");
    }
    throw std::invalid_argument("mhc: unknown command '" + args[0] + "' (accepted: train, sample, eval, analyze, compare, launch, bench)");
  } catch (const std::invalid_argument& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << mhc::error_message(e) << "\n";
    return is_bad_input(e) ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

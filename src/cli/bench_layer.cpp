// `mhc bench layer`: forward + backward of one sublayer's connection, fused ops vs the
// plain-LibTorch reference, in one run (or, with --boundary, two sublayers' with the fused
// boundary vs the unfused pair).
//
// The sublayer F is the identity, so what is timed is the connection alone: pre → y = h → post →
// backward of a fixed random output gradient. The two paths alternate repetition by repetition
// (so a noisy neighbour or a frequency change hits both alike) and the median of each is reported
// after warm-up. The GB/s column divides the bytes the fused kernels must move by the fused time:
//   pre fwd   reads x (nC), writes h (C)          post fwd  reads x, y ((n+1)C), writes nC
//   post bwd  reads dout, x, y, writes dx, dy     pre bwd   reads dh, x, writes dx
// i.e. (8n + 5)·C values per token of the storage dtype, each once; it is printed next to the
// device's copy bandwidth (a large multi-threaded memcpy on the CPU, a device-to-device copy on a
// GPU; read + write counted), the ceiling for a streaming kernel. The Markdown table adds the
// copy-bound time (those bytes at copy speed: no fused path can be faster) and the speedup over the
// reference that this bound allows. The projection's FLOPs (forward g = v·φ, backward dv = dg·φᵀ
// and dφ = vᵀ·dg: 3 × 2·P·K·m per token) at the measured FMA peak give the FMA bound; the fused
// path can meet neither bound alone, so bound_ratio = fused / max(copy bound, FMA bound) says how
// far it is from the machine. On a GPU every timing ends with a device synchronisation (and the
// FMA bound is not computed). On the CPU --json adds <timed>_ops_ms: of the timed path's time, the
// part inside the connection's ops (mhc::op_clock: kernels, output allocations and, under bf16
// storage, the conversions); the rest is autograd's bookkeeping around them. The CUDA ops have no
// such clock (their time is the device's), so there it is null.
//
// --boundary times two consecutive sublayers instead (F = identity for both), as a stack runs them,
// with the post of the first and the pre of the second as one op (mhc::boundary), against the same
// two sublayers each run as pre_joint → post (the unfused pair), alternating as above. The boundary
// saves a read of x_next in the forward pass and a write and a read of its gradient in the
// backward pass: 2(8n + 5) − 3n = (13n + 10)·C values per token, against which its copy bound is
// counted (its FMA bound: two projections). Under bf16 storage and on CUDA the boundary op runs the
// unfused pair (mhc/ops.h), so there its bound is the pair's work held to the fused path's bytes.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>

#include "args.h"
#include "bench_common.h"
#include "commands.h"
#include "mhc/machine.h"
#include "mhc/module.h"
#include "mhc/ops.h"
#include "mhc/settings.h"
#include "run_settings.h"

namespace mhc::cli {
namespace {

// Waits for the device's queued work: what a wall-clock timing of GPU work must end with.
void finish(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Best of a few copies of 256 MiB (parallel memcpy's on the CPU, one device copy on a GPU); bytes
// read + bytes written per second.
double copy_bandwidth_gbs(torch::Device device, int threads) {
  const size_t bytes = size_t(256) << 20;
  double best = 0;
  if (device.is_cuda()) {
    const auto options = torch::TensorOptions().dtype(torch::kByte).device(device);
    const torch::Tensor src = torch::ones({static_cast<int64_t>(bytes)}, options), dst = torch::empty_like(src);
    for (int rep = 0; rep < 5; ++rep) {
      finish(device);
      const auto t0 = Clock::now();
      dst.copy_(src);
      finish(device);
      best = std::max(best, 2.0 * bytes / seconds_since(t0) / 1e9);
    }
    return best;
  }
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads)
    {
      const size_t chunk = bytes / omp_get_num_threads(), begin = chunk * omp_get_thread_num();
      std::memcpy(dst.data() + begin, src.data() + begin, chunk);
    }
    best = std::max(best, 2.0 * bytes / seconds_since(t0) / 1e9);
  }
  return best;
}

// The GPU's name, as the driver's nvidia-smi reports it (this build need not link the CUDA runtime).
std::string gpu_model(torch::Device device) {
  const std::string command = "nvidia-smi --query-gpu=name --format=csv,noheader --id=" +
                              std::to_string(std::max<int>(device.index(), 0)) + " 2>/dev/null";
  std::string name;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[256];
    while (fgets(buffer, sizeof buffer, pipe)) name += buffer;
    pclose(pipe);
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name.empty() ? "unknown GPU" : name;
}

struct Result {
  int64_t n, C, tokens;
  double fused_s, reference_s, bytes, flops;
  double ops_s;  // of fused_s, the time inside the connection's ops (mhc::op_clock; CPU only)
};

// The projection GEMMs' floating-point operations for N tokens, forward and backward.
double projection_flops(const VariantSpec& variant, int64_t N, int64_t n, int64_t C) {
  const Layout l = layout(variant.variant, n, C, variant.options);
  return 3.0 * 2.0 * double(N) * double(l.proj_per_token) * double(l.proj_rows) * double(l.proj_cols);
}

Result run_case(const VariantSpec& variant, int64_t N, int64_t n, int64_t C, int64_t t, int warmup, int reps,
                torch::Device device, torch::ScalarType storage, bool boundary) {
  torch::manual_seed(0);
  auto options = HyperConnectionOptions(variant.variant, n, C).sinkhorn_iters(t).variant_options(variant.options);
  // One sublayer's connection twice (fused, reference), or two sublayers' (--boundary); the
  // parameters stay float32 (mhc/ops.h), φ non-trivial so that every path does real work, and the
  // same numbers for the fused and the reference path.
  HyperConnection fused{nullptr}, reference{nullptr};
  HyperConnectionStack pair{nullptr};
  {
    torch::NoGradGuard no_grad;
    if (boundary) {
      pair = HyperConnectionStack(options, 2);
      pair->to(device);
      for (auto& c : pair->connections)
        if (c->phi.numel()) c->phi.normal_(0, 0.02);
    } else {
      fused = HyperConnection(options), reference = HyperConnection(HyperConnectionOptions(options).use_reference(true));
      fused->to(device), reference->to(device);
      if (fused->phi.numel()) fused->phi.normal_(0, 0.02);
      for (auto [a, b] : {std::pair{fused->phi, reference->phi}, {fused->bias, reference->bias}, {fused->alpha, reference->alpha}})
        b.copy_(a);
    }
  }
  const auto on_device = torch::TensorOptions().dtype(storage).device(device);
  const torch::Tensor x = torch::randn({N, n, C}, on_device).requires_grad_(true);
  const torch::Tensor dout = torch::randn({N, n, C}, on_device);
  const Sublayer identity = [](const torch::Tensor& h) { return h; };
  // One forward + backward: its wall-clock seconds, and those spent inside the ops into *op_seconds.
  auto step = [&](const std::function<torch::Tensor()>& forward, torch::nn::Module& module, double* op_seconds) {
    finish(device);
    op_clock::reset();
    op_clock::enable(op_seconds != nullptr);
    const auto t0 = Clock::now();
    forward().backward(dout);
    finish(device);
    const double s = seconds_since(t0);
    op_clock::enable(false);
    if (op_seconds) *op_seconds = op_clock::seconds();
    x.mutable_grad() = torch::Tensor();
    module.zero_grad();
    return s;
  };
  // The timed path and the one it is compared with: fused vs reference, or boundary vs the unfused pair.
  const std::function<torch::Tensor()> timed =
      boundary ? std::function<torch::Tensor()>([&] { return pair->forward(x, {identity, identity}); })
               : [&] { return fused->forward(x, identity); };
  const std::function<torch::Tensor()> other =
      boundary ? std::function<torch::Tensor()>([&] {
        return pair->connections[1]->forward(pair->connections[0]->forward(x, identity), identity);
      })
               : [&] { return reference->forward(x, identity); };
  torch::nn::Module& timed_module = boundary ? static_cast<torch::nn::Module&>(*pair) : *fused;
  torch::nn::Module& other_module = boundary ? static_cast<torch::nn::Module&>(*pair) : *reference;
  std::vector<double> fused_s, reference_s, ops_s;
  for (int rep = 0; rep < warmup + reps; ++rep) {
    double ops = 0;
    const double f = step(timed, timed_module, &ops), r = step(other, other_module, nullptr);
    if (rep >= warmup) fused_s.push_back(f), reference_s.push_back(r), ops_s.push_back(ops);
  }
  const double values = boundary ? double(13 * n + 10) : double(8 * n + 5);
  const double bytes = double(N) * values * C * x.element_size();
  return {n, C, N, median(fused_s), median(reference_s), bytes, (boundary ? 2 : 1) * projection_flops(variant, N, n, C),
          median(ops_s)};
}

// The rows' columns, named for the timed path and the one it is compared with; JSON keys as
// scripts read them.
Table layer_table(const std::string& timed, const std::string& other, TableStyle style) {
  const Format ms = Format::fixed(2);
  return Table({{"variant", "variant"}, {"n", "streams"}, {"C", "dim"}, {"tokens", "tokens"}, {"", "device"},
                     {"", "dtype"}, {"", "threads"}, {timed + " ms", timed + "_ms", ms}, {other + " ms", other + "_ms", ms},
                     {"", timed + "_ops_ms"}, {"speedup", "speedup", Format::ratio(1)},
                     {timed + " tokens/s", timed + "_tokens_per_s", Format::fixed(0)},
                     {timed + " GB/s", timed + "_gb_per_s", Format::fixed(1)}, {"% of copy", "", Format::percent(0)},
                     {"", "copy_gb_per_s"}, {"copy-bound ms", "copy_bound_ms", ms}, {"", "fma_gflops"},
                     {"FMA-bound ms", "fma_bound_ms", ms}, {timed + " / bound", "bound_ratio", Format::fixed(2)}},
               style);
}

// The stream counts each variant runs at: those asked for that it takes (1 for residual). One it
// does not take is skipped with a note on stderr when the variant takes another, and is the error
// otherwise (std::invalid_argument, the variant's own message).
std::vector<std::vector<int64_t>> accepted_streams(const std::vector<VariantSpec>& variants,
                                                   const std::vector<int64_t>& stream_counts) {
  std::vector<std::vector<int64_t>> accepted(variants.size());
  for (size_t v = 0; v < variants.size(); ++v) {
    const VariantSpec& k = variants[v];
    std::string refusal;
    for (int64_t n : k.variant == Variant::residual ? std::vector<int64_t>{1} : stream_counts) {
      try {
        check_streams(k.variant, n, k.options);
        accepted[v].push_back(n);
      } catch (const std::invalid_argument& e) {
        refusal = e.what();
      }
    }
    if (accepted[v].empty()) throw std::invalid_argument(refusal);
    if (!refusal.empty())
      std::cerr << "mhc bench layer: skipping what " << variant_spec(k.variant, k.options) << " does not take: " << refusal
                << "\n";
  }
  return accepted;
}

}  // namespace

int bench_layer(const std::vector<std::string>& argv) {
  Args args("mhc bench layer",
            "Times forward+backward of one sublayer's connection (F = identity), fused vs reference;\n"
            "with --boundary, of two sublayers' with their boundary fused vs the unfused pair.");
  args.flag("variant", "mhc",
            std::string("variants, comma-separated (") + variant_names() +
                "), each with its options where it has any (gomhc:block_size=1, jpmhc:cayley_iters=2)")
      .alias("kind", "variant")
      .flag("tokens", "4096", "tokens N = batch x sequence", IntegerRange{1, 1 << 24})
      .flag("streams", "4",
            "stream counts n, comma-separated (residual always uses 1; with several variants, each skips those it "
            "does not take)",
            IntegerRange{1, kMaxStreams})
      .flag("dim", "512", "widths C, comma-separated", IntegerRange{1, 1 << 20})
      .flag("device", "cpu", "where to run: cpu, cuda, cuda:N")
      .flag("dtype", "float32", "storage of x and y: float32, bfloat16 (parameters and coefficients stay float32)")
      .flag("sinkhorn-iters", "20", "Sinkhorn-Knopp iterations t (mhc, mhc-v4)", train::setting_spec("sinkhorn-iters").range)
      .flag("warmup", "2", "untimed repetitions first", IntegerRange{0, 1000})
      .flag("reps", "7", "timed repetitions (median reported; at least 5)", IntegerRange{5, 10000})
      .toggle("boundary", "time two consecutive sublayers, post and pre fused at their boundary, against the unfused pair")
      .toggle("json", "one JSON object per case instead of a table")
      .toggle("markdown", "a Markdown table (for docs/benchmarks.md)");
  declare_threads_flag(args);
  if (!args.parse(argv)) return 0;
  const TableStyle style = table_style(args);

  std::vector<VariantSpec> variants;
  for (const auto& k : args.list("variant")) variants.push_back(parse_variant_spec(k));
  const std::vector<int64_t> dims = args.integers("dim"), stream_counts = args.integers("streams");
  const int64_t N = args.integer("tokens");
  const int threads = static_cast<int>(args.integer("threads"));
  const int64_t t = args.integer("sinkhorn-iters");
  const int warmup = static_cast<int>(args.integer("warmup"));
  const int reps = static_cast<int>(args.integer("reps"));
  const std::vector<std::vector<int64_t>> streams_of = accepted_streams(variants, stream_counts);

  const torch::Device device = train::parse_device(args.str("device"));
  const torch::ScalarType storage = train::parse_dtype(args.str("dtype"));

  torch::set_num_threads(threads);
  const double copy_gbs = copy_bandwidth_gbs(device, threads);
  const double fma_gflops = device.is_cpu() ? cpu_fma_peak_gflops(threads) : 0.0;
  const std::string machine =
      device.is_cuda() ? gpu_model(device) + " (" + device.str() + ")" : cpu_model() + ", " + std::to_string(threads) + " threads";
  const std::string dtype_name = storage == torch::kBFloat16 ? "bfloat16" : "float32";
  const bool boundary = args.on("boundary");
  // Column names of the timed path and the one it is compared with.
  const std::string timed = boundary ? "boundary" : "fused", other = boundary ? "pair" : "reference";

  if (style != TableStyle::json) {
    std::cout << (style == TableStyle::markdown ? "Machine: " : "machine: ") << machine << "; copy bandwidth "
              << Format::fixed(1)(copy_gbs) << " GB/s (read + write)"
              << (fma_gflops > 0 ? ", FMA peak " + Format::fixed(1)(fma_gflops) + " GFLOP/s" : "") << ".\nN = " << N
              << " tokens, " << dtype_name << " storage, fwd+bwd of "
              << (boundary ? "two sublayers (boundary fused vs the unfused pair)" : "one sublayer")
              << " with F = identity, median of " << reps << ".\n" << (style == TableStyle::markdown ? "\n" : "");
  }
  const Table table = layer_table(timed, other, style);
  std::cout << table.header() << std::flush;
  for (size_t v = 0; v < variants.size(); ++v)
    for (int64_t n : streams_of[v])
      for (int64_t C : dims) {
        const VariantSpec& variant = variants[v];
        const Result r = run_case(variant, N, n, C, t, warmup, reps, device, storage, boundary);
        const double gbs = r.bytes / r.fused_s / 1e9;
        const double floor_s = r.bytes / (copy_gbs * 1e9);  // moving the fused path's bytes at copy speed
        const double fma_s = fma_gflops > 0 ? r.flops / (fma_gflops * 1e9) : 0.0;  // its projection at FMA peak
        std::cout << table.row({variant_spec(variant.variant, variant.options), r.n, C, N, device.str(), dtype_name, threads, r.fused_s * 1e3,
                                r.reference_s * 1e3,
                                device.is_cpu() ? nlohmann::ordered_json(r.ops_s * 1e3) : nlohmann::ordered_json(nullptr),
                                r.reference_s / r.fused_s, N / r.fused_s, gbs, gbs / copy_gbs, copy_gbs, floor_s * 1e3,
                                fma_gflops, fma_s * 1e3, r.fused_s / std::max(floor_s, fma_s)})
                  << std::flush;
      }
  return 0;
}

}  // namespace mhc::cli

// Per-kernel benchmark of the fused CPU kernels, without LibTorch: each kernel of one sublayer
// (pre / post, forward / backward) on raw buffers, with the bytes it must move and the FLOPs of
// its projection reported as rates, to set against the machine's copy bandwidth and FMA peak.
//
//   build/bench_kernels [--benchmark_filter=mhc] [--benchmark_min_time=0.5]
//
// Shapes are those of `mhc bench layer`: N = 4096 tokens, n = 4 streams, C ∈ {512, 1024}.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <new>
#include <random>
#include <vector>

#include "../src/kernels/cpu/simd.h"
#include "../src/kernels/cpu/cpu_kernels.h"

namespace {

using mhc::Variant;

// 64-byte aligned storage, as LibTorch's CPU allocator gives the ops: the kernels' streaming stores
// need aligned rows, and std::vector's 16-byte alignment would time a path the ops never take.
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t count) { return static_cast<T*>(::operator new(count * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};
using Buffer = std::vector<float, Aligned64<float>>;

struct Sublayer {
  int64_t N, n, C;
  Variant variant;
  mhc::Layout l;
  Buffer x, y, phi, bias, alpha, h, H_pre, H_post, H_res, proj, rms, out, dout, dx, dy, dphi, dbias,
      dalpha, dH_post, dH_res;

  Sublayer(Variant variant_, int64_t N_, int64_t n_, int64_t C_)
      : N(N_), n(n_), C(C_), variant(variant_), l(mhc::layout(variant_, n_, C_)) {
    std::mt19937 rng(0);
    std::normal_distribution<float> normal;
    auto fill = [&](Buffer& v, size_t size, float scale) {
      v.resize(size);
      for (float& e : v) e = scale * normal(rng);
    };
    fill(x, N * n * C, 1), fill(y, N * C, 1), fill(dout, N * n * C, 1), fill(phi, l.proj_rows * l.proj_cols, 0.02f);
    fill(bias, l.bias_size, 1), alpha.assign(l.alpha_size, 0.5f);
    for (auto* v : {&h, &dy}) v->resize(N * C);
    for (auto* v : {&H_pre, &H_post, &dH_post}) v->resize(N * n);
    for (auto* v : {&H_res, &dH_res}) v->resize(N * n * n);
    proj.resize(N * l.proj_per_token * l.proj_cols), rms.resize(N * l.proj_per_token);
    out.resize(N * n * C), dx.resize(N * n * C), dphi.resize(phi.size()), dbias.resize(bias.size()),
        dalpha.resize(alpha.size());
  }

  mhc::cpu::PreInputs<float> inputs(int threads) const {
    return {x.data(), phi.data(), bias.data(), alpha.data(), N, int(n), C, variant, 20, mhc::VariantOptions{}, threads};
  }
  void pre_forward(int threads) {
    mhc::cpu::pre_forward<float>({inputs(threads), h.data(), H_pre.data(), H_post.data(), H_res.data(), proj.data(),
                                  rms.data()});
  }
  void pre_backward(int threads) {
    mhc::cpu::pre_backward<float>({inputs(threads), proj.data(), rms.data(), y.data(), nullptr, dH_post.data(),
                                   dH_res.data(), dx.data(), dphi.data(), dbias.data(), dalpha.data(), nullptr});
  }
  void post_forward(int threads) {
    mhc::cpu::post_forward(out.data(), x.data(), y.data(), H_post.data(), H_res.data(), N, int(n), C, threads);
  }
  void post_backward(int threads) {
    mhc::cpu::post_backward(dx.data(), dy.data(), dH_post.data(), dH_res.data(), dout.data(), x.data(), y.data(),
                            H_post.data(), H_res.data(), N, int(n), C, threads);
  }
  // FLOPs of the projection (the only non-streaming work): 2 per multiply-add.
  double projection_flops() const { return 2.0 * N * l.proj_per_token * l.proj_rows * l.proj_cols; }
};

enum Op { kPreForward, kPreBackward, kPostForward, kPostBackward };

void run(benchmark::State& state, Variant variant, Op op) {
  const int64_t N = 4096, n = variant == Variant::residual ? 1 : 4, C = state.range(0);
  const int threads = omp_get_num_procs();
  Sublayer s(variant, N, n, C);
  s.pre_forward(threads);  // the backward reads the forward's saved projections
  double values = 0, flops = 0;  // fp32 values moved from/to memory, per call
  for (auto _ : state) {
    switch (op) {
      case kPreForward: s.pre_forward(threads); break;
      case kPreBackward: s.pre_backward(threads); break;
      case kPostForward: s.post_forward(threads); break;
      case kPostBackward: s.post_backward(threads); break;
    }
  }
  switch (op) {
    case kPreForward: values = N * (n * C + C), flops = s.projection_flops(); break;          // x → h
    case kPreBackward: values = N * (2 * n * C + C), flops = 2 * s.projection_flops(); break;  // dh, x → dx
    case kPostForward: values = N * (2 * n * C + C); break;                                    // x, y → out
    case kPostBackward: values = N * (3 * n * C + 2 * C); break;  // dout, x, y → dx, dy
  }
  state.SetBytesProcessed(int64_t(state.iterations() * values * sizeof(float)));
  state.counters["GFLOP/s"] = benchmark::Counter(state.iterations() * flops / 1e9, benchmark::Counter::kIsRate);
}

// The machine's FMA peak on all threads (mhc::cpu::fma_peak_gflops, the same routine `mhc bench
// layer` uses), the ceiling for the GFLOP/s counters above.
void fma_peak(benchmark::State& state) {
  double gflops = 0;
  for (auto _ : state) gflops = mhc::cpu::fma_peak_gflops(omp_get_num_procs());
  state.counters["GFLOP/s"] = gflops;
}
BENCHMARK(fma_peak)->Unit(benchmark::kMillisecond);

#define MHC_BENCH(name, variant, op) BENCHMARK_CAPTURE(run, name, variant, op)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)
MHC_BENCH(mhc_pre_forward, Variant::mhc, kPreForward);
MHC_BENCH(mhc_pre_backward, Variant::mhc, kPreBackward);
MHC_BENCH(mhc_lite_pre_forward, Variant::mhc_lite, kPreForward);
MHC_BENCH(mhc_lite_pre_backward, Variant::mhc_lite, kPreBackward);
MHC_BENCH(hc_pre_forward, Variant::hc, kPreForward);
MHC_BENCH(hc_pre_backward, Variant::hc, kPreBackward);
MHC_BENCH(kromhc_pre_forward, Variant::kromhc, kPreForward);
MHC_BENCH(kromhc_pre_backward, Variant::kromhc, kPreBackward);
MHC_BENCH(jpmhc_pre_forward, Variant::jpmhc, kPreForward);
MHC_BENCH(jpmhc_pre_backward, Variant::jpmhc, kPreBackward);
MHC_BENCH(gomhc_pre_forward, Variant::gomhc, kPreForward);
MHC_BENCH(gomhc_pre_backward, Variant::gomhc, kPreBackward);
MHC_BENCH(post_forward_n4, Variant::mhc, kPostForward);
MHC_BENCH(post_backward_n4, Variant::mhc, kPostBackward);

}  // namespace

BENCHMARK_MAIN();

// The CUDA kernels against the CPU kernels, and their benchmark. Standalone (no LibTorch), so it
// builds wherever nvcc exists and runs wherever a GPU does; without one it reports the tests as
// skipped (exit status 77, which ctest counts as "skipped").
//
//   cuda_kernels            every variant, n and width: values and gradients, fp32 and bf16
//   cuda_kernels --bench    N = 16384, n = 4, C ∈ {1280, 4096}, bf16: time and GB/s per kernel
//
// The reference is the CPU kernels in double on the very inputs the GPU sees (bf16 inputs are
// rounded first). Tolerances: fp32 — 8 × the CPU fp32 kernels' own error against double, plus
// 64 fp32 ulps at the tensor's scale (the rule of tests/helpers.h); bf16 — 16 bf16 ulps (2^-4) at
// the tensor's scale, since bf16 outputs (and the bf16 dg fed to the backward GEMMs) are rounded.
#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../src/kernels/coefficients.h"
#include "../src/kernels/cpu/cpu_kernels.h"
#include "../src/kernels/cuda/cuda_kernels.h"

namespace {

using mhc::Variant;
int failures = 0;

#define CUDA_OK(call)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

template <typename T>
struct Device {
  T* p = nullptr;
  size_t n = 0;
  explicit Device(size_t count) : n(count) { CUDA_OK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  ~Device() { cudaFree(p); }
  Device(const Device&) = delete;
};

template <typename T>
T storage(double v) {
  if constexpr (std::is_same_v<T, float>) return float(v);
  else return __float2bfloat16(float(v));
}
template <typename T>
double value(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __bfloat162float(v);
}

template <typename T>
void upload(Device<T>& d, const std::vector<double>& v) {
  std::vector<T> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = storage<T>(v[i]);
  CUDA_OK(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
std::vector<double> download(const Device<T>& d) {
  std::vector<T> h(d.n);
  CUDA_OK(cudaMemcpy(h.data(), d.p, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<double> out(h.size());
  for (size_t i = 0; i < h.size(); ++i) out[i] = value(h[i]);
  return out;
}

// Values as the storage type would hold them (what the GPU reads).
template <typename T>
std::vector<double> rounded(std::vector<double> v) {
  for (auto& e : v) e = value(storage<T>(e));
  return v;
}

// Everything one case computes, in double.
struct Result {
  std::vector<double> h, H_pre, H_post, H_res, out, dx, dphi, dbias, dalpha;
};

struct Inputs {
  Variant variant;
  int n;
  int64_t N, C;
  int t;
  std::vector<double> x, phi, bias, alpha, y, dh, dout, dH_pre, dH_post, dH_res;
};

Inputs make_inputs(Variant variant, int n, int64_t N, int64_t C, int t, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const mhc::Layout l = mhc::layout(variant, n, C);
  auto randn = [&](size_t count, double scale) {
    std::vector<double> v(count);
    for (auto& e : v) e = scale * normal(rng);
    return v;
  };
  Inputs in;
  in.variant = variant, in.n = n, in.N = N, in.C = C, in.t = t;
  in.x = randn(N * n * C, 1.0);
  in.phi = randn(l.proj_rows * l.proj_cols, 0.5);
  in.bias = randn(l.bias_size, 1.0);
  in.alpha = randn(l.alpha_size, 0.3);
  in.y = randn(N * C, 1.0);
  in.dh = randn(N * C, 1.0);
  in.dout = randn(N * n * C, 1.0);
  in.dH_pre = randn(N * n, 1.0);
  in.dH_post = randn(N * n, 1.0);
  in.dH_res = randn(N * n * n, 1.0);
  return in;
}

// The CPU kernels in T (double or float), results widened to double. dx adds both ops' terms.
template <typename T>
Result run_cpu(const Inputs& in) {
  const mhc::Layout l = mhc::layout(in.variant, in.n, in.C);
  auto cast = [](const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); };
  const auto x = cast(in.x), phi = cast(in.phi), bias = cast(in.bias), alpha = cast(in.alpha), y = cast(in.y),
             dh = cast(in.dh), dout = cast(in.dout), dH_pre = cast(in.dH_pre), dH_post = cast(in.dH_post),
             dH_res = cast(in.dH_res);
  const int64_t N = in.N, n = in.n, C = in.C;
  std::vector<T> h(N * C), H_pre(N * n), H_post(N * n), H_res(N * n * n), proj(N * l.proj_per_token * l.proj_cols),
      rms(N * l.proj_per_token), out(N * n * C), dx_post(N * n * C), dy(N * C), dHp(N * n), dHr(N * n * n),
      dx_pre(N * n * C), dphi(phi.size()), dbias(bias.size()), dalpha(alpha.size());
  const mhc::cpu::PreInputs<T> pin{x.data(), phi.data(), bias.data(), alpha.data(), N, in.n, C, in.variant, in.t, 1};
  mhc::cpu::pre_forward<T>({pin, h.data(), H_pre.data(), H_post.data(), H_res.data(), proj.data(), rms.data()});
  mhc::cpu::post_forward<T>(out.data(), x.data(), y.data(), H_post.data(), H_res.data(), N, in.n, C, 1);
  // Backward of post with dout (the given dH_post / dH_res stand in for the whole graph's).
  mhc::cpu::post_backward<T>(dx_post.data(), dy.data(), dHp.data(), dHr.data(), dout.data(), x.data(), y.data(),
                             H_post.data(), H_res.data(), N, in.n, C, 1);
  mhc::cpu::pre_backward<T>({pin, proj.data(), rms.data(), dh.data(), dH_pre.data(), dH_post.data(), dH_res.data(),
                             dx_pre.data(), dphi.data(), dbias.data(), dalpha.data()});
  auto wide = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  Result r{wide(h), wide(H_pre), wide(H_post), wide(H_res), wide(out), {}, wide(dphi), wide(dbias), wide(dalpha)};
  // Compare post's gradients through dx too: dx = pre's dx + post's dx; dy and dH are folded in below.
  r.dx.resize(N * n * C);
  for (size_t i = 0; i < r.dx.size(); ++i) r.dx[i] = double(dx_pre[i]) + double(dx_post[i]);
  r.dx.insert(r.dx.end(), dy.begin(), dy.end());
  r.dx.insert(r.dx.end(), dHp.begin(), dHp.end());
  r.dx.insert(r.dx.end(), dHr.begin(), dHr.end());
  return r;
}

template <typename T>
Result run_gpu(const Inputs& in, const mhc::cuda::Context& ctx) {
  const mhc::Layout l = mhc::layout(in.variant, in.n, in.C);
  const int64_t N = in.N, n = in.n, C = in.C, P = l.proj_per_token, m = l.proj_cols;
  Device<T> x(in.x.size()), phi(in.phi.size()), y(in.y.size()), dh(in.dh.size()), dout(in.dout.size()), h(N * C),
      out(N * n * C), dx_post(N * n * C), dy(N * C), dx_pre(N * n * C);
  Device<float> bias(in.bias.size()), alpha(in.alpha.size()), H_pre(N * n), H_post(N * n), H_res(N * n * n),
      proj(N * P * m), rms(N * P), dHp(N * n), dHr(N * n * n), dH_pre(N * n), dH_post(N * n), dH_res(N * n * n),
      dphi(in.phi.size()), dbias(in.bias.size()), dalpha(in.alpha.size());
  const std::vector<int> table = mhc::kernels::permutation_table(in.variant, in.n);
  Device<int> perms(table.size());
  CUDA_OK(cudaMemcpy(perms.p, table.data(), table.size() * sizeof(int), cudaMemcpyHostToDevice));
  upload(x, in.x), upload(phi, in.phi), upload(y, in.y), upload(dh, in.dh), upload(dout, in.dout);
  upload(bias, in.bias), upload(alpha, in.alpha), upload(dH_pre, in.dH_pre), upload(dH_post, in.dH_post),
      upload(dH_res, in.dH_res);
  Device<char> ws(mhc::cuda::pre_backward_workspace_bytes(in.variant, in.n, C, N, sizeof(T)));
  const mhc::cuda::PreInputs<T> pin{x.p, phi.p, bias.p, alpha.p, table.empty() ? nullptr : perms.p, N, in.n, C, in.variant, in.t};
  mhc::cuda::pre_forward<T>({pin, h.p, H_pre.p, H_post.p, H_res.p, proj.p, rms.p}, ctx);
  mhc::cuda::post_forward<T>(out.p, x.p, y.p, H_post.p, H_res.p, N, in.n, C, ctx);
  mhc::cuda::post_backward<T>(dx_post.p, dy.p, dHp.p, dHr.p, dout.p, x.p, y.p, H_post.p, H_res.p, N, in.n, C, ctx);
  mhc::cuda::pre_backward<T>({pin, proj.p, rms.p, dh.p, dH_pre.p, dH_post.p, dH_res.p, dx_pre.p, dphi.p, dbias.p, dalpha.p, ws.p},
                             ctx);
  CUDA_OK(cudaStreamSynchronize(ctx.stream));
  Result r{download(h), download(H_pre), download(H_post), download(H_res), download(out), {}, download(dphi),
           download(dbias), download(dalpha)};
  const auto a = download(dx_pre), b = download(dx_post);
  r.dx.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) r.dx[i] = a[i] + b[i];
  for (const auto& extra : {download(dy), download(dHp), download(dHr)}) r.dx.insert(r.dx.end(), extra.begin(), extra.end());
  return r;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::abs(e));
  return m;
}
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

void compare(const std::string& label, const char* name, const std::vector<double>& got, const std::vector<double>& want,
             double tolerance) {
  const double err = max_diff(got, want);
  if (!(err <= tolerance) || got.size() != want.size()) {
    std::printf("FAIL %s %s: max error %.3g > tolerance %.3g\n", label.c_str(), name, err, tolerance);
    ++failures;
  }
}

void check_case(Variant variant, int n, int64_t N, int64_t C, int t, const mhc::cuda::Context& ctx) {
  const Inputs in = make_inputs(variant, n, N, C, t, 1234u + n * 7 + unsigned(C));
  const std::string label = std::string(mhc::variant_name(variant)) + " n=" + std::to_string(n) + " C=" + std::to_string(C);
  {  // fp32: against double, with the CPU fp32 kernels' own error setting the scale
    const Result ref = run_cpu<double>(in), cpu32 = run_cpu<float>(in), gpu = run_gpu<float>(in, ctx);
    auto tol = [&](const std::vector<double>& r, const std::vector<double>& c) {
      return 8 * max_diff(c, r) + 64 * FLT_EPSILON * max_abs(r) + FLT_MIN;
    };
#define CMP(f) compare(label + " fp32", #f, gpu.f, ref.f, tol(ref.f, cpu32.f))
    CMP(h), CMP(H_pre), CMP(H_post), CMP(H_res), CMP(out), CMP(dx), CMP(dphi), CMP(dbias), CMP(dalpha);
#undef CMP
  }
  {  // bf16 storage: the reference sees the same rounded inputs
    Inputs r16 = in;
    for (auto* v : {&r16.x, &r16.phi, &r16.y, &r16.dh, &r16.dout}) *v = rounded<__nv_bfloat16>(*v);
    const Result ref = run_cpu<double>(r16), gpu = run_gpu<__nv_bfloat16>(r16, ctx);
    const double u = std::ldexp(1.0, -8);  // bf16 unit roundoff (8 significand bits)
#define CMP(f) compare(label + " bf16", #f, gpu.f, ref.f, 16 * u * max_abs(ref.f) + FLT_MIN)
    CMP(h), CMP(H_pre), CMP(H_post), CMP(H_res), CMP(out), CMP(dx), CMP(dphi), CMP(dbias), CMP(dalpha);
#undef CMP
  }
}

// Doubly stochastic on the GPU as on the CPU: mHC-lite and KromHC exactly (to fp32 rounding), mHC
// rows exactly.
void check_doubly_stochastic(const mhc::cuda::Context& ctx) {
  for (auto [variant, n] : {std::pair{Variant::mhc, 4}, {Variant::mhc_lite, 4}, {Variant::kromhc, 8}, {Variant::kromhc, 6}}) {
    Inputs in = make_inputs(variant, n, 2048, 64, 20, 99);
    for (auto& b : in.bias) b *= 10;  // far from the identity init
    const Result r = run_gpu<float>(in, ctx);
    double row = 0, col = 0, min_entry = 1;
    for (int64_t tok = 0; tok < in.N; ++tok)
      for (int a = 0; a < n; ++a) {
        double rs = 0, cs = 0;
        for (int b = 0; b < n; ++b) {
          rs += r.H_res[tok * n * n + a * n + b];
          cs += r.H_res[tok * n * n + b * n + a];
          min_entry = std::min(min_entry, r.H_res[tok * n * n + a * n + b]);
        }
        row = std::max(row, std::abs(rs - 1)), col = std::max(col, std::abs(cs - 1));
      }
    const bool ok = row <= 1e-6 && min_entry >= 0 && (variant == Variant::mhc || col <= 1e-6);
    std::printf("%s %s: max |row sum - 1| %.2g, max |col sum - 1| %.2g, min entry %.2g\n", ok ? "ok  " : "FAIL",
                mhc::variant_name(variant), row, col, min_entry);
    failures += !ok;
  }
}

template <typename F>
float time_ms(F&& f, cudaStream_t stream, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<float> ms;
  for (int r = 0; r < reps + 2; ++r) {
    cudaEventRecord(a, stream);
    f();
    cudaEventRecord(b, stream);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (r >= 2) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int bench(const mhc::cuda::Context& ctx) {
  using T = __nv_bfloat16;
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  const size_t copy_bytes = size_t(1) << 30;
  Device<char> src(copy_bytes), dst(copy_bytes);
  const float copy_ms = time_ms([&] { cudaMemcpyAsync(dst.p, src.p, copy_bytes, cudaMemcpyDeviceToDevice, ctx.stream); }, ctx.stream, 10);
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  std::printf("device: %s; copy bandwidth %.0f GB/s (read + write)\n", prop.name, copy_gbs);
  std::printf("| C | kernel | ms | GB/s | %% of copy |\n|---|---|---|---|---|\n");
  const int64_t N = 16384;
  const int n = 4;
  for (int64_t C : {1280, 4096}) {
    const mhc::Layout l = mhc::layout(Variant::mhc, n, C);
    const int64_t m = l.proj_cols;
    Device<T> x(N * n * C), phi(l.proj_rows * m), y(N * C), h(N * C), out(N * n * C), dx(N * n * C), dy(N * C), dh(N * C);
    Device<float> bias(l.bias_size), alpha(l.alpha_size), Hp(N * n), Hq(N * n), Hr(N * n * n), proj(N * m), rms(N),
        dHp(N * n), dHr(N * n * n), dphi(l.proj_rows * m), dbias(l.bias_size), dalpha(l.alpha_size);
    Device<char> ws(mhc::cuda::pre_backward_workspace_bytes(Variant::mhc, n, C, N, sizeof(T)));
    CUDA_OK(cudaMemset(x.p, 0, x.n * sizeof(T)));
    CUDA_OK(cudaMemset(phi.p, 0, phi.n * sizeof(T)));
    CUDA_OK(cudaMemset(y.p, 0, y.n * sizeof(T)));
    CUDA_OK(cudaMemset(dh.p, 0, dh.n * sizeof(T)));
    CUDA_OK(cudaMemset(bias.p, 0, bias.n * sizeof(float)));
    CUDA_OK(cudaMemset(alpha.p, 0, alpha.n * sizeof(float)));
    const mhc::cuda::PreInputs<T> pin{x.p, phi.p, bias.p, alpha.p, nullptr, N, n, C, Variant::mhc, 20};
    const double e = sizeof(T) * double(N) * C;  // bytes of one [N, C] activation
    struct Row {
      const char* name;
      double bytes;
      std::function<void()> run;
    };
    const std::vector<Row> rows = {
        {"pre fwd", (n + 1) * e, [&] { mhc::cuda::pre_forward<T>({pin, h.p, Hp.p, Hq.p, Hr.p, proj.p, rms.p}, ctx); }},
        {"post fwd", (2 * n + 1) * e, [&] { mhc::cuda::post_forward<T>(out.p, x.p, y.p, Hq.p, Hr.p, N, n, C, ctx); }},
        {"post bwd", (3 * n + 2) * e,
         [&] { mhc::cuda::post_backward<T>(dx.p, dy.p, dHp.p, dHr.p, out.p, x.p, y.p, Hq.p, Hr.p, N, n, C, ctx); }},
        {"pre bwd", (2 * n + 1) * e, [&] {
           mhc::cuda::pre_backward<T>({pin, proj.p, rms.p, dh.p, nullptr, dHp.p, dHr.p, dx.p, dphi.p, dbias.p, dalpha.p, ws.p}, ctx);
         }}};
    double total_ms = 0, total_bytes = 0;
    for (const auto& r : rows) {
      const float ms = time_ms(r.run, ctx.stream, 20);
      total_ms += ms, total_bytes += r.bytes;
      std::printf("| %lld | %s | %.3f | %.0f | %.0f%% |\n", (long long)C, r.name, ms, r.bytes / (ms * 1e-3) / 1e9,
                  100 * r.bytes / (ms * 1e-3) / 1e9 / copy_gbs);
    }
    std::printf("| %lld | fwd+bwd | %.3f | %.0f | %.0f%% |\n", (long long)C, total_ms, total_bytes / (total_ms * 1e-3) / 1e9,
                100 * total_bytes / (total_ms * 1e-3) / 1e9 / copy_gbs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device on this machine (the CUDA kernels were compiled, not run)\n");
    return 77;
  }
  mhc::cuda::Context ctx{};
  CUDA_OK(cudaStreamCreate(&ctx.stream));
  if (cublasCreate(&ctx.blas) != CUBLAS_STATUS_SUCCESS) return std::printf("cannot create a cuBLAS handle\n"), 1;
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench(ctx);

  for (int64_t C : {13, 64, 100})
    for (auto [variant, n] : {std::pair{Variant::residual, 1}, {Variant::hc, 1}, {Variant::hc, 4}, {Variant::mhc, 1}, {Variant::mhc, 2},
                           {Variant::mhc, 4}, {Variant::mhc, 8}, {Variant::mhc_lite, 2}, {Variant::mhc_lite, 4}, {Variant::mhc_lite, 5},
                           {Variant::kromhc, 2}, {Variant::kromhc, 6}, {Variant::kromhc, 8}, {Variant::ihc, 4},
                           {Variant::mhc_v4, 4}, {Variant::mhc_v4, 8}})
      check_case(variant, n, 37, C, 20, ctx);
  check_case(Variant::mhc, 4, 37, 64, 0, ctx);  // t = 0: H_res = exp(H̃)
  check_case(Variant::mhc, 4, 37, 64, 1, ctx);
  check_case(Variant::mhc, 8, 37, 64, 100, ctx);  // the largest Sinkhorn scratch: fewer tokens per block
  check_case(Variant::mhc, 4, 0, 64, 20, ctx);  // no tokens
  check_doubly_stochastic(ctx);
  std::printf("cuda_kernels: %d failed\n", failures);
  return failures ? 1 : 0;
}

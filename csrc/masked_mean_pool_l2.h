// Fused masked mean-pool + optional projection + L2 normalise over encoder hidden states:
//   out[b] = normalize(W^T * mean_{s: mask[b,s] != 0} hidden[b,s,:] + bias)
// One pass over the hidden states, rows in parallel, run-time ISA dispatch
// (AVX-512 / AVX2 / generic x86-64). Plain C++17, no Python: bindings.cpp wraps it.
#pragma once
#include <cstdint>
#include <string>

namespace postemb {

enum class HiddenType { f32, f16, bf16 };
enum class CpuIsa { generic, avx2, avx512 };

// All strides are in elements (not bytes) and may be any value, negative included.
struct PoolArgs {
  const void* hidden = nullptr;  // (B, S, H) of hidden_type
  HiddenType hidden_type = HiddenType::f32;
  int64_t B = 0, S = 0, H = 0;
  int64_t hidden_stride_b = 0, hidden_stride_s = 0, hidden_stride_h = 1;

  const void* mask = nullptr;  // (B, S) integers of mask_bytes (1, 2, 4 or 8) each; nonzero = token
  int mask_bytes = 8;
  int64_t mask_stride_b = 0, mask_stride_s = 1;

  const float* weight = nullptr;  // (H, D) float32, or nullptr for no projection (then D == H)
  int64_t D = 0;
  int64_t weight_stride_h = 0, weight_stride_d = 1;

  const float* bias = nullptr;  // (D,) float32 or nullptr
  int64_t bias_stride = 1;

  bool normalize = true;  // unit L2 rows (a zero row stays zero) or the raw projected mean
  float* out = nullptr;   // (B, D) float32, C-contiguous
};

// The widest ISA this CPU supports.
CpuIsa best_cpu_isa();

// "auto" -> $POSTEMB_CPU_ISA when set, else best_cpu_isa(); or "generic" | "avx2" | "avx512".
// Throws std::invalid_argument for an unknown name or an ISA this CPU lacks.
CpuIsa resolve_cpu_isa(const std::string& requested);

const char* cpu_isa_name(CpuIsa isa);

// Validates `a` (throws std::invalid_argument naming the field and value) and computes
// out. Sums 8-token blocks in fp32, carries them in double (one pass; reads only the unmasked tokens' B*S_real*H
// elements once). A row without tokens pools to the zero vector (then + bias); never NaN.
// num_threads > 0: that many threads (at most B). num_threads <= 0: pool_threads(bytes read, max_threads).
void masked_mean_pool_l2(const PoolArgs& a, CpuIsa isa, int num_threads = 0, int max_threads = 0);

// The CPUs this process may run on: its affinity mask (taskset, a container's cpuset, a pinned
// worker), not the host's count; std::thread::hardware_concurrency() where there is no mask (not Linux).
int64_t affinity_cpus();

// The threads masked_mean_pool_l2 starts on its own for `bytes` of hidden states read: one per 4 MiB
// (a thread costs ~20-50 us to start), at least 1, at most max_threads when > 0 and at most affinity_cpus().
int64_t pool_threads(int64_t bytes, int64_t max_threads = 0);

}  // namespace postemb

// CPU kernel for masked_mean_pool_l2 (see masked_mean_pool_l2.h).
//
// Layout of the work: rows (b) are handed out to threads in small chunks through one atomic
// counter (rows differ in length, so static splits would idle a thread). Per row, the
// unmasked tokens are summed eight at a time in fp32 and carried in a double accumulator of
// H elements (L1/L2 resident: 3 KiB .. 32 KiB), then mean -> projection (double) -> bias -> L2 norm.
//
// ISA dispatch: the row code below is plain C++ marked always_inline and is inlined into
// three thin entry points compiled with different `target` attributes, so GCC/Clang
// auto-vectorise the same source for baseline x86-64 (SSE2), AVX2+FMA+F16C and AVX-512.
// The only intrinsics are the fp16 -> fp32 converters, which live in their own target
// functions. No -march=native anywhere: the shipped binary runs on any x86-64.
#include "masked_mean_pool_l2.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define POSTEMB_X86 1
#else
#define POSTEMB_X86 0
#endif

#if defined(__GNUC__)
#define POSTEMB_INLINE inline __attribute__((always_inline))
#else
#define POSTEMB_INLINE inline
#endif

namespace postemb {
namespace {

using HalfRow = void (*)(const uint16_t* src, float* dst, int64_t n);  // fp16 -> fp32, contiguous

inline float half_to_float(uint16_t x) {
  const uint32_t sign = static_cast<uint32_t>(x & 0x8000u) << 16;
  const uint32_t exp = (x >> 10) & 0x1fu;
  const uint32_t man = x & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: man * 2^-24
      const float f = std::ldexp(static_cast<float>(man), -24);
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

POSTEMB_INLINE float bf16_to_float(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void half_row_generic(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

#if POSTEMB_X86
__attribute__((target("avx2,fma,f16c"))) void half_row_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}

__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))) void half_row_avx512(
    const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
#endif

POSTEMB_INLINE bool mask_at(const PoolArgs& a, int64_t b, int64_t s) {
  const int64_t i = b * a.mask_stride_b + s * a.mask_stride_s;
  switch (a.mask_bytes) {
    case 1: return static_cast<const uint8_t*>(a.mask)[i] != 0;
    case 2: return static_cast<const uint16_t*>(a.mask)[i] != 0;
    case 4: return static_cast<const uint32_t*>(a.mask)[i] != 0;
    default: return static_cast<const uint64_t*>(a.mask)[i] != 0;
  }
}

// Token (b, s) as H contiguous floats: the hidden states themselves when they already are
// fp32 with unit H-stride (zero copy), else converted/gathered into `tmp` (H floats).
POSTEMB_INLINE const float* token(const PoolArgs& a, int64_t b, int64_t s, float* tmp, HalfRow half_row) {
  const int64_t off = b * a.hidden_stride_b + s * a.hidden_stride_s;
  const int64_t H = a.H, sh = a.hidden_stride_h;
  if (a.hidden_type == HiddenType::f32) {
    const float* p = static_cast<const float*>(a.hidden) + off;
    if (sh == 1) return p;
    for (int64_t h = 0; h < H; ++h) tmp[h] = p[h * sh];
    return tmp;
  }
  const uint16_t* p = static_cast<const uint16_t*>(a.hidden) + off;
  if (a.hidden_type == HiddenType::f16) {
    if (sh == 1) {
      half_row(p, tmp, H);
    } else {
      for (int64_t h = 0; h < H; ++h) tmp[h] = half_to_float(p[h * sh]);
    }
  } else if (sh == 1) {
    for (int64_t h = 0; h < H; ++h) tmp[h] = bf16_to_float(p[h]);
  } else {
    for (int64_t h = 0; h < H; ++h) tmp[h] = bf16_to_float(p[h * sh]);
  }
  return tmp;
}

// Eight tokens summed as a pairwise fp32 tree (error <= 3 ulp of the block's magnitude),
// then added to the double accumulator: one float->double convert per 8 tokens instead of
// per token keeps the loop at load speed, and the double carry keeps long rows exact.
POSTEMB_INLINE void add8(double* __restrict acc, const float* const* t, int64_t H) {
  const float* __restrict t0 = t[0];
  const float* __restrict t1 = t[1];
  const float* __restrict t2 = t[2];
  const float* __restrict t3 = t[3];
  const float* __restrict t4 = t[4];
  const float* __restrict t5 = t[5];
  const float* __restrict t6 = t[6];
  const float* __restrict t7 = t[7];
  for (int64_t h = 0; h < H; ++h)
    acc[h] += static_cast<double>(((t0[h] + t1[h]) + (t2[h] + t3[h])) + ((t4[h] + t5[h]) + (t6[h] + t7[h])));
}

POSTEMB_INLINE void add1(double* __restrict acc, const float* __restrict t0, int64_t H) {
  for (int64_t h = 0; h < H; ++h) acc[h] += static_cast<double>(t0[h]);
}

// Per-thread buffers: acc (H doubles), proj (D doubles), tmp (8*H floats).
struct Scratch {
  std::vector<double> acc, proj;
  std::vector<float> tmp;
  explicit Scratch(const PoolArgs& a)
      : acc(static_cast<size_t>(a.H)), proj(static_cast<size_t>(a.D)), tmp(static_cast<size_t>(8 * a.H)) {}
};

POSTEMB_INLINE void pool_row(const PoolArgs& a, int64_t b, Scratch& sc, HalfRow half_row) {
  const int64_t H = a.H, D = a.D;
  double* __restrict acc = sc.acc.data();
  double* __restrict proj = sc.proj.data();
  std::fill(acc, acc + H, 0.0);
  const float* t[8];
  int n = 0;
  int64_t count = 0;
  for (int64_t s = 0; s < a.S; ++s) {
    if (!mask_at(a, b, s)) continue;
    t[n] = token(a, b, s, sc.tmp.data() + n * H, half_row);
    ++count;
    if (++n == 8) {
      add8(acc, t, H);
      n = 0;
    }
  }
  for (int i = 0; i < n; ++i) add1(acc, t[i], H);

  const double inv = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;  // empty row -> mean 0
  if (a.weight != nullptr) {
    std::fill(proj, proj + D, 0.0);
    const int64_t wd = a.weight_stride_d, wh = a.weight_stride_h;
    int64_t h = 0;
    if (wd == 1) {  // 8 rows of W per sweep over D, summed in fp32, carried in double (as the tokens)
      for (; h + 8 <= H; h += 8) {
        float m[8];
        for (int j = 0; j < 8; ++j) m[j] = static_cast<float>(acc[h + j] * inv);
        const float* __restrict w0 = a.weight + h * wh;
        const float* __restrict w1 = w0 + wh;
        const float* __restrict w2 = w1 + wh;
        const float* __restrict w3 = w2 + wh;
        const float* __restrict w4 = w3 + wh;
        const float* __restrict w5 = w4 + wh;
        const float* __restrict w6 = w5 + wh;
        const float* __restrict w7 = w6 + wh;
        for (int64_t d = 0; d < D; ++d)
          proj[d] += static_cast<double>(((m[0] * w0[d] + m[1] * w1[d]) + (m[2] * w2[d] + m[3] * w3[d])) +
                                         ((m[4] * w4[d] + m[5] * w5[d]) + (m[6] * w6[d] + m[7] * w7[d])));
      }
    }
    for (; h < H; ++h) {
      const double m = acc[h] * inv;
      const float* __restrict w = a.weight + h * wh;
      if (wd == 1) {
        for (int64_t d = 0; d < D; ++d) proj[d] += m * static_cast<double>(w[d]);
      } else {
        for (int64_t d = 0; d < D; ++d) proj[d] += m * static_cast<double>(w[d * wd]);
      }
    }
  } else {
    for (int64_t h = 0; h < H; ++h) proj[h] = acc[h] * inv;
  }
  if (a.bias != nullptr)
    for (int64_t d = 0; d < D; ++d) proj[d] += static_cast<double>(a.bias[d * a.bias_stride]);
  double scale = 1.0;
  if (a.normalize) {
    double ss = 0.0;
    for (int64_t d = 0; d < D; ++d) ss += proj[d] * proj[d];
    scale = 1.0 / std::max(std::sqrt(ss), 1e-12);  // as torch.nn.functional.normalize(eps=1e-12)
  }
  float* out = a.out + b * D;
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<float>(proj[d] * scale);
}

using RowsFn = void (*)(const PoolArgs&, int64_t, int64_t, Scratch&);

void rows_generic(const PoolArgs& a, int64_t b0, int64_t b1, Scratch& sc) {
  for (int64_t b = b0; b < b1; ++b) pool_row(a, b, sc, half_row_generic);
}

#if POSTEMB_X86
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const PoolArgs& a, int64_t b0, int64_t b1, Scratch& sc) {
  for (int64_t b = b0; b < b1; ++b) pool_row(a, b, sc, half_row_avx2);
}

__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,prefer-vector-width=512"))) void rows_avx512(
    const PoolArgs& a, int64_t b0, int64_t b1, Scratch& sc) {
  for (int64_t b = b0; b < b1; ++b) pool_row(a, b, sc, half_row_avx512);
}
#endif

RowsFn rows_fn(CpuIsa isa) {
#if POSTEMB_X86
  if (isa == CpuIsa::avx512) return rows_avx512;
  if (isa == CpuIsa::avx2) return rows_avx2;
#endif
  (void)isa;
  return rows_generic;
}

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(what); }

void validate(const PoolArgs& a) {
  auto num = [](int64_t v) { return std::to_string(v); };
  if (a.B < 0 || a.S < 0 || a.H < 1)
    bad("`hidden` must have shape (B, S, H) with H >= 1. Given: (" + num(a.B) + ", " + num(a.S) + ", " + num(a.H) + ").");
  if (a.D < 1) bad("`D` must be >= 1. Given: " + num(a.D) + ".");
  if (a.weight == nullptr && a.D != a.H)
    bad("without `weight` the output width D must equal H (" + num(a.H) + "). Given: " + num(a.D) + ".");
  if (a.mask_bytes != 1 && a.mask_bytes != 2 && a.mask_bytes != 4 && a.mask_bytes != 8)
    bad("`mask` elements must be 1, 2, 4 or 8 bytes wide. Given: " + num(a.mask_bytes) + ".");
  if (a.B > 0 && a.S > 0 && (a.hidden == nullptr || a.mask == nullptr))
    bad("`hidden` and `mask` must not be null for a non-empty batch.");
  if (a.B > 0 && a.out == nullptr) bad("`out` must not be null for a non-empty batch.");
}

}  // namespace

CpuIsa best_cpu_isa() {
#if POSTEMB_X86 && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return CpuIsa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::avx2;
#endif
  return CpuIsa::generic;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "generic";
  }
}

CpuIsa resolve_cpu_isa(const std::string& requested) {
  std::string name = requested;
  std::string source = "`isa`";
  if (name.empty() || name == "auto") {
    const char* env = std::getenv("POSTEMB_CPU_ISA");
    if (env == nullptr || *env == '\0' || std::string(env) == "auto") return best_cpu_isa();
    name = env;
    source = "POSTEMB_CPU_ISA";
  }
  CpuIsa want;
  if (name == "generic") {
    want = CpuIsa::generic;
  } else if (name == "avx2") {
    want = CpuIsa::avx2;
  } else if (name == "avx512") {
    want = CpuIsa::avx512;
  } else {
    bad(source + " must be one of auto, generic, avx2, avx512. Given: '" + name + "'.");
  }
  const CpuIsa best = best_cpu_isa();
  if (static_cast<int>(want) > static_cast<int>(best))
    bad(source + " '" + name + "' is not supported by this CPU (best: " + cpu_isa_name(best) + ").");
  return want;
}

int64_t affinity_cpus() {
#if defined(__linux__)
  // The mask must be as wide as the kernel's (EINVAL otherwise): the fixed cpu_set_t holds 1024 CPUs.
  for (int max_cpus = 1024; max_cpus <= (1 << 20); max_cpus *= 4) {
    cpu_set_t* set = CPU_ALLOC(max_cpus);
    if (set == nullptr) break;
    const size_t size = CPU_ALLOC_SIZE(max_cpus);
    CPU_ZERO_S(size, set);
    const int rc = sched_getaffinity(0, size, set);
    const int n = rc == 0 ? CPU_COUNT_S(size, set) : 0;
    CPU_FREE(set);
    if (n > 0) return n;
    if (rc != 0 && errno != EINVAL) break;
  }
#endif
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

int64_t pool_threads(int64_t bytes, int64_t max_threads) {
  const int64_t want = std::max<int64_t>(1, bytes >> 22);  // >= 4 MiB read per thread
  if (want == 1) return 1;                                  // no syscall for the common small batch
  const int64_t cap = max_threads > 0 ? std::min(max_threads, affinity_cpus()) : affinity_cpus();
  return std::min(want, cap);
}

void masked_mean_pool_l2(const PoolArgs& a, CpuIsa isa, int num_threads, int max_threads) {
  validate(a);
  if (a.B == 0) return;
  const RowsFn rows = rows_fn(isa);
  int64_t threads = num_threads;
  if (threads <= 0) {
    // A thread costs ~20-50 us to start and contends with whatever else runs (e.g. an
    // inference runtime's spinning workers right after a batch): give each >= 4 MiB of
    // hidden states actually read (unmasked tokens; the mask scan is B*S reads), and never more
    // than the CPUs this process may use (its affinity mask, and max_threads: the caller's share).
    int64_t tokens = 0;
    for (int64_t b = 0; b < a.B; ++b)
      for (int64_t s = 0; s < a.S; ++s) tokens += mask_at(a, b, s);
    threads = pool_threads(tokens * a.H * (a.hidden_type == HiddenType::f32 ? 4 : 2), max_threads);
  }
  threads = std::min<int64_t>(threads, a.B);
  if (threads <= 1) {
    Scratch sc(a);
    rows(a, 0, a.B, sc);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, a.B / (threads * 8));
  std::atomic<int64_t> next{0};
  std::vector<Scratch> scratch;  // allocated up front: the workers never throw
  scratch.reserve(static_cast<size_t>(threads));
  for (int64_t i = 0; i < threads; ++i) scratch.emplace_back(a);
  auto work = [&](int64_t i) {
    for (;;) {
      const int64_t b0 = next.fetch_add(chunk);
      if (b0 >= a.B) return;
      rows(a, b0, std::min(a.B, b0 + chunk), scratch[static_cast<size_t>(i)]);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t i = 1; i < threads; ++i) {
    try {
      pool.emplace_back(work, i);
    } catch (const std::system_error&) {  // cannot start more threads: the started ones share the rows
      break;
    }
  }
  work(0);
  for (auto& th : pool) th.join();
}

}  // namespace postemb

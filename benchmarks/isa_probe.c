/* Micro-probes for the theoretical peak in benchmarks/ceilings.py (compiled there at run time
 * with the system C compiler; not part of the runtime or its build).
 *
 * add_chain(iters): 16 * iters dependent integer adds (1 cycle latency each on every x86
 *   core of the last decade), so cycles = 16 * iters and clock = 16 * iters / seconds.
 * zmm_fma(iters), zmm_dpbf16(iters), zmm_dpbusd(iters): 12 * iters 512-bit vfmadd231ps /
 *   vdpbf16ps / vpdpbusd on 12 independent accumulators (enough to cover a 4-6 cycle
 *   latency on two pipes), so instructions per cycle = 12 * iters / (seconds * clock).
 *   That is the number of 512-bit pipes (1 on a core that splits a zmm op over two 256-bit
 *   halves, 2 on a full-width one); a VM's cpuid does not say which core it is.
 * Each returns a value derived from its accumulators so that nothing is optimised away.
 */
#include <immintrin.h>
#include <stdint.h>

long add_chain(long iters) {
    long x = 0;
    for (long i = 0; i < iters; ++i) {
        __asm__ volatile(
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            : "+r"(x));
    }
    return x;
}

/* One probe: 12 accumulators of type T (INIT(k)), each updated per iteration by the 512-bit
 * instruction INSN reading the constant registers b and c; returns REDUCE of their sum. */
#define DECL(k, T, INIT) T a##k = INIT(k);
#define STEP(k, INSN) __asm__ volatile(INSN " %2, %1, %0" : "+v"(a##k) : "v"(b), "v"(c));
#define EACH(X, ...) X(0, __VA_ARGS__) X(1, __VA_ARGS__) X(2, __VA_ARGS__) X(3, __VA_ARGS__) \
    X(4, __VA_ARGS__) X(5, __VA_ARGS__) X(6, __VA_ARGS__) X(7, __VA_ARGS__) X(8, __VA_ARGS__) \
    X(9, __VA_ARGS__) X(10, __VA_ARGS__) X(11, __VA_ARGS__)
#define PROBE(NAME, TARGET, T, INIT, B, C, INSN, ADD, REDUCE)                                   \
    __attribute__((target(TARGET))) double NAME(long iters) {                               \
        const __m512i b = B, c = C;                                                        \
        EACH(DECL, T, INIT)                                                                \
        for (long i = 0; i < iters; ++i) {                                                 \
            EACH(STEP, INSN)                                                               \
        }                                                                                  \
        return (double)REDUCE(ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))), \
                                  ADD(ADD(a8, a9), ADD(a10, a11))));                        \
    }

#define INIT_PS(k) _mm512_set1_ps((float)(k))
#define INIT_EPI32(k) _mm512_set1_epi32(k)

PROBE(zmm_fma, "avx512f", __m512, INIT_PS, _mm512_castps_si512(_mm512_set1_ps(0.999f)),
      _mm512_castps_si512(_mm512_set1_ps(1e-7f)), "vfmadd231ps", _mm512_add_ps, _mm512_reduce_add_ps)
/* bf16 pairs 1.0 x ~6e-8 */
PROBE(zmm_dpbf16, "avx512f,avx512bf16", __m512, INIT_PS, _mm512_set1_epi16(0x3f80), _mm512_set1_epi16(0x3380),
      "vdpbf16ps", _mm512_add_ps, _mm512_reduce_add_ps)
PROBE(zmm_dpbusd, "avx512f,avx512vnni", __m512i, INIT_EPI32, _mm512_set1_epi8(1), _mm512_set1_epi8(1), "vpdpbusd",
      _mm512_add_epi32, _mm512_reduce_add_epi32)

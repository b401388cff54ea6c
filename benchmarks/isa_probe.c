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

#define ACC12(DECL) DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5) DECL(6) DECL(7) DECL(8) DECL(9) DECL(10) DECL(11)

__attribute__((target("avx512f"))) double zmm_fma(long iters) {
    __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-7f);
#define D(k) __m512 a##k = _mm512_set1_ps((float)(k));
    ACC12(D)
#undef D
    for (long i = 0; i < iters; ++i) {
#define F(k) __asm__ volatile("vfmadd231ps %2, %1, %0" : "+v"(a##k) : "v"(b), "v"(c));
        ACC12(F)
#undef F
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return (double)_mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"))) double zmm_dpbf16(long iters) {
    __m512i b = _mm512_set1_epi16(0x3f80), c = _mm512_set1_epi16(0x3380); /* bf16 1.0, ~6e-8 */
#define D(k) __m512 a##k = _mm512_set1_ps((float)(k));
    ACC12(D)
#undef D
    for (long i = 0; i < iters; ++i) {
#define F(k) __asm__ volatile("vdpbf16ps %2, %1, %0" : "+v"(a##k) : "v"(b), "v"(c));
        ACC12(F)
#undef F
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return (double)_mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512vnni"))) double zmm_dpbusd(long iters) {
    __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(1);
#define D(k) __m512i a##k = _mm512_set1_epi32(k);
    ACC12(D)
#undef D
    for (long i = 0; i < iters; ++i) {
#define F(k) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(a##k) : "v"(b), "v"(c));
        ACC12(F)
#undef F
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    return (double)_mm512_reduce_add_epi32(s);
}

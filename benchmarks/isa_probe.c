/* Micro-probes for the theoretical peak in benchmarks/ceilings.py (compiled there at run time
 * with the system C compiler; not part of the runtime or its build).
 *
 * alu_chain(iters, y, z): 16 * iters dependent register-register ALU ops (add y, x then xor z, x,
 *   alternating), so cycles = 16 * iters and clock = 16 * iters / seconds. Why this chain:
 *   - `add $imm, reg` (and inc/dec/sub by a small constant, mov of a small immediate) is executed
 *     in the renamer at zero latency on Intel Golden Cove and later P-cores (Alder Lake, Sapphire
 *     Rapids, ...): a dependent chain of them runs at ~5 per cycle (uops.info INC_R64/ADD_R64_I8
 *     on ADL-P; tavianator.com/2025/shlxplained.html; Peter Cordes on Stack Overflow, answer to
 *     question 79363816: "It's only for add-immediate, not add rax, rcx"). The old add $1 chain
 *     measured 18.6 GHz on such a Xeon (issue 27).
 *   - reg-reg `mov` is eliminated at rename on Intel since Ivy Bridge and AMD since Zen (zero
 *     latency), and `xor r, r` / `sub r, r` on the same register are dependency-breaking idioms.
 *   - `add r1, r2` and `xor r1, r2` with two different registers need the ALU: their result depends
 *     on two run-time values, which no renamer tracks, and their latency is 1 cycle on every x86
 *     core of the last two decades (Agner Fog's instruction tables; uops.info). Alternating the two
 *     also rules out any add-chain folding a future core might learn.
 *   y and z come from the caller at run time, so nothing is a compile-time constant.
 *   ceilings.py cross-checks the result (alu_chain_cycles, the TSC, /proc/cpuinfo).
 * alu_chain_cycles(iters, y, z): the same chain, counted by the kernel's core-cycle counter
 *   (perf_event_open, user mode, this thread): the cycles it really took, or -1 where there is no
 *   counter (most VMs; perf_event_paranoid > 2).
 * tsc(): the time-stamp counter (runs at a constant rate, about the nominal clock, on CPUs with
 *   constant_tsc; ceilings.py times it against the wall clock).
 * zmm_fma(iters), zmm_dpbf16(iters), zmm_dpbusd(iters): 12 * iters 512-bit vfmadd231ps /
 *   vdpbf16ps / vpdpbusd on 12 independent accumulators (enough to cover a 4-6 cycle
 *   latency on two pipes), so instructions per cycle = 12 * iters / (seconds * clock).
 *   That is the number of 512-bit pipes (1 on a core that splits a zmm op over two 256-bit
 *   halves, 2 on a full-width one); a VM's cpuid does not say which core it is.
 * Each returns a value derived from its accumulators so that nothing is optimised away.
 */
#include <immintrin.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#define ALU2 "add %1, %0\n\txor %2, %0\n\t"
long alu_chain(long iters, long y, long z) {
    long x = iters;
    for (long i = 0; i < iters; ++i) {
        __asm__ volatile(ALU2 ALU2 ALU2 ALU2 ALU2 ALU2 ALU2 ALU2 : "+r"(x) : "r"(y), "r"(z));
    }
    return x;
}

long long alu_chain_cycles(long iters, long y, long z) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_HARDWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_HW_CPU_CYCLES;
    attr.disabled = 1;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    int fd = (int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    if (fd < 0) return -1;
    long long count = -1;
    if (ioctl(fd, PERF_EVENT_IOC_RESET, 0) == 0 && ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) == 0) {
        alu_chain(iters, y, z);
        ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
        if (read(fd, &count, sizeof count) != (ssize_t)sizeof count) count = -1;
    }
    close(fd);
    return count;
}

unsigned long long tsc(void) { return __rdtsc(); }

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
/* bf16 pairs 1.0 x ~6e-8. Left out with -DPOSTEMB_NO_BF16_PROBE: an assembler before binutils 2.33 (or GCC
 * before 9) cannot build it, and ceilings.py then builds the rest without it. */
#ifndef POSTEMB_NO_BF16_PROBE
PROBE(zmm_dpbf16, "avx512f,avx512bf16", __m512, INIT_PS, _mm512_set1_epi16(0x3f80), _mm512_set1_epi16(0x3380),
      "vdpbf16ps", _mm512_add_ps, _mm512_reduce_add_ps)
#endif
PROBE(zmm_dpbusd, "avx512f,avx512vnni", __m512i, INIT_EPI32, _mm512_set1_epi8(1), _mm512_set1_epi8(1), "vpdpbusd",
      _mm512_add_epi32, _mm512_reduce_add_epi32)

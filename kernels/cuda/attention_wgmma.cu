// The attention target on Hopper's warpgroup MMA (sm_90a wgmma): bf16 and TF32 for head sizes 64
// and 128. Same algorithm and numbers as the mma.sync kernel of kernels/cuda/attention_tc.cu
// (flash attention, online softmax on the accumulators, keys split over CTAs where the query tiles
// alone do not fill the GPU), but each warpgroup multiplies 64 query rows by a whole key tile per
// instruction, with K and V read by the tensor cores straight from shared memory: no ldmatrix, no
// per-warp fragment loads. The products are asynchronous: while this tile's softmax runs on the
// other units, the tensor cores finish the previous tile's P V and compute the next tile's
// S = Q K^T (two S and two P register tiles; O is rescaled only once the previous P V is done),
// and this tile's P V runs on into the next step. Two warpgroups share each K/V tile (128 query
// rows per CTA).
//
// Shared memory holds kStages (K tile, V tile) pairs of 64 keys, bf16, in the 128-byte swizzled
// layout the tensor cores read: a tile is D / 64 column blocks of 64 elements (128 bytes) per key,
// and in each block the 16-byte chunk c of key r sits at chunk c ^ (r % 8), so the 8 keys of one
// 1024-byte atom spread every column over all banks. K is the B operand of S = Q K^T "K-major"
// (the head dimension is the reduction, contiguous); V is the B operand of O += P V "MN-major"
// (the keys are the reduction, the head dimension contiguous: the transposed read). Q and P are
// A operands from registers, in the fragment layout of mma.sync (attention_fragments.cuh).
//
// TF32 reads both operands K-major and cannot transpose: K tiles are laid out as bf16's (a key is
// D floats, D / 32 column blocks of 128 bytes), and V comes transposed, (D, keys) with the keys
// contiguous, from transpose_v_tf32_kernel (once a call, into scratch), its 8-key groups in the
// order in which P's accumulators are the A fragments (p_fragment_tf32). The tensor cores read K
// truncated to TF32; q, P and V are rounded to nearest, as in the mma.sync kernel.
//
// Float32 math (kSplit): each operand is split into a TF32 part and a TF32 remainder,
// x = hi + lo, and every product is three, a b ~ a_lo b_hi + a_hi b_lo + a_hi b_hi (the lo lo
// term is below float32's rounding): about float32's accuracy at three times TF32's products,
// which on Hopper's tensor cores is still several times the FFMA kernel's rate. K's and V^T's
// parts are written side by side into scratch first (split_k_tf32_kernel, transpose_v_tf32_kernel),
// (bh, 2, seq, d) and (bh, 2, d, seq_pad), and a stage holds both parts of both tiles; at d = 64
// q's and P's parts are registers (d = 128 keeps q in shared memory: attention_split128_kernel).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_fragments.cuh"
#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

// The wgmma instructions exist in the arch-specific sm_90a target only; elsewhere the kernel is an
// empty shell that is never launched (attention_wgmma_available() says false).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KVC_WGMMA_DEVICE 1
#endif

namespace kvc::kernels::cuda {

namespace {

using namespace attention_detail;

constexpr int kWarpgroups = 2;
constexpr int kThreadsWg = 128 * kWarpgroups;
constexpr int kStages = 5;             // (K, V) tile pairs in shared memory (see the main loop)
constexpr int kBQ = 64 * kWarpgroups;  // query rows per CTA
constexpr int kVtPad = 64;             // TF32's V^T rows are padded to a multiple of this many keys

__host__ __device__ inline int64_t vt_seq_pad(int64_t seq) {
  return (seq + kVtPad - 1) / kVtPad * kVtPad;
}

// E: the operand bits in shared memory, uint16_t (bf16) or float (TF32). K tiles are kBN keys of
// D elements; bf16 V tiles likewise (read transposed), TF32 V^T tiles D rows of kBN keys. Tiles
// are 64 keys, but 32 for TF32 at d = 128, whose 64-key (K, V^T) pair (64 KiB) would leave room
// for three stages only, and for split TF32 (kParts 2: a stage is K's two parts, then V^T's).
template <typename E, int D, bool kSplit = false>
struct WgLayout {
  static constexpr bool kTf32 = std::is_same_v<E, float>;
  static_assert(!kSplit || kTf32, "split operands are TF32's");
  static constexpr int kParts = kSplit ? 2 : 1;
  static constexpr int kBN = kTf32 && (D == 128 || kSplit) ? 32 : 64;     // keys per tile
  static constexpr int kKBlocks = D * static_cast<int>(sizeof(E)) / 128;  // column blocks a key
  static constexpr int kKBlockBytes = kBN * 128;  // one column block of a K tile
  static constexpr int kKTileBytes = kKBlocks * kKBlockBytes;
  static constexpr int kVBlockBytes = kTf32 ? D * 128 : kKBlockBytes;  // V^T: D rows of 32 keys
  static constexpr int kVTileBytes = kTf32 ? kBN * 4 / 128 * kVBlockBytes : kKTileBytes;
  static constexpr int kVOffset = kParts * kKTileBytes;  // V's first part in a stage
  static constexpr int kStageBytes = kParts * (kKTileBytes + kVTileBytes);
  static constexpr int kKStep = kTf32 ? 8 : 16;  // k of one product: 32 bytes of an operand row
  static constexpr int kPSteps = kBN / kKStep;   // k-steps of P V over a tile
  static constexpr int kSTiles = kBN / 8;        // 8-key column tiles of S
  static constexpr size_t kBytes = kStages * kStageBytes + 1024;  // + slack to align to 1024
};

#ifdef KVC_WGMMA_DEVICE
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (all in 16-byte units), layout type 1 in bits 62-63.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lead_bytes,
                                               uint32_t stride_bytes) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         static_cast<uint64_t>(lead_bytes >> 4) << 16 |
         static_cast<uint64_t>(stride_bytes >> 4) << 32 | uint64_t{1} << 62;
}

// Where k-step kk (32 bytes of every row) of a K-major swizzled tile whose column blocks are
// block_bytes apart starts: block kk / 4, 32 (kk % 4) bytes in.
__device__ __forceinline__ uint32_t kmajor_step(uint32_t block_bytes, int kk) {
  return (kk / 4) * block_bytes + (kk % 4) * 32;
}

// The descriptor of k-step kk of a K-major swizzled tile at `tile` (kmajor_step).
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t tile, uint32_t block_bytes, int kk) {
  return sw128_desc(tile + kmajor_step(block_bytes, kk), 16, 1024);
}

// The descriptor `bytes` further on: the start address sits in the low 14 bits (16-byte units),
// and no offset inside shared memory carries out of them, so one 32-bit add does.
__device__ __forceinline__ uint64_t desc_plus(uint64_t desc, uint32_t bytes) {
  uint32_t lo, hi;
  asm("mov.b64 {%0, %1}, %2;\n" : "=r"(lo), "=r"(hi) : "l"(desc));
  uint64_t r;
  asm("mov.b64 %0, {%1, %2};\n" : "=l"(r) : "r"(lo + (bytes >> 4)), "r"(hi));
  return r;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Marks registers an asynchronous wgmma reads or writes as used here, after its wgmma_wait. The
// compiler sees no dependence of registers on the wait: without this it may move reads of the
// accumulators above the wait, or hand an A fragment's registers to other values while the tensor
// cores still read them.
template <int kTiles>
__device__ __forceinline__ void fence_registers(float (&d)[kTiles][4]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
  }
}
template <int kTiles>
__device__ __forceinline__ void fence_registers(uint32_t (&a)[kTiles][4]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    asm volatile("" : "+r"(a[j][0]), "+r"(a[j][1]), "+r"(a[j][2]), "+r"(a[j][3])::"memory");
  }
}

template <int kParts, int kTiles>
__device__ __forceinline__ void fence_parts(uint32_t (&a)[kParts][kTiles][4]) {
#pragma unroll
  for (int part = 0; part < kParts; ++part) fence_registers(a[part]);
}

// o = o corr + pv over a warp's accumulator tiles (rows g take corr[0], rows g + 8 corr[1]): the
// running output rescaled to the new row maxima plus a tile's P V, summed apart, in float32.
template <int kTiles>
__device__ __forceinline__ void add_rescaled(float (&o)[kTiles][4], const float (&pv)[kTiles][4],
                                             const float (&corr)[2]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    o[j][0] = fmaf(o[j][0], corr[0], pv[j][0]);
    o[j][1] = fmaf(o[j][1], corr[0], pv[j][1]);
    o[j][2] = fmaf(o[j][2], corr[1], pv[j][2]);
    o[j][3] = fmaf(o[j][3], corr[1], pv[j][3]);
  }
}

// Barrier `id` (1..15; 0 is __syncthreads') for `threads` threads, a multiple of 32.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Orders this thread's generic-proxy writes to shared memory (cp.async) before the tensor cores'
// async-proxy reads of it.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The operand text the products below share: the asm outputs of the accumulator tiles d[j], and
// the first 32 operand numbers.
#define KVC_WG_TILE(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define KVC_WG_ACC(a, b, c, e, f, g, h, i)                                                        \
  KVC_WG_TILE(a), KVC_WG_TILE(b), KVC_WG_TILE(c), KVC_WG_TILE(e), KVC_WG_TILE(f), KVC_WG_TILE(g), \
      KVC_WG_TILE(h), KVC_WG_TILE(i)
#define KVC_WG_REGS_0_31                                                                       \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"

// d (+)= a b for the warpgroup's 64 x N tile: a from registers (per warp 16 rows, mma.sync's A
// layout), b (16 x N) by descriptor, kTransB = 1 for an MN-major b. accumulate = 0 overwrites d.
template <int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[8][4], const uint32_t (&a)[4],
                                                uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" KVC_WG_REGS_0_31
      "}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : KVC_WG_ACC(0, 1, 2, 3, 4, 5, 6, 7)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate), "n"(kTransB));
}

// The TF32 forms (k8, both operands K-major: no transpose), N = 32, 64 or 128 by the size of d:
// a as mma.sync's TF32 A fragment.
__device__ __forceinline__ void wgmma_tf32(float (&d)[4][4], const uint32_t (&a)[4],
                                           uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1;\n}\n"
      : KVC_WG_TILE(0), KVC_WG_TILE(1), KVC_WG_TILE(2), KVC_WG_TILE(3)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_tf32(float (&d)[8][4], const uint32_t (&a)[4],
                                           uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {" KVC_WG_REGS_0_31
      "}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
      : KVC_WG_ACC(0, 1, 2, 3, 4, 5, 6, 7)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate));
}
__device__ __forceinline__ void wgmma_tf32(float (&d)[16][4], const uint32_t (&a)[4],
                                           uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 {" KVC_WG_REGS_0_31
      ", "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
      : KVC_WG_ACC(0, 1, 2, 3, 4, 5, 6, 7), KVC_WG_ACC(8, 9, 10, 11, 12, 13, 14, 15)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate));
}

// d = a b, the first product of a fresh accumulator (scale-d 0), for the split kernels' fresh
// sums: d is an output only, so the compiler need not keep the registers' old values alive
// (the forms above read d whatever `accumulate` says).
#define KVC_WG_OUT(j) "=f"(d[j][0]), "=f"(d[j][1]), "=f"(d[j][2]), "=f"(d[j][3])
__device__ __forceinline__ void wgmma_tf32_fresh(float (&d)[4][4], const uint32_t (&a)[4],
                                                 uint64_t b_desc) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, 0, 1, 1;\n"
      : KVC_WG_OUT(0), KVC_WG_OUT(1), KVC_WG_OUT(2), KVC_WG_OUT(3)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}
__device__ __forceinline__ void wgmma_tf32_fresh(float (&d)[16][4], const uint32_t (&a)[4],
                                                 uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 {" KVC_WG_REGS_0_31
               ", "
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
               "{%64, %65, %66, %67}, %68, 0, 1, 1;\n"
               : KVC_WG_OUT(0), KVC_WG_OUT(1), KVC_WG_OUT(2), KVC_WG_OUT(3), KVC_WG_OUT(4),
                 KVC_WG_OUT(5), KVC_WG_OUT(6), KVC_WG_OUT(7), KVC_WG_OUT(8), KVC_WG_OUT(9),
                 KVC_WG_OUT(10), KVC_WG_OUT(11), KVC_WG_OUT(12), KVC_WG_OUT(13), KVC_WG_OUT(14),
                 KVC_WG_OUT(15)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}
#undef KVC_WG_OUT

template <int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[16][4], const uint32_t (&a)[4],
                                                 uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KVC_WG_REGS_0_31
      ", "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : KVC_WG_ACC(0, 1, 2, 3, 4, 5, 6, 7), KVC_WG_ACC(8, 9, 10, 11, 12, 13, 14, 15)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate), "n"(kTransB));
}
#undef KVC_WG_TILE
#undef KVC_WG_ACC
#undef KVC_WG_REGS_0_31
#endif

// kRows rows of kRowElems elements of E, row r at src + r * ld, into a swizzled tile (layout
// above): each row's 128-byte pieces in column blocks kBlockBytes apart. Rows at or past
// `valid_rows` are zero (a key past the end has P zero, and 0 * garbage could be NaN). The K and
// V tiles are kBN keys of D elements; TF32's V^T tile (transpose_v_tf32) is D rows of kBN keys,
// every row valid (its padding holds zeros). Thread tid copies chunk tid % kChunks of rows
// tid / kChunks + n kRowStep: kRowStep is a multiple of 8, so every copy of a thread has the same
// swizzle, and its addresses are one base and constant offsets. A whole tile (every tile of a
// split but perhaps its last) takes no per-row test at all.
template <typename E, int kRows, int kRowElems, int kBlockBytes>
__device__ __forceinline__ void load_tile_sw128(unsigned char* tile, const E* src, int64_t ld,
                                                int valid_rows, int tid) {
  constexpr int kPerChunk = 16 / static_cast<int>(sizeof(E));  // elements per 16-byte chunk
  constexpr int kChunks = kRowElems / kPerChunk;               // chunks per row
  constexpr int kRowStep = kThreadsWg / kChunks;               // rows between a thread's copies
  static_assert(kThreadsWg % kChunks == 0 && kRowStep % 8 == 0 && kRows % kRowStep == 0,
                "a thread's copies share a column chunk and a swizzle");
  const int c = tid % kChunks, r0 = tid / kChunks;
  unsigned char* to = tile + (c / 8) * kBlockBytes + r0 * 128 + (((c % 8) ^ (r0 & 7)) << 4);
  const E* from = src + r0 * ld + c * kPerChunk;
  if (valid_rows >= kRows) {
#pragma unroll
    for (int n = 0; n < kRows / kRowStep; ++n) {
      cp_async16(reinterpret_cast<float*>(to + n * kRowStep * 128),
                 reinterpret_cast<const float*>(from + n * kRowStep * ld), true);
    }
    return;
  }
#pragma unroll
  for (int n = 0; n < kRows / kRowStep; ++n) {
    const bool valid = r0 + n * kRowStep < valid_rows;
    cp_async16(reinterpret_cast<float*>(to + n * kRowStep * 128),
               reinterpret_cast<const float*>(valid ? from + n * kRowStep * ld : src), valid);
  }
}

// Where a CTA of the warpgroup kernels works: its shared memory aligned to 1024 bytes (the swizzle
// atoms need it), its batch-head, first query row, and the keys it reads (its split of the
// sequence, cut where the mask hides every later key from all its rows).
struct WgCta {
  unsigned char* smem;
  uint32_t smem_addr;  // smem in the shared window, for the wgmma descriptors
  int64_t bh;
  int tile_row0, kbeg, kend;
};

template <bool kMasked>
__device__ __forceinline__ WgCta wg_cta(float4* smem4, int nq, int seq, int q_tiles, int split_len,
                                        const int32_t* visible) {
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem4));
  WgCta c;
  c.smem_addr = (raw + 1023) & ~1023u;
  c.smem = reinterpret_cast<unsigned char*>(smem4) + (c.smem_addr - raw);
  c.bh = blockIdx.x / q_tiles;
  c.tile_row0 = (blockIdx.x % q_tiles) * kBQ;
  c.kbeg = blockIdx.y * split_len;
  c.kend = min(seq, c.kbeg + split_len);
  if constexpr (kMasked) {
    c.kend = max(c.kbeg, min(c.kend, cta_key_limit(visible, c.bh, c.tile_row0, kBQ, nq)));
  }
  return c;
}

// One CTA per (batch-head, kBQ queries, key split); warp w holds query rows 16 w.. of the CTA's
// tile (warpgroup w / 4 the rows 64 (w / 4)..). Scores in log2 units, as in attention_tc.cu.
// E = uint16_t: bf16 K and V, (bh, seq, D). E = float: TF32 (bits of float32, which the tensor
// cores read truncated) K (bh, seq, D) and V^T (bh, D, seq_pad) from transpose_v_tf32; with
// kSplit both parts of each, K (bh, 2, seq, D) and V^T (bh, 2, D, seq_pad), already rounded.
template <typename E, int D, bool kMasked, bool kSplit = false>
__global__ void __launch_bounds__(kThreadsWg)
    attention_wgmma_kernel(const float* __restrict__ q, const E* __restrict__ k,
                           const E* __restrict__ v, KvHeads heads, AttentionDest dst, int nq,
                           int seq, int q_tiles, int split_len, float scale_log2,
                           const int32_t* __restrict__ visible) {
#ifdef KVC_WGMMA_DEVICE
  using L = WgLayout<E, D, kSplit>;
  constexpr int kParts = L::kParts;
  // (Sizes in the lambdas' parameter types are L's members: local constants that depend on the
  // template parameters crash cicc there.)
  constexpr int kBN = L::kBN;
  constexpr int kOTiles = D / 8;  // 8-wide column tiles of O
  extern __shared__ float4 smem4[];
  const WgCta cta = wg_cta<kMasked>(smem4, nq, seq, q_tiles, split_len, visible);
  unsigned char* const smem = cta.smem;
  const uint32_t base = cta.smem_addr;
  const int64_t bh = cta.bh;
  const int tile_row0 = cta.tile_row0, kbeg = cta.kbeg, kend = cta.kend;

  const int tid = threadIdx.x, warp = tid >> 5;
  const int row0 = tile_row0 + warp * 16;
  const int64_t seq_pad = vt_seq_pad(seq);  // V^T's row length (TF32)
  const int64_t k_part = int64_t{seq} * D, v_part = (L::kTf32 ? seq_pad : seq) * D;
  const E* kb = k + bh * (heads.k ? heads.k : kParts * k_part);
  const E* vb = v + bh * (heads.v ? heads.v : kParts * v_part);

  // Fills a stage with the tile at k0 (an empty group past the split keeps the group count the
  // waits rely on).
  auto load_stage = [&](int stage, int k0) {
    unsigned char* ks = smem + stage * L::kStageBytes;
    if (k0 < kend) {
      const int keys = kend - k0;
#pragma unroll
      for (int part = 0; part < kParts; ++part) {
        unsigned char* kt = ks + part * L::kKTileBytes;
        unsigned char* vt = ks + L::kVOffset + part * L::kVTileBytes;
        load_tile_sw128<E, kBN, D, L::kKBlockBytes>(kt, kb + part * k_part + int64_t{k0} * D, D,
                                                    keys, tid);
        if constexpr (L::kTf32) {
          load_tile_sw128<E, D, kBN, L::kVBlockBytes>(vt, vb + part * v_part + k0, seq_pad, D, tid);
        } else {
          load_tile_sw128<E, kBN, D, L::kVBlockBytes>(vt, vb + int64_t{k0} * D, D, keys, tid);
        }
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int st = 0; st < kStages - 2; ++st) load_stage(st, kbeg + st * kBN);

  uint32_t qa[kParts][D / L::kKStep][4];  // q's parts (kSplit: hi, lo)
  if constexpr (kSplit) {
    q_fragments_tf32<D>(qa[0], q, bh, row0, nq, scale_log2, &qa[1]);
  } else if constexpr (L::kTf32) {
    q_fragments_tf32<D>(qa[0], q, bh, row0, nq, scale_log2);
  } else {
    q_fragments<D>(qa[0], q, bh, row0, nq, scale_log2);
  }
  int limit[2];
  row_limits<kMasked>(limit, visible, bh, row0, nq, seq);

  // Two S tiles: the scores being turned into P, and the next tile's, computed meanwhile. Two P
  // tiles likewise: this tile's P is made while the previous tile's P V still reads its own.
  //
  // kSplit: the tensor cores add to their accumulators with truncation, which over a long key
  // range adds up (float32 math at `nsa` came out 20x the FFMA kernel's error with P V added to O
  // tile after tile). So each tile's P V goes into a fresh accumulator `pv`, which is then added
  // to O in float32, and P is one tile (made once the last P V is done) to keep the registers.
  float s0[L::kSTiles][4], s1[L::kSTiles][4], o[kOTiles][4], pv[kOTiles][4];
  uint32_t p0[kParts][L::kPSteps][4] = {},
           p1[kParts][L::kPSteps][4] = {};  // read by a running P V until waited for
  uint32_t(&p_other)[kParts][L::kPSteps][4] = kSplit ? p0 : p1;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float pv_corr[2] = {1.f, 1.f};  // kSplit: what O is rescaled by before pv is added to it
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) {
    o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    pv[j][0] = pv[j][1] = pv[j][2] = pv[j][3] = 0.f;
  }
  // kSplit: O = O pv_corr + pv, in float32.
  auto add_pv = [&] { add_rescaled(o, pv, pv_corr); };

  // S = Q K^T of the tile in `stage` into sc, committed, not waited for: k-step kk reads 32 bytes
  // at (kk % 4) * 32 of column block kk / 4 of every key.
  // kSplit: q_lo K_hi + q_hi K_lo + q_hi K_hi, the small products first.
  // The descriptors: the tile's once, and each k-step's as one add to it (desc_plus), where
  // building each from its address took ~5 instructions.
  auto issue_s = [&](float(&sc)[L::kSTiles][4], int stage) {
    const uint64_t k_desc = kmajor_desc(base + stage * L::kStageBytes, L::kKBlockBytes, 0);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / L::kKStep; ++kk) {
      const uint32_t at = kmajor_step(L::kKBlockBytes, kk);
      const uint64_t desc = desc_plus(k_desc, at);
      if constexpr (kSplit) {
        wgmma_tf32(sc, qa[1][kk], desc, kk > 0);
        wgmma_tf32(sc, qa[0][kk], desc_plus(k_desc, L::kKTileBytes + at), 1);
        wgmma_tf32(sc, qa[0][kk], desc, 1);
      } else if constexpr (L::kTf32) {
        wgmma_tf32(sc, qa[0][kk], desc, kk > 0);
      } else {
        wgmma_m64n64k16<0>(sc, qa[0][kk], desc, kk > 0);
      }
    }
    wgmma_commit();
  };
  // O += P V of the tile in `stage`, committed. bf16: k-step kk reads keys 16 kk..16 kk + 15 (two
  // 8-key atoms, 2048 bytes in), the column blocks L::kVBlockBytes apart. TF32 (V^T K-major, as
  // K in S): k-step kk reads 32 bytes at (kk % 4) * 32 of column block kk / 4 of every row.
  // kSplit: pv = P_lo V_hi + P_hi V_lo + P_hi V_hi, written afresh.
  auto issue_pv = [&](const uint32_t(&pa)[L::kParts][L::kPSteps][4], int stage) {
    const uint32_t vs = base + stage * L::kStageBytes + L::kVOffset;
    // As in issue_s: TF32's V^T is K-major; bf16's V is MN-major, k-step kk 2048 bytes in.
    const uint64_t v_desc =
        L::kTf32 ? kmajor_desc(vs, L::kVBlockBytes, 0) : sw128_desc(vs, L::kVBlockBytes, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < L::kPSteps; ++kk) {
      if constexpr (kSplit) {
        const uint32_t at = kmajor_step(L::kVBlockBytes, kk);
        const uint64_t desc = desc_plus(v_desc, at);
        wgmma_tf32(pv, pa[1][kk], desc, kk > 0);
        wgmma_tf32(pv, pa[0][kk], desc_plus(v_desc, L::kVTileBytes + at), 1);
        wgmma_tf32(pv, pa[0][kk], desc, 1);
      } else if constexpr (L::kTf32) {
        wgmma_tf32(o, pa[0][kk], desc_plus(v_desc, kmajor_step(L::kVBlockBytes, kk)), 1);
      } else {
        const uint64_t desc = desc_plus(v_desc, kk * 2048);
        if constexpr (D == 64) {
          wgmma_m64n64k16<1>(o, pa[0][kk], desc, 1);
        } else {
          wgmma_m64n128k16<1>(o, pa[0][kk], desc, 1);
        }
      }
    }
    wgmma_commit();
  };
  // Tile j (at k0): its S in sc is complete, the P V of tile j - 1 (reading pp) may still run.
  // The next tile's S goes to the tensor cores first; this tile's softmax then runs while both
  // products do, into pc, and leaves O alone. Once the P V of tile j - 1 is done, O is rescaled
  // and this tile's P V goes out, left running into the next step. more_tag (std::true_type or
  // std::false_type): whether a tile follows this one in the split.
  auto step = [&](auto more_tag, float(&sc)[L::kSTiles][4], float(&sn)[L::kSTiles][4],
                  uint32_t(&pc)[L::kParts][L::kPSteps][4], uint32_t(&pp)[L::kParts][L::kPSteps][4],
                  int j) {
    constexpr bool more = decltype(more_tag)::value;
    const int k0 = kbeg + j * kBN;
    // Tile j + 1 has landed once at most kStages - 4 later groups are in flight. After the
    // barrier every warpgroup has also waited for the P V of tile j - 2 (in step j - 1), so its
    // stage is free and takes the tile kStages - 2 ahead.
    cp_async_wait<kStages - 4>();
    fence_proxy_async();
    __syncthreads();
    load_stage((j + kStages - 2) % kStages, k0 + (kStages - 2) * kBN);
    if constexpr (more) issue_s(sn, (j + 1) % kStages);
    float corr[2];
    mask_scores<L::kSTiles, kMasked>(sc, kend - k0, k0, limit);
    softmax_scores<L::kSTiles, kMasked>(sc, m_run, l_run, corr);
    // This tile's P is made while the P V of tile j - 1 still reads the other P tile; with
    // kSplit P is one tile (pc is pp), made once that P V is done (below).
    if constexpr (!kSplit) {
#pragma unroll
      for (int kk = 0; kk < L::kPSteps; ++kk) {
        if constexpr (L::kTf32) {
          p_fragment_tf32<L::kSTiles>(pc[0][kk], sc, kk);
        } else {
          p_fragment<L::kSTiles>(pc[0][kk], sc, kk);
        }
      }
    }
    if constexpr (more) {
      wgmma_wait<1>();  // the P V of tile j - 1 (the S just issued may run on)
    } else {
      wgmma_wait<0>();
    }
    if constexpr (kSplit) {
      fence_registers(pv);
      fence_parts(pc);
      add_pv();
      pv_corr[0] = corr[0], pv_corr[1] = corr[1];
#pragma unroll
      for (int kk = 0; kk < L::kPSteps; ++kk) {
        p_fragment_tf32<L::kSTiles>(pc[0][kk], sc, kk, &pc[1][kk]);
      }
    } else {
      fence_registers(o);
      fence_parts(pp);
      rescale_rows<kOTiles>(o, corr);
    }
    issue_pv(pc, j % kStages);
    if constexpr (more) {
      wgmma_wait<1>();  // the next tile's S (this P V runs on)
      fence_registers(sn);
    }
  };
  const std::true_type next;
  const std::false_type last;

  const int tiles = (kend - kbeg + kBN - 1) / kBN;  // 0 for a causal CTA past its keys
  if (tiles > 0) {
    cp_async_wait<kStages - 3>();  // tile 0
    fence_proxy_async();
    __syncthreads();
    issue_s(s0, 0);
    wgmma_wait<0>();
    fence_registers(s0);
    // Two steps per pass, so that the two S tiles and the two P tiles trade places without
    // copies; the last step (no next S) apart.
    int j = 0;
    for (; j + 2 < tiles; j += 2) {
      step(next, s0, s1, p0, p_other, j);
      step(next, s1, s0, p_other, p0, j + 1);
    }
    if (j + 1 < tiles) {
      step(next, s0, s1, p0, p_other, j);
      step(last, s1, s0, p_other, p0, j + 1);
    } else {
      step(last, s0, s1, p0, p_other, j);
    }
  }
  wgmma_wait<0>();  // the last P V
  fence_registers(o);
  fence_parts(p0);
  if constexpr (kSplit) {
    fence_registers(pv);
    add_pv();
  } else {
    fence_parts(p1);
  }
  cp_async_wait<0>();  // no copy may outlive the CTA (the last refills are empty groups)

  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
  write_rows<kOTiles>(o, m_run, l_run, dst, bh, row0, nq, rows);
#endif
}

template <typename E, int D, bool kSplit = false>
void launch_wgmma(const float* q, const E* k, const E* v, float* out, int64_t bh, int64_t nq,
                  int64_t seq, double alpha, const int32_t* visible, float* lse,
                  KvHeads heads = {}) {
  using L = WgLayout<E, D, kSplit>;
  launch_split_attention<D, attention_wgmma_kernel<E, D, false, kSplit>,
                         attention_wgmma_kernel<E, D, true, kSplit>>(
      kThreadsWg, L::kBytes, kBQ, L::kBN, q, k, v, out, bh, nq, seq, alpha, visible, lse, heads);
}

// Float32 math at d = 128 (split TF32 as above). q's two parts as registers (128 a thread) would
// not fit beside O, the fresh P V accumulator and P, so q stays float32 in shared memory and each
// k-step's A fragment is loaded and split just before its three products, kChunk k-steps at a time
// in two register buffers. q is stored scaled to log2 units, with the columns of every 16 (two
// k-steps) in the order a lane reads them, t, t + 4, t + 8, t + 12 at 4 t: one 16-byte load gives
// a row's half of two fragments, and rows kQStride = 16 (mod 32) floats apart put the 8 lanes of
// each load phase on distinct banks. What is left of shared memory holds two stages of 32 keys (K's
// and V^T's parts, 64 KiB a stage): tile j + 1 loads while tile j is multiplied. A warpgroup waits
// for its products within a tile (S, the softmax, then P V); the two run half a tile apart (see
// the main loop), so that each one's operand splits and softmax overlap the other's products.
struct Split128 {
  using L = WgLayout<float, 128, true>;
  static constexpr int kStages = 2;
  static constexpr int kQStride = 144;  // floats a q row in shared memory
  static constexpr int kQBytes = kBQ * kQStride * 4;
  static constexpr int kChunk = 4;  // k-steps of S a register buffer holds
  static constexpr int kChunks = 128 / L::kKStep / kChunk;
  static constexpr size_t kBytes = kStages * L::kStageBytes + kQBytes + 1024;
};

// One CTA per (batch-head, kBQ queries, key split), as attention_wgmma_kernel; K (bh, 2, seq, 128)
// and V^T (bh, 2, 128, seq_pad) split into parts already.
template <bool kMasked>
__global__ void __launch_bounds__(kThreadsWg, 1)
    attention_split128_kernel(const float* __restrict__ q, const float* __restrict__ k,
                              const float* __restrict__ v, KvHeads heads, AttentionDest dst, int nq,
                              int seq, int q_tiles, int split_len, float scale_log2,
                              const int32_t* __restrict__ visible) {
#ifdef KVC_WGMMA_DEVICE
  using S = Split128;
  using L = S::L;
  constexpr int D = 128, kBN = L::kBN, kOTiles = D / 8;
  extern __shared__ float4 smem4[];
  const WgCta cta = wg_cta<kMasked>(smem4, nq, seq, q_tiles, split_len, visible);
  unsigned char* const smem = cta.smem;
  const uint32_t base = cta.smem_addr;
  const int64_t bh = cta.bh;
  const int tile_row0 = cta.tile_row0, kbeg = cta.kbeg, kend = cta.kend;
  float* qs = reinterpret_cast<float*>(smem + S::kStages * L::kStageBytes);

  const int tid = threadIdx.x, warp = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
  const int row0 = tile_row0 + warp * 16;
  const int64_t seq_pad = vt_seq_pad(seq);
  const int64_t k_part = int64_t{seq} * D, v_part = seq_pad * D;
  const float* kb = k + bh * (heads.k ? heads.k : 2 * k_part);
  const float* vb = v + bh * (heads.v ? heads.v : 2 * v_part);

  // Copies the tile at k0 into `stage`, by the second warpgroup's 128 threads (see the loop):
  // thread l = 32 w + c copies 16 bytes of K rows w + 4 n (keys past the split are zeros, read
  // from row 0) and of V^T rows l / 8 + 16 n (always valid: V^T is padded with zero keys). Written
  // out here because load_tile_sw128's per-copy addresses, hoisted out of the loop, cost ~40
  // registers this kernel does not have.
  const int l = tid - 128;
  auto load_stage = [&](int stage, int k0) {
    unsigned char* ks = smem + stage * L::kStageBytes;
    if (k0 < kend) {
      const int w = l >> 5, c = l & 31, vr = l >> 3, vc = l & 7, rows = kend - k0;
#pragma unroll
      for (int part = 0; part < 2; ++part) {
        const float* kf = kb + part * k_part + int64_t{k0} * D + c * 4;
        unsigned char* kt = ks + part * L::kKTileBytes + (c / 8) * L::kKBlockBytes + w * 128;
#pragma unroll
        for (int n = 0; n < kBN / 4; ++n) {  // row w + 4 n: swizzle (c % 8) ^ (w + 4 (n % 2))
          const int r = w + 4 * n;
          cp_async16(reinterpret_cast<float*>(kt + n * 512 + (((c % 8) ^ (w + 4 * (n % 2))) << 4)),
                     kf + (r < rows ? r : 0) * D, r < rows);
        }
        const float* vf = vb + part * v_part + vr * seq_pad + k0 + vc * 4;
        unsigned char* vt =
            ks + L::kVOffset + part * L::kVTileBytes + vr * 128 + ((vc ^ (vr & 7)) << 4);
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
          cp_async16(reinterpret_cast<float*>(vt + n * 2048), vf + n * 16 * seq_pad, true);
        }
      }
    }
    cp_async_commit();
  };
  if (warp >= 4) load_stage(0, kbeg);

  // The CTA's q rows, scaled, zero past nq: columns c..c + 3 of a 16-column group, c = 4 u, go
  // to positions u, u + 4, u + 8, u + 12 of it (column 4 i + u at 4 u + i).
  for (int i = tid; i < kBQ * D / 4; i += kThreadsWg) {
    const int r = i / (D / 4), c = i % (D / 4) * 4, row = tile_row0 + r;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row < nq) x = *reinterpret_cast<const float4*>(q + (bh * nq + row) * D + c);
    float* to = qs + r * S::kQStride + (c & ~15) + (c & 15) / 4;
    to[0] = x.x * scale_log2;
    to[4] = x.y * scale_log2;
    to[8] = x.z * scale_log2;
    to[12] = x.w * scale_log2;
  }
  int limit[2];
  row_limits<kMasked>(limit, visible, bh, row0, nq, seq);

  float s[L::kSTiles][4], sa[2][L::kSTiles][4], o[kOTiles][4], pv[kOTiles][4];
  uint32_t p[2][L::kPSteps][4];
  uint32_t qh[2][S::kChunk][4], ql[2][S::kChunk][4];  // q's parts, two buffers of kChunk k-steps
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;

  // This thread's q rows g and g + 8 of its warp, columns t, t + 4, t + 8, t + 12 of each 16.
  const float* qr = qs + (warp * 16 + g) * S::kQStride + 4 * t;
  // The A fragments of k-steps kChunk c.. into hi and lo: a0 = (g, t), a1 = (g + 8, t),
  // a2 = (g, t + 4), a3 = (g + 8, t + 4) of each k-step.
  auto load_q = [&](uint32_t(&hi)[S::kChunk][4], uint32_t(&lo)[S::kChunk][4], int c) {
#pragma unroll
    for (int i = 0; i < S::kChunk; i += 2) {
      const int col = (c * S::kChunk + i) * L::kKStep;  // a 16-column group
      const float4 r0 = *reinterpret_cast<const float4*>(qr + col);
      const float4 r1 = *reinterpret_cast<const float4*>(qr + 8 * S::kQStride + col);
      const float x[2][4] = {{r0.x, r1.x, r0.y, r1.y}, {r0.z, r1.z, r0.w, r1.w}};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 parts = split_tf32_operand(x[h][e]);
          hi[i + h][e] = __float_as_uint(parts.x);
          lo[i + h][e] = __float_as_uint(parts.y);
        }
      }
    }
  };
  // sc = q_lo K_hi + q_hi K_lo + q_hi K_hi over k-steps kChunk c.. of the stage k_desc describes,
  // written afresh and committed. The chunks' sums are added in float32: the tensor cores'
  // truncating accumulation over all 48 products of a key (against 24 at d = 64) doubled the error.
  auto issue_s = [&](float(&sc)[L::kSTiles][4], const uint32_t(&hi)[S::kChunk][4],
                     const uint32_t(&lo)[S::kChunk][4], uint64_t k_desc, int c) {
    wgmma_fence();
#pragma unroll
    for (int i = 0; i < S::kChunk; ++i) {
      const int kk = c * S::kChunk + i;
      const uint32_t at = (kk / 4) * L::kKBlockBytes + (kk % 4) * 32;
      if (i == 0) {
        wgmma_tf32_fresh(sc, lo[i], desc_plus(k_desc, at));
      } else {
        wgmma_tf32(sc, lo[i], desc_plus(k_desc, at), 1);
      }
      wgmma_tf32(sc, hi[i], desc_plus(k_desc, L::kKTileBytes + at), 1);
      wgmma_tf32(sc, hi[i], desc_plus(k_desc, at), 1);
    }
    wgmma_commit();
  };
  auto add_s = [&](const float(&sc)[L::kSTiles][4]) {
#pragma unroll
    for (int jj = 0; jj < L::kSTiles; ++jj) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[jj][e] += sc[jj][e];
    }
  };

  // Stage 0's descriptor; K's column blocks and V^T's single block (32 keys of 4 bytes) have the
  // same swizzled form, so every operand of a stage is this one plus an offset.
  const uint64_t desc0 = sw128_desc(base, 16, 1024);
  auto stage_desc = [&](int j) { return desc_plus(desc0, (j % S::kStages) * L::kStageBytes); };

  // Tile j's scores: S, a chunk of k-steps at a time into two accumulators in turn (a chunk's
  // registers are reused once the chunk before it has run and been added to S), then the softmax,
  // which leaves P in s (split into p's parts by add_pv) and in corr what rescales O before this
  // tile's P V is added.
  float corr[2] = {1.f, 1.f};
  auto scores = [&](int j) {
    const int k0 = kbeg + j * kBN;
    const uint64_t k_desc = stage_desc(j);
    load_q(qh[0], ql[0], 0);
    issue_s(sa[0], qh[0], ql[0], k_desc, 0);
#pragma unroll
    for (int c = 1; c < S::kChunks; ++c) {
      load_q(qh[c & 1], ql[c & 1], c);
      issue_s(sa[c & 1], qh[c & 1], ql[c & 1], k_desc, c);
      wgmma_wait<1>();
      fence_registers(sa[(c - 1) & 1]);
      fence_registers(qh[(c - 1) & 1]);
      fence_registers(ql[(c - 1) & 1]);
      if (c == 1) {
#pragma unroll
        for (int jj = 0; jj < L::kSTiles; ++jj) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[jj][e] = sa[0][jj][e];
        }
      } else {
        add_s(sa[(c - 1) & 1]);
      }
    }
    wgmma_wait<0>();
    fence_registers(sa[(S::kChunks - 1) & 1]);
    fence_registers(qh[(S::kChunks - 1) & 1]);
    fence_registers(ql[(S::kChunks - 1) & 1]);
    add_s(sa[(S::kChunks - 1) & 1]);
    mask_scores<L::kSTiles, kMasked>(s, kend - k0, k0, limit);
    softmax_scores<L::kSTiles, kMasked>(s, m_run, l_run, corr);
  };
  // pv = P_lo V_hi + P_hi V_lo + P_hi V_hi of tile j (P in s), written afresh, then O = O corr + pv
  // in float32 (the tensor cores' own accumulation truncates: see attention_wgmma_kernel).
  auto add_pv = [&](int j) {
    const uint64_t k_desc = stage_desc(j);
#pragma unroll
    for (int kk = 0; kk < L::kPSteps; ++kk) p_fragment_tf32<L::kSTiles>(p[0][kk], s, kk, &p[1][kk]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < L::kPSteps; ++kk) {  // one column block: 32 keys of 4 bytes
      const uint32_t at = L::kVOffset + kk * 32;
      if (kk == 0) {
        wgmma_tf32_fresh(pv, p[1][kk], desc_plus(k_desc, at));
      } else {
        wgmma_tf32(pv, p[1][kk], desc_plus(k_desc, at), 1);
      }
      wgmma_tf32(pv, p[0][kk], desc_plus(k_desc, L::kVTileBytes + at), 1);
      wgmma_tf32(pv, p[0][kk], desc_plus(k_desc, at), 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(pv);
    fence_parts(p);
    add_rescaled(o, pv, corr);
  };

  // The warpgroups run half a tile apart, so that one's softmax overlaps the other's products:
  // between the barriers of tiles j and j + 1 the first does tile j whole (scores, then P V), the
  // second the P V of tile j - 1 and then the scores of tile j. The second is thus the last to
  // read a stage, and it refills it (with tile j + 1, once its P V of tile j - 1 is done) and
  // waits for its copies before the next barrier; the first issues none.
  const bool leads = warp < 4;
  const int tiles = (kend - kbeg + kBN - 1) / kBN;  // 0 for a causal CTA past its keys
  for (int j = 0; j < tiles; ++j) {
    // Tile j has landed (the first pass also orders the q rows' stores before their loads).
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (leads) {
      scores(j);
      add_pv(j);
    } else {
      if (j > 0) add_pv(j - 1);
      named_barrier_sync(1, 128);  // every warp of this warpgroup is done with tile j - 1
      load_stage((j + 1) % S::kStages, kbeg + (j + 1) * kBN);
      scores(j);
    }
  }
  if (!leads && tiles > 0) add_pv(tiles - 1);
  cp_async_wait<0>();  // no copy may outlive the CTA (the last refill is an empty group)

  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
  write_rows<kOTiles>(o, m_run, l_run, dst, bh, row0, nq, rows);
#endif
}

void launch_split128(const float* q, const float* k, const float* vt, float* out, int64_t bh,
                     int64_t nq, int64_t seq, double alpha, const int32_t* visible, float* lse) {
  launch_split_attention<128, attention_split128_kernel<false>, attention_split128_kernel<true>>(
      kThreadsWg, Split128::kBytes, kBQ, Split128::L::kBN, q, k, vt, out, bh, nq, seq, alpha,
      visible, lse);
}

// k (bh, seq * d) -> parts (bh, 2, seq * d): each value's TF32 part, then its TF32 remainder.
// A grid of (x, batch-heads): the head from blockIdx.y, no division per element.
__global__ void split_k_tf32_kernel(const float4* __restrict__ k, float4* __restrict__ parts,
                                    int64_t bh, int64_t head4) {
  for (int64_t h = blockIdx.y; h < bh; h += gridDim.y) {
    for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < head4;
         c += int64_t{gridDim.x} * blockDim.x) {
      const float4 x = k[h * head4 + c];
      const float2 a = split_tf32(x.x), b = split_tf32(x.y), e = split_tf32(x.z),
                   f = split_tf32(x.w);
      parts[2 * h * head4 + c] = make_float4(a.x, b.x, e.x, f.x);
      parts[(2 * h + 1) * head4 + c] = make_float4(a.y, b.y, e.y, f.y);
    }
  }
}

// vt (bh, D, seq_pad) = V (bh, seq, D) transposed for TF32 P V (keys contiguous, K-major), each
// value rounded to TF32 (to nearest, as the mma.sync kernel rounds its operands), zero past seq,
// and every 8-key group listed as keys 0, 2, 4, 6, 1, 3, 5, 7: the order in which P's accumulators
// are its A fragments (p_fragment_tf32). With kSplit, vt is (bh, 2, D, seq_pad): the values' TF32
// parts, then their remainders (split_tf32). A CTA moves a 32-key x 32-column block through
// shared memory, reads and writes coalesced.
template <bool kSplit>
__global__ void transpose_v_tf32_kernel(const float* __restrict__ v, float* __restrict__ vt,
                                        int seq, int seq_pad, int d) {
  __shared__ float block[32][33];
  const int64_t bh = blockIdx.z;
  const int key0 = blockIdx.x * 32, col0 = blockIdx.y * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8 threads
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int key = key0 + ty + 8 * i;
    block[ty + 8 * i][tx] = key < seq ? v[(bh * seq + key) * d + col0 + tx] : 0.f;
  }
  __syncthreads();
  // Position tx of the 32 holds key (tx & ~7) + 2 (tx & 3) + ((tx >> 2) & 1) of the block.
  const int key = (tx & ~7) + 2 * (tx & 3) + ((tx >> 2) & 1);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int col = col0 + ty + 8 * i;
    const float x = block[key][ty + 8 * i];
    if constexpr (kSplit) {
      const float2 parts = split_tf32(x);
      vt[(2 * bh * d + col) * seq_pad + key0 + tx] = parts.x;
      vt[((2 * bh + 1) * d + col) * seq_pad + key0 + tx] = parts.y;
    } else {
      vt[(bh * d + col) * seq_pad + key0 + tx] = __uint_as_float(to_tf32(x));
    }
  }
}

}  // namespace

bool attention_wgmma_available() {
#ifdef KVC_HAVE_SM90A
  return compute_capability() == 90;
#else
  return false;
#endif
}

void attention_forward_wgmma(const float* q, const uint16_t* k16, const uint16_t* v16, float* out,
                             int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                             const int32_t* visible, float* lse, int64_t k_head, int64_t v_head) {
  KVC_CHECK(attention_wgmma_available(),
            "attention_forward_wgmma: needs an sm_90 GPU and a build for sm_90a");
  const KvHeads heads{k_head, v_head};
  switch (d) {
    case 64:
      return launch_wgmma<uint16_t, 64>(q, k16, v16, out, batch_heads, nq, seq, alpha, visible, lse,
                                        heads);
    case 128:
      return launch_wgmma<uint16_t, 128>(q, k16, v16, out, batch_heads, nq, seq, alpha, visible,
                                         lse, heads);
    default:
      KVC_FAIL("attention_forward_wgmma: head size ", d, " has no wgmma kernel");
  }
}

namespace {

// The TF32 forward (kSplit: the float32 one of split operands) a chunk of batch-heads at a
// time: V^T (and with kSplit K's parts) go into scratch of about vt_chunk_bytes first.
template <bool kSplit>
void wgmma_tf32_forward(const char* name, const float* q, const float* k, const float* v,
                        float* out, int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                        double alpha, const int32_t* visible, float* lse, int64_t vt_chunk_bytes) {
  KVC_CHECK(attention_wgmma_available(), name, ": needs an sm_90 GPU and a build for sm_90a");
  KVC_CHECK(d == 64 || d == 128, name, ": head size ", d, " has no such wgmma kernel");
  if (batch_heads == 0) return;
  // V^T is float32 and as large as V (with kSplit twice, and K's parts as much again): a chunk of
  // batch-heads at a time (by default 256 MiB, half of V at `long`, which keeps the MLP kinds'
  // peak there below PyTorch's).
  constexpr int64_t kParts = kSplit ? 2 : 1;
  const int64_t seq_pad = vt_seq_pad(seq);
  const int64_t vt_head = d * seq_pad * kParts, k_head = kSplit ? seq * d * kParts : 0;
  const int64_t head_bytes = std::max<int64_t>((vt_head + k_head) * int64_t{sizeof(float)}, 1);
  const int64_t chunk = std::clamp<int64_t>(vt_chunk_bytes / head_bytes, 1, batch_heads);
  Scratch scratch(static_cast<size_t>(chunk * head_bytes));
  float* vt = scratch.as<float>();
  float* k_parts = vt + chunk * vt_head;
  for (int64_t bh0 = 0; bh0 < batch_heads; bh0 += chunk) {
    const int64_t bhc = std::min(chunk, batch_heads - bh0);
    const int64_t qkv0 = bh0 * nq * d, kv0 = bh0 * seq * d;
    if (seq_pad > 0) {
      const dim3 grid(static_cast<unsigned>(seq_pad / 32), static_cast<unsigned>(d / 32),
                      static_cast<unsigned>(bhc));
      transpose_v_tf32_kernel<kSplit><<<grid, dim3(32, 8), 0, stream()>>>(
          v + kv0, vt, static_cast<int>(seq), static_cast<int>(seq_pad), static_cast<int>(d));
      KVC_CUDA_CHECK(cudaGetLastError());
    }
    const float* keys = k + kv0;
    if constexpr (kSplit) {
      const int64_t head4 = seq * d / 4;
      const unsigned heads = static_cast<unsigned>(std::min<int64_t>(bhc, 65535));
      const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, grid_for(bhc * head4) / heads)),
                      heads);
      split_k_tf32_kernel<<<grid, kThreads, 0, stream()>>>(
          reinterpret_cast<const float4*>(keys), reinterpret_cast<float4*>(k_parts), bhc, head4);
      KVC_CUDA_CHECK(cudaGetLastError());
      keys = k_parts;
    }
    const int32_t* vis = visible ? visible + bh0 * nq : nullptr;
    float* rows_lse = lse ? lse + bh0 * nq : nullptr;
    if (d == 64) {
      launch_wgmma<float, 64, kSplit>(q + qkv0, keys, vt, out + qkv0, bhc, nq, seq, alpha, vis,
                                      rows_lse);
    } else if constexpr (kSplit) {
      launch_split128(q + qkv0, keys, vt, out + qkv0, bhc, nq, seq, alpha, vis, rows_lse);
    } else {
      launch_wgmma<float, 128>(q + qkv0, keys, vt, out + qkv0, bhc, nq, seq, alpha, vis, rows_lse);
    }
  }
}

}  // namespace

void attention_forward_wgmma_tf32(const float* q, const float* k, const float* v, float* out,
                                  int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                                  double alpha, const int32_t* visible, float* lse,
                                  int64_t vt_chunk_bytes) {
  wgmma_tf32_forward<false>("attention_forward_wgmma_tf32", q, k, v, out, batch_heads, nq, seq, d,
                            alpha, visible, lse, vt_chunk_bytes);
}

void attention_forward_wgmma_split(const float* q, const float* k, const float* v, float* out,
                                   int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                                   double alpha, const int32_t* visible, float* lse,
                                   int64_t scratch_bytes) {
  wgmma_tf32_forward<true>("attention_forward_wgmma_split", q, k, v, out, batch_heads, nq, seq, d,
                           alpha, visible, lse, scratch_bytes);
}

}  // namespace kvc::kernels::cuda

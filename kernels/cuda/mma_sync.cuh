// Warp-level tensor-core instructions (mma.sync, ldmatrix) of sm_80 and newer, shared by the
// attention target (kernels/cuda/attention_tc.cu) and the attention pools' forward
// (kernels/cuda/attention_pool.cu). Fragment layouts (PTX ISA, mma.m16n8k16 / m16n8k8), lane =
// 4 g + t:
//   C (16 x 8):  c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g+8, same columns.
//   A bf16:      a0 = row g, columns 2t..2t+1; a1 = row g+8, same; a2 = row g, 2t+8..2t+9; a3 = row
//                g+8, same.  B bf16 (k x n): b0 = rows 2t..2t+1, column g; b1 = rows 2t+8..2t+9.
//   A tf32:      a0 = (g, t), a1 = (g+8, t), a2 = (g, t+4), a3 = (g+8, t+4).
//                B tf32: b0 = (t, g), b1 = (t+4, g).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kvc::kernels::cuda {

// Two floats as a bf16 pair (round to nearest even), lo in the low 16 bits: the first of two
// adjacent fragment elements.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low 16 bits
  return *reinterpret_cast<const uint32_t*>(&x);
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// x = hi + lo with both parts TF32 (rounded to nearest): hi = tf32(x), lo = tf32(x - hi), the
// split operands of float32 math on TF32 tensor cores.
__device__ __forceinline__ float2 split_tf32(float x) {
  const float hi = __uint_as_float(to_tf32(x));
  return make_float2(hi, __uint_as_float(to_tf32(x - hi)));
}

// split_tf32 for operands that go to the tensor cores from registers, in three instructions where
// cvt.rna takes four or five each (it guards NaN and infinity): hi rounded to nearest by an integer
// add, lo = x - hi exactly and left unrounded, since the tensor cores read a register's top 19 bits
// (|lo| <= 2^-11 |x|, truncated: at most 2^-21 |x| off, against 2^-22 rounded). A NaN x can lose
// its NaN in hi (0x7fffffff carries into the sign) but never in lo = x - hi, so the products still
// give NaN; so does an infinite x (lo = inf - inf), and one within half a TF32 step of float32's
// largest value (hi rounds up to infinity).
__device__ __forceinline__ float2 split_tf32_operand(float x) {
  const float hi = __uint_as_float((__float_as_uint(x) + 0x1000u) & 0xffffe000u);
  return make_float2(hi, __fsub_rn(x, hi));
}

// The sum of a C fragment's values over its rows g = 0..7 (lanes 4 g + t hold the same columns):
// three exchanges across g give every lane its columns' sum over the 8 rows.
__device__ __forceinline__ float sum_over_fragment_rows(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  v += __shfl_xor_sync(0xffffffffu, v, 16);
  return v;
}

// The products are plain register operations (no volatile): the compiler may interleave
// independent ones, which a chain of dependent products needs to hide the tensor-core latency.
// c += a b for one 16x8 tile: a (16 x 16 bf16, row), b (16 x 8 bf16, col), c FP32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a b for one 16x8 tile: a (16 x 8 tf32, row), b (8 x 8 tf32, col), c FP32.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of matrix
// l / 8. Plain: lane (g, t) gets row g, columns 2t, 2t+1 of each; trans: rows 2t, 2t+1 of column g.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

}  // namespace kvc::kernels::cuda

// CUDA reductions: sum over an axis (rows or columns, split in two passes when long), its
// expanding adjoint, and sum_to. Deterministic: fixed trees, no atomics.
#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/reduce.h"

namespace kvc::kernels::cuda {

namespace {

// Rows (inner == 1). Block b sums segment b % splits of row b / splits; with splits == 1 it
// writes the scaled row sum, else an unscaled partial for a second pass.
template <typename In, typename Out>
__global__ void row_sum_kernel(const In* in, Out* out, int64_t rows, int64_t len, int64_t splits,
                               double scale) {
  __shared__ double shared[32];
  const int64_t seg = (len + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < rows * splits; task += gridDim.x) {
    const int64_t row = task / splits, s = task % splits;
    const int64_t begin = s * seg, end = min(len, begin + seg);
    const In* p = in + row * len;
    double acc = 0;
    for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x)
      acc += static_cast<double>(p[r]);
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) out[task] = static_cast<Out>(splits == 1 ? acc * scale : acc);
  }
}

// Short rows: one warp per row, eight rows per block.
template <typename In, typename Out>
__global__ void warp_row_sum_kernel(const In* in, Out* out, int64_t rows, int64_t len,
                                    double scale) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x >> 5);
  for (int64_t row = blockIdx.x * int64_t{blockDim.x >> 5} + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const In* p = in + row * len;
    double acc = 0;
    for (int64_t r = lane; r < len; r += 32) acc += static_cast<double>(p[r]);
    acc = warp_sum(acc);
    if (lane == 0) out[row] = static_cast<Out>(acc * scale);
  }
}

constexpr int kColX = 32, kColY = 8;

// Where col_sum_kernel reads: element (o, r, i) of `in` at o * outer_stride + (r / pair) *
// pair_stride + (r % pair) * inner + i. A plain (outer, reduce, inner) array has pair = reduce
// (one run of rows); pair < reduce sums two axes at once, in (A, outer, pair, inner) summed over
// A and pair (reduce = A pair, pair_stride = outer pair inner): a per-head bias's gradient from
// (b, h, w, n) without a pass per summed axis.
struct ColumnLayout {
  int64_t outer, reduce, inner;
  int64_t outer_stride, pair, pair_stride;
  static ColumnLayout plain(int64_t outer, int64_t reduce, int64_t inner) {
    return {outer, reduce, inner, reduce * inner, reduce, 0};
  }
};

// Columns (inner > 1). A (32 x 8) block owns 32 adjacent columns of one outer index and one of
// `splits` segments of the reduce axis; its 8 thread rows stride the segment and meet in shared
// memory in a fixed order. Partials (splits > 1) go to out (outer, splits, inner).
template <typename In, typename Out>
__global__ void col_sum_kernel(const In* in, Out* out, ColumnLayout lay, int64_t splits,
                               double scale) {
  __shared__ double shared[kColY][kColX + 1];
  const int64_t inner = lay.inner;
  const int64_t tiles = (inner + kColX - 1) / kColX;
  const int64_t seg = (lay.reduce + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < lay.outer * tiles * splits; task += gridDim.x) {
    const int64_t s = task % splits;
    const int64_t tile = (task / splits) % tiles;
    const int64_t o = task / (splits * tiles);
    const int64_t i = tile * kColX + threadIdx.x;
    const int64_t begin = s * seg, end = min(lay.reduce, begin + seg);
    double acc = 0;
    if (i < inner) {
      const In* p = in + o * lay.outer_stride + i;
      // Row r as (r / pair, r % pair), stepped by kColY without a division per row.
      int64_t r = begin + threadIdx.y, hi = r / lay.pair, lo = r % lay.pair;
      for (; r < end; r += kColY) {
        acc += static_cast<double>(p[hi * lay.pair_stride + lo * inner]);
        lo += kColY;
        while (lo >= lay.pair) lo -= lay.pair, ++hi;
      }
    }
    shared[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < inner) {
      double total = 0;
#pragma unroll
      for (int y = 0; y < kColY; ++y) total += shared[y][threadIdx.x];
      out[(o * splits + s) * inner + i] = static_cast<Out>(splits == 1 ? total * scale : total);
    }
    __syncthreads();  // shared is rewritten by the next task
  }
}

// Short columns of float (reduce <= kShortReduce, inner a multiple of 4, 16-byte aligned): a
// thread sums four adjacent columns of one outer index over all its rows, in order, 16 bytes a
// load and its loads independent of one another. (col_sum_kernel's 32 x 8 blocks read 4 bytes a
// thread and meet at a barrier: at the MLP kinds' block means, (b h w, n 16-32, d 64-128), that
// ran at about half the bandwidth.)
constexpr int64_t kShortReduce = 256;
__global__ void col_sum_short_kernel(const float4* in, float4* out, int64_t outer, int64_t reduce,
                                     int64_t inner4, double scale) {
  KVC_GRID_LOOP(t, outer * inner4) {
    const int64_t o = t / inner4, i = t % inner4;
    const float4* p = in + o * reduce * inner4 + i;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll 8
    for (int64_t r = 0; r < reduce; ++r) {
      const float4 v = __ldg(p + r * inner4);
      a0 += v.x, a1 += v.y, a2 += v.z, a3 += v.w;
    }
    out[t] = make_float4(static_cast<float>(a0 * scale), static_cast<float>(a1 * scale),
                         static_cast<float>(a2 * scale), static_cast<float>(a3 * scale));
  }
}

bool short_columns(const void* in, const void* out, int64_t outer, int64_t reduce, int64_t inner) {
  const bool aligned =
      reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // Enough threads to fill the GPU; else the split blocks of col_sum_kernel do better.
  return aligned && inner % 4 == 0 && reduce <= kShortReduce &&
         outer * inner / 4 >= int64_t{sm_count()} * 512;
}

int blocks_for(int64_t tasks) {
  return static_cast<int>(std::min<int64_t>(tasks, int64_t{sm_count()} * 32));
}

// How many segments to cut a long reduction into so that about two waves of blocks run, each
// segment still `min_seg` long or more.
int64_t choose_splits(int64_t tasks, int64_t reduce, int64_t min_seg) {
  const int64_t want = 2 * int64_t{sm_count()};
  if (tasks >= want) return 1;
  const int64_t by_occupancy = (want + tasks - 1) / tasks;
  const int64_t by_length = std::max<int64_t>(1, reduce / min_seg);
  return std::max<int64_t>(1, std::min({by_occupancy, by_length, int64_t{1024}}));
}

// out (outer, inner) = scale * the column sums of `lay` (col_sum_kernel): one pass, or a pass of
// partial sums over segments of the rows and a second over those where the outer indices and
// column tiles alone would leave the GPU idle.
template <typename T>
void sum_columns(const T* in, T* out, const ColumnLayout& lay, double scale) {
  const dim3 block(kColX, kColY);
  const int64_t tiles = (lay.inner + kColX - 1) / kColX;
  const int64_t splits = choose_splits(lay.outer * tiles, lay.reduce, 64);
  if (splits == 1) {
    col_sum_kernel<T, T>
        <<<blocks_for(lay.outer * tiles), block, 0, stream()>>>(in, out, lay, 1, scale);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  Scratch partial(static_cast<size_t>(lay.outer * splits * lay.inner) * sizeof(double));
  col_sum_kernel<T, double><<<blocks_for(lay.outer * tiles * splits), block, 0, stream()>>>(
      in, partial.as<double>(), lay, splits, 1.0);
  KVC_CUDA_CHECK(cudaGetLastError());
  col_sum_kernel<double, T><<<blocks_for(lay.outer * tiles), block, 0, stream()>>>(
      partial.as<double>(), out, ColumnLayout::plain(lay.outer, splits, lay.inner), 1, scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// out (outer, inner) = scale * sum over the middle axis of in (outer, reduce, inner).
template <typename T>
void sum3(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, double scale) {
  if (outer * inner == 0) return;
  if (reduce == 0) {  // an empty sum is zero (all-zero bits are 0.0 in both dtypes)
    KVC_CUDA_CHECK(
        cudaMemsetAsync(out, 0, static_cast<size_t>(outer * inner) * sizeof(T), stream()));
    return;
  }
  if (inner == 1) {
    if (reduce <= 1024) {
      const int64_t rows_per_block = kThreads / 32;
      const int64_t blocks = (outer + rows_per_block - 1) / rows_per_block;
      warp_row_sum_kernel<T, T>
          <<<blocks_for(blocks), kThreads, 0, stream()>>>(in, out, outer, reduce, scale);
      KVC_CUDA_CHECK(cudaGetLastError());
      return;
    }
    const int64_t splits = choose_splits(outer, reduce, 4096);
    if (splits == 1) {
      row_sum_kernel<T, T>
          <<<blocks_for(outer), kThreads, 0, stream()>>>(in, out, outer, reduce, 1, scale);
      KVC_CUDA_CHECK(cudaGetLastError());
      return;
    }
    Scratch partial(static_cast<size_t>(outer * splits) * sizeof(double));
    row_sum_kernel<T, double><<<blocks_for(outer * splits), kThreads, 0, stream()>>>(
        in, partial.as<double>(), outer, reduce, splits, 1.0);
    KVC_CUDA_CHECK(cudaGetLastError());
    warp_row_sum_kernel<double, T><<<blocks_for((outer + 7) / 8), kThreads, 0, stream()>>>(
        partial.as<double>(), out, outer, splits, scale);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (short_columns(in, out, outer, reduce, inner)) {
      const int64_t n4 = outer * inner / 4;
      col_sum_short_kernel<<<grid_for(n4), kThreads, 0, stream()>>>(
          reinterpret_cast<const float4*>(in), reinterpret_cast<float4*>(out), outer, reduce,
          inner / 4, scale);
      KVC_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  sum_columns<T>(in, out, ColumnLayout::plain(outer, reduce, inner), scale);
}

template <typename T>
__global__ void expand_kernel(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner,
                              T scale) {
  const int64_t n = outer * reduce * inner;
  KVC_GRID_LOOP(idx, n) {
    const int64_t i = idx % inner, o = idx / (reduce * inner);
    out[idx] = scale * in[o * inner + i];
  }
}

}  // namespace

template <typename T>
void sum_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale) {
  sum3<T>(in, out, outer, reduce, inner, static_cast<double>(scale));
}

template <typename T>
void expand_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale) {
  const int64_t n = outer * reduce * inner;
  if (n <= 0) return;
  expand_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(in, out, outer, reduce, inner, scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// Axes are grouped into runs that are all kept or all summed; each summed run is one sum3 over
// (outer, run, inner), the largest first so later passes read the least data.
template <typename T>
void sum_to(const T* in, const int64_t* in_shape, const int64_t* out_shape, int ndim, T* out) {
  struct Run {
    int64_t size;
    bool summed;
  };
  std::vector<Run> runs;
  int64_t n_out = 1;
  for (int d = 0; d < ndim; ++d) {
    KVC_CHECK(out_shape[d] == in_shape[d] || out_shape[d] == 1, "sum_to: axis ", d, " of size ",
              in_shape[d], " cannot sum to ", out_shape[d]);
    n_out *= out_shape[d];
    if (in_shape[d] == 1) continue;
    const bool summed = out_shape[d] == 1;
    if (!runs.empty() && runs.back().summed == summed) {
      runs.back().size *= in_shape[d];
    } else {
      runs.push_back({in_shape[d], summed});
    }
  }
  if (n_out == 0) return;
  int64_t n_in = 1;
  for (const Run& r : runs) n_in *= r.size;
  if (n_in == 0) {
    KVC_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(n_out) * sizeof(T), stream()));
    return;
  }
  int summed_runs = 0;
  for (const Run& r : runs) summed_runs += r.summed;
  if (summed_runs == 0) {
    KVC_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n_out) * sizeof(T),
                                   cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  // (A, K, B, C) -> (K, C), C > 1: both sums in one column pass (a per-head bias's gradient),
  // where summing B first would itself need a pass of partial sums (its (A, K) column tiles too
  // few to fill the GPU): two launches instead of three. With more tiles the pass over B alone
  // spreads over more CTAs than one over (A, B) would, and the input is large: B first then.
  if (runs.size() == 4 && runs[0].summed && runs[2].summed) {
    const int64_t a = runs[0].size, k = runs[1].size, b = runs[2].size, c = runs[3].size;
    if (a * k * ((c + kColX - 1) / kColX) < 2 * int64_t{sm_count()}) {
      sum_columns<T>(in, out, {k, a * b, c, b * c, b, k * b * c}, 1.0);
      return;
    }
  }
  // Intermediates ping-pong between two scratch buffers, each sized at its first use: every
  // pass's output is smaller than the one before, so later uses fit.
  std::unique_ptr<Scratch> bufs[2];
  const T* src = in;
  int64_t src_numel = n_in;
  for (int pass = 0; pass < summed_runs; ++pass) {
    size_t pick = 0;
    for (size_t j = 0; j < runs.size(); ++j) {
      if (runs[j].summed && (!runs[pick].summed || runs[j].size > runs[pick].size)) pick = j;
    }
    int64_t outer = 1, inner = 1;
    for (size_t j = 0; j < pick; ++j) outer *= runs[j].size;
    for (size_t j = pick + 1; j < runs.size(); ++j) inner *= runs[j].size;
    const int64_t dst_numel = src_numel / runs[pick].size;
    T* dst = out;
    if (pass + 1 < summed_runs) {
      auto& buf = bufs[pass % 2];
      if (!buf) buf = std::make_unique<Scratch>(static_cast<size_t>(dst_numel) * sizeof(T));
      dst = buf->template as<T>();
    }
    sum3<T>(src, dst, outer, runs[pick].size, inner, 1.0);
    runs[pick].size = 1;
    runs[pick].summed = false;
    src = dst;
    src_numel = dst_numel;
  }
}

KVC_REDUCE_INSTANTIATE(float)
KVC_REDUCE_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda

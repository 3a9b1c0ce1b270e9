// CUDA permute (a shared-memory tiled transpose when the innermost axis moves) and narrow.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/permute.h"

namespace kvc::kernels::cuda {

namespace {

// The permutation after size-1 axes are dropped and axes that stay neighbours are merged.
struct Layout {
  int ndim = 0;
  int64_t out_shape[kMaxDims] = {};
  int64_t in_stride[kMaxDims] = {};  // element stride in `in` of each output axis
};

template <typename T>
__global__ void permute_generic_kernel(const T* in, T* out, int64_t n, Layout l) {
  KVC_GRID_LOOP(idx, n) {
    int64_t rest = idx, src = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      src += (rest % l.out_shape[d]) * l.in_stride[d];
      rest /= l.out_shape[d];
    }
    out[idx] = in[src];
  }
}

constexpr int kTile = 32, kTileRows = 8;

// The tiled case: input axis `a` is innermost in `in` (stride 1) and axis `b` innermost in `out`
// (stride 1). A block reads a 32 x 32 tile coalesced along a, writes it coalesced along b.
// The remaining axes form a batch, walked through their sizes and strides.
struct TileLayout {
  int64_t size_a = 0, size_b = 0;
  int64_t in_stride_b = 0, out_stride_a = 0;
  int batch_ndim = 0;
  int64_t batch_shape[kMaxDims] = {};
  int64_t batch_in_stride[kMaxDims] = {};
  int64_t batch_out_stride[kMaxDims] = {};
};

template <typename T>
__global__ void permute_tiled_kernel(const T* in, T* out, int64_t batch, TileLayout l) {
  __shared__ T tile[kTile][kTile + 1];  // +1: column reads hit 32 different banks
  const int64_t tiles_a = (l.size_a + kTile - 1) / kTile;
  const int64_t tiles_b = (l.size_b + kTile - 1) / kTile;
  const int64_t tasks = tiles_a * tiles_b * batch;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t a0 = (task % tiles_a) * kTile;
    const int64_t b0 = ((task / tiles_a) % tiles_b) * kTile;
    int64_t rest = task / (tiles_a * tiles_b), in_base = 0, out_base = 0;
    for (int d = l.batch_ndim - 1; d >= 0; --d) {
      const int64_t c = rest % l.batch_shape[d];
      rest /= l.batch_shape[d];
      in_base += c * l.batch_in_stride[d];
      out_base += c * l.batch_out_stride[d];
    }
#pragma unroll
    for (int j = 0; j < kTile; j += kTileRows) {
      const int64_t bi = b0 + threadIdx.y + j, ai = a0 + threadIdx.x;
      if (bi < l.size_b && ai < l.size_a) {
        tile[threadIdx.y + j][threadIdx.x] = in[in_base + bi * l.in_stride_b + ai];
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; j += kTileRows) {
      const int64_t ai = a0 + threadIdx.y + j, bi = b0 + threadIdx.x;
      if (bi < l.size_b && ai < l.size_a) {
        out[out_base + ai * l.out_stride_a + bi] = tile[threadIdx.x][threadIdx.y + j];
      }
    }
    __syncthreads();  // the tile is refilled by the next task
  }
}

template <typename T>
__global__ void narrow_kernel(const T* in, T* out, int64_t outer, int64_t axis, int64_t inner,
                              int64_t start, int64_t length) {
  const int64_t n = outer * length * inner;
  KVC_GRID_LOOP(idx, n) {
    const int64_t i = idx % inner, r = (idx / inner) % length, o = idx / (inner * length);
    out[idx] = in[(o * axis + start + r) * inner + i];
  }
}

template <typename T>
__global__ void narrow_backward_kernel(const T* gy, T* gx, int64_t outer, int64_t axis,
                                       int64_t inner, int64_t start, int64_t length) {
  const int64_t n = outer * axis * inner;
  KVC_GRID_LOOP(idx, n) {
    const int64_t i = idx % inner, r = (idx / inner) % axis, o = idx / (inner * axis);
    gx[idx] = (r >= start && r < start + length) ? gy[(o * length + r - start) * inner + i] : T(0);
  }
}

}  // namespace

template <typename T>
void permute(const T* in, T* out, const int64_t* in_shape, const int* perm, int ndim) {
  KVC_CHECK(ndim >= 0 && ndim <= kMaxDims, "permute: ", ndim, " axes (at most ", kMaxDims, ")");
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= in_shape[d];
  if (n == 0) return;

  // Input axes that survive (size > 1), renumbered; then merge output neighbours that are also
  // input neighbours in the same order.
  std::vector<int> keep_index(ndim, -1);
  std::vector<int64_t> shape;
  for (int d = 0; d < ndim; ++d) {
    if (in_shape[d] != 1) {
      keep_index[d] = static_cast<int>(shape.size());
      shape.push_back(in_shape[d]);
    }
  }
  std::vector<int> p;  // output order of surviving input axes
  for (int k = 0; k < ndim; ++k) {
    if (keep_index[perm[k]] >= 0) p.push_back(keep_index[perm[k]]);
  }
  // groups: runs of output axes whose input axes are consecutive.
  std::vector<std::vector<int>> groups;
  for (int ax : p) {
    if (!groups.empty() && groups.back().back() + 1 == ax) {
      groups.back().push_back(ax);
    } else {
      groups.push_back({ax});
    }
  }
  // Collapsed input: groups in input order.
  const int D = static_cast<int>(groups.size());
  std::vector<int> order(D);  // order[j] = output position of the j-th group in input order
  for (int k = 0; k < D; ++k) order[k] = k;
  std::sort(order.begin(), order.end(),
            [&](int x, int y) { return groups[x].front() < groups[y].front(); });
  std::vector<int64_t> gsize(D), in_stride(D), out_stride(D);
  for (int k = 0; k < D; ++k) {
    gsize[k] = 1;
    for (int ax : groups[k]) gsize[k] *= shape[ax];
  }
  int64_t s = 1;
  for (int j = D - 1; j >= 0; --j) {
    in_stride[order[j]] = s;
    s *= gsize[order[j]];
  }
  s = 1;
  for (int k = D - 1; k >= 0; --k) {
    out_stride[k] = s;
    s *= gsize[k];
  }

  if (D <= 1 || in_stride[D - 1] == 1) {
    if (D <= 1) {  // nothing moves
      KVC_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(T),
                                     cudaMemcpyDeviceToDevice, stream()));
      return;
    }
    // The innermost axis stays innermost: reads and writes are both coalesced along it.
    Layout l;
    l.ndim = D;
    for (int k = 0; k < D; ++k) {
      l.out_shape[k] = gsize[k];
      l.in_stride[k] = in_stride[k];
    }
    permute_generic_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(in, out, n, l);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  TileLayout l;
  const int kb = D - 1;         // output position of input axis b (innermost in out)
  const int ka = order[D - 1];  // output position of input axis a (innermost in in)
  l.size_a = gsize[ka];
  l.size_b = gsize[kb];
  l.in_stride_b = in_stride[kb];
  l.out_stride_a = out_stride[ka];
  int64_t batch = 1;
  for (int k = 0; k < D; ++k) {
    if (k == ka || k == kb) continue;
    l.batch_shape[l.batch_ndim] = gsize[k];
    l.batch_in_stride[l.batch_ndim] = in_stride[k];
    l.batch_out_stride[l.batch_ndim] = out_stride[k];
    ++l.batch_ndim;
    batch *= gsize[k];
  }
  const int64_t tasks = ((l.size_a + kTile - 1) / kTile) * ((l.size_b + kTile - 1) / kTile) * batch;
  const int blocks = grid_for(tasks * kTile * kTileRows, kTile * kTileRows);
  permute_tiled_kernel<T><<<blocks, dim3(kTile, kTileRows), 0, stream()>>>(in, out, batch, l);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void narrow(const T* in, T* out, int64_t outer, int64_t axis, int64_t inner, int64_t start,
            int64_t length) {
  const int64_t n = outer * length * inner;
  if (n <= 0) return;
  narrow_kernel<T>
      <<<grid_for(n), kThreads, 0, stream()>>>(in, out, outer, axis, inner, start, length);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void narrow_backward(const T* gy, T* gx, int64_t outer, int64_t axis, int64_t inner, int64_t start,
                     int64_t length) {
  const int64_t n = outer * axis * inner;
  if (n <= 0) return;
  narrow_backward_kernel<T>
      <<<grid_for(n), kThreads, 0, stream()>>>(gy, gx, outer, axis, inner, start, length);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_PERMUTE_INSTANTIATE(float)
KVC_PERMUTE_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda

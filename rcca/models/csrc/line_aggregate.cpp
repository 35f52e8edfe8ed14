// CCA-3D's weighted sums along the lines (Eq. 3 of the paper) as one CPU kernel: `line_aggregate` of
// rcca/models/attention.py for float32 and float64 maps, built on first use by rcca/models/compiled.py.
//
// For an N x T x H x W grid of positions with K channels and weights N x T x H x W x (T + H + W):
//   out[p] = base[p] + sum_t' weights[p, t'] values[n, t', h, w] + sum_h' weights[p, T + h'] values[n, t, h', w]
//                    + sum_w' weights[p, T + H + w'] values[n, t, h, w'],
// and with `transpose` each line's weight matrix is transposed (the adjoint map of the backward pass):
//   out[n, t', h, w] gets weights[n, t, h, w, t'] values[n, t, h, w], and so on along H and W.
// Each line's product (L x L weights times L x K values) is computed in register tiles of 4 output rows and
// 2 vectors of channels (then 1 vector), written or added straight into the output: no scratch map and no
// pass that sums maps. K must fill whole 64-byte vectors (16 float32 or 8 float64 channels; the Python side
// takes the ATen path otherwise). Two parallel regions: one item per (clip, row h) writes base + the W and T products of its
// positions, then one item per (clip, frame t) adds the H products.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstring>
#include <optional>
#include <vector>

namespace {

// 64-byte vectors of T through GCC/Clang vector extensions: one AVX-512 register, or two AVX2 ones.
template <typename T>
struct Vec {
  static constexpr int64_t lanes = 64 / sizeof(T);
  typedef T type __attribute__((vector_size(64)));
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
  static type splat(T x) { return type{} + x; }
};

// Rows of a map: element (i, k) at data[i * stride + k].
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* row(int64_t i) const { return data + i * stride; }
};

// The channels [k, k + vectors * lanes) of one line's product (see `line_product`): tiles of 4 output rows
// of `vectors` vectors each, their accumulators in registers, then the last rows one at a time.
template <typename T, int vectors>
void line_tiles(Rows<T> out, Rows<const T> start, Rows<const T> values, const T* weights, int64_t wi, int64_t wj,
                int64_t length, int64_t k) {
  using V = Vec<T>;
  using vec = typename V::type;
  constexpr int64_t lanes = V::lanes;
  int64_t i = 0;
  for (; i + 4 <= length; i += 4) {
    vec acc[4][vectors];
    for (int r = 0; r < 4; ++r) {
      for (int c = 0; c < vectors; ++c) acc[r][c] = start.data ? V::load(start.row(i + r) + k + c * lanes) : V::splat(0);
    }
    for (int64_t j = 0; j < length; ++j) {
      vec x[vectors];
      for (int c = 0; c < vectors; ++c) x[c] = V::load(values.row(j) + k + c * lanes);
      const T* weight = weights + i * wi + j * wj;
      for (int r = 0; r < 4; ++r) {
        const vec w = V::splat(weight[r * wi]);
        for (int c = 0; c < vectors; ++c) acc[r][c] += w * x[c];
      }
    }
    for (int r = 0; r < 4; ++r) {
      for (int c = 0; c < vectors; ++c) V::store(out.row(i + r) + k + c * lanes, acc[r][c]);
    }
  }
  for (; i < length; ++i) {
    vec acc[vectors];
    for (int c = 0; c < vectors; ++c) acc[c] = start.data ? V::load(start.row(i) + k + c * lanes) : V::splat(0);
    for (int64_t j = 0; j < length; ++j) {
      const vec w = V::splat(weights[i * wi + j * wj]);
      for (int c = 0; c < vectors; ++c) acc[c] += w * V::load(values.row(j) + k + c * lanes);
    }
    for (int c = 0; c < vectors; ++c) V::store(out.row(i) + k + c * lanes, acc[c]);
  }
}

// One line's product: out[i] = start[i] + sum_j weight(i, j) values[j] for i, j < length, over channels
// [0, channels) (a whole number of vectors), with weight(i, j) = weights[i * wi + j * wj]; zeros when
// `start` is null. `start` may be `out` (each tile reads its rows before it writes them).
template <typename T>
void line_product(Rows<T> out, Rows<const T> start, Rows<const T> values, const T* weights, int64_t wi,
                  int64_t wj, int64_t length, int64_t channels) {
  constexpr int64_t lanes = Vec<T>::lanes;
  int64_t k = 0;
  for (; k + 2 * lanes <= channels; k += 2 * lanes) line_tiles<T, 2>(out, start, values, weights, wi, wj, length, k);
  for (; k < channels; k += lanes) line_tiles<T, 1>(out, start, values, weights, wi, wj, length, k);
}

template <typename T>
void aggregate(const T* weights, const T* values, int64_t value_stride, const T* base, T* out, int64_t n,
               int64_t t, int64_t h, int64_t w, int64_t k, bool transpose) {
  const int64_t columns = t + h + w, frame = h * w;  // frame: positions between two frames
  // A line through positions p_0 + i * step: weight(i, j) = weights[p_i, first + j], or weights[p_j, first + i]
  // transposed, i.e. strides (step * columns, 1) or (1, step * columns) from weights[p_0, first].
  auto product = [&](int64_t p, int64_t step, int64_t first, int64_t length, const T* start) {
    const int64_t along = step * columns;
    line_product<T>(Rows<T>{out + p * k, step * k}, Rows<const T>{start ? start + p * k : nullptr, step * k},
                    Rows<const T>{values + p * value_stride, step * value_stride}, weights + p * columns + first,
                    transpose ? 1 : along, transpose ? along : 1, length, k);
  };
  // Region 1, one item per (clip, row): base + the W products write its positions, the T products add to them.
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t first = (item / h) * t * frame + (item % h) * w;  // position (clip, 0, row, 0)
      for (int64_t f = 0; f < t; ++f) product(first + f * frame, 1, t + h, w, base);
      for (int64_t x = 0; x < w; ++x) product(first + x, frame, 0, t, out);
    }
  });
  // Region 2, one item per (clip, frame): the H products added.
  at::parallel_for(0, n * t, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      for (int64_t x = 0; x < w; ++x) product(item * frame + x, w, t, h, out);
    }
  });
}

// weights: P x (T + H + W), contiguous; values: P x K with unit channel stride; base: None or P x K, contiguous;
// grid: N, T, H, W with P = N T H W. Returns a new contiguous N x T x H x W x K map.
torch::Tensor line_aggregate(const torch::Tensor& weights, const torch::Tensor& values,
                             const std::optional<torch::Tensor>& base, std::vector<int64_t> grid, bool transpose) {
  TORCH_CHECK(grid.size() == 4, "line_aggregate: grid must be N, T, H, W");
  const int64_t n = grid[0], t = grid[1], h = grid[2], w = grid[3], positions = n * t * h * w;
  TORCH_CHECK(values.dim() == 2 && values.device().is_cpu() && values.size(0) == positions &&
                  (values.stride(1) == 1 || values.size(1) <= 1),
              "line_aggregate: values must be one row per position with unit channel stride, on the CPU");
  const int64_t k = values.size(1);
  TORCH_CHECK(k % (64 / values.element_size()) == 0, "line_aggregate: the channels must fill whole 64-byte vectors");
  TORCH_CHECK(weights.device().is_cpu() && (!base || base->device().is_cpu()),
              "line_aggregate: weights and base must be on the CPU");
  TORCH_CHECK(weights.is_contiguous() && weights.sizes() == torch::IntArrayRef({positions, t + h + w}) &&
                  weights.scalar_type() == values.scalar_type(),
              "line_aggregate: weights must be contiguous P x (T + H + W), of the values' dtype");
  auto out = torch::empty({n, t, h, w, k}, values.options());
  if (base) {
    TORCH_CHECK(base->is_contiguous() && base->sizes() == values.sizes() && base->scalar_type() == values.scalar_type(),
                "line_aggregate: base must be contiguous, of the output's shape and dtype");
  }
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "line_aggregate", [&] {
    aggregate<scalar_t>(weights.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), values.stride(0),
                        base ? base->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), n, t, h, w, k, transpose);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("line_aggregate", &line_aggregate, "CCA-3D's weighted sums along the lines (see the file's head)",
             pybind11::arg("weights"), pybind11::arg("values"), pybind11::arg("base"), pybind11::arg("grid"),
             pybind11::arg("transpose"), pybind11::call_guard<pybind11::gil_scoped_release>());
}

// CCA-3D's products along the lines as CPU kernels, for float32 and float64 maps: `line_affinities` and
// `line_aggregate` of rcca/models/attention.py, built on first use by rcca/models/compiled.py.
//
// For an N x T x H x W grid of positions p = (n, t, h, w), K channels and T + H + W columns [t' | h' | w']:
//   line_affinities: energies[p, t'] = <a[p], b[n, t', h, w]>, energies[p, T + h'] = <a[p], b[n, t, h', w]>,
//                    energies[p, T + H + w'] = <a[p], b[n, t, h, w']>;
//   line_aggregate:  out[p] = base[p] + sum_t' weights[p, t'] values[n, t', h, w]
//                    + sum_h' weights[p, T + h'] values[n, t, h', w] + sum_w' weights[p, T + H + w'] values[n, t, h, w'],
//                    and with `transpose` each line's weight matrix transposed (the adjoint map of the backward
//                    pass): out[n, t', h, w] gets weights[n, t, h, w, t'] values[n, t, h, w], and so on.
// Each line's product is computed in register tiles, written straight into the result: the dot products in
// tiles of 4 x 4 rows, the weighted sums in tiles of 4 output rows and 2 vectors of channels (then 1 vector).
// No scratch map, no pass that sums or joins maps. K must fill whole 64-byte vectors (16 float32 or 8 float64
// channels; the Python side takes the ATen path otherwise). `line_affinities` is one parallel region, its
// items writing disjoint entries; `line_aggregate` two: one item per (clip, row h) writes base + the W and T
// products of its positions, then one item per (clip, frame t) adds the H products.

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
  static T sum(type v) { return halves_sum<64>(&v); }

 private:
  // The sum of the `bytes` / sizeof(T) elements at p, by adding halves (vector additions, not one lane at a time).
  template <int bytes>
  static T halves_sum(const void* p) {
    if constexpr (bytes == 2 * sizeof(T)) {
      T pair[2];
      std::memcpy(pair, p, sizeof(pair));
      return pair[0] + pair[1];
    } else {
      typedef T half __attribute__((vector_size(bytes / 2)));
      half low, high;
      std::memcpy(&low, p, sizeof(half));
      std::memcpy(&high, static_cast<const char*>(p) + sizeof(half), sizeof(half));
      const half total = low + high;
      return halves_sum<bytes / 2>(&total);
    }
  }
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

// Dot products of rows i..i+ri of `a` with rows j..j+rj of `b` over channels [0, channels) (whole vectors),
// into energies[row * stride + column].
template <typename T, int ri, int rj>
void dot_tile(T* energies, int64_t stride, Rows<const T> a, Rows<const T> b, int64_t i, int64_t j, int64_t channels) {
  using V = Vec<T>;
  using vec = typename V::type;
  vec acc[ri][rj];
  for (int r = 0; r < ri; ++r) {
    for (int c = 0; c < rj; ++c) acc[r][c] = V::splat(0);
  }
  for (int64_t k = 0; k < channels; k += V::lanes) {
    vec x[ri], y[rj];
    for (int r = 0; r < ri; ++r) x[r] = V::load(a.row(i + r) + k);
    for (int c = 0; c < rj; ++c) y[c] = V::load(b.row(j + c) + k);
    for (int r = 0; r < ri; ++r) {
      for (int c = 0; c < rj; ++c) acc[r][c] += x[r] * y[c];
    }
  }
  for (int r = 0; r < ri; ++r) {
    for (int c = 0; c < rj; ++c) energies[(i + r) * stride + j + c] = V::sum(acc[r][c]);
  }
}

// One line's dot products: energies[i * stride + j] = <a[i], b[j]> for i, j < length, in tiles of 4 x 4.
template <typename T>
void line_dots(T* energies, int64_t stride, Rows<const T> a, Rows<const T> b, int64_t length, int64_t channels) {
  int64_t i = 0;
  for (; i + 4 <= length; i += 4) {
    int64_t j = 0;
    for (; j + 4 <= length; j += 4) dot_tile<T, 4, 4>(energies, stride, a, b, i, j, channels);
    for (; j < length; ++j) dot_tile<T, 4, 1>(energies, stride, a, b, i, j, channels);
  }
  for (; i < length; ++i) {
    int64_t j = 0;
    for (; j + 4 <= length; j += 4) dot_tile<T, 1, 4>(energies, stride, a, b, i, j, channels);
    for (; j < length; ++j) dot_tile<T, 1, 1>(energies, stride, a, b, i, j, channels);
  }
}

template <typename T>
void affinities(const T* a, int64_t a_stride, const T* b, int64_t b_stride, T* energies, int64_t n, int64_t t,
                int64_t h, int64_t w, int64_t k) {
  const int64_t columns = t + h + w, frame = h * w;
  // The line through positions p_0 + i * step, its columns from `first`: energies[p_i, first + j] = <a[p_i], b[p_j]>.
  auto dots = [&](int64_t p, int64_t step, int64_t first, int64_t length) {
    line_dots<T>(energies + p * columns + first, step * columns, Rows<const T>{a + p * a_stride, step * a_stride},
                 Rows<const T>{b + p * b_stride, step * b_stride}, length, k);
  };
  // Items [0, N H): the W and T lines of one (clip, row); the rest: the H lines of one (clip, frame).
  at::parallel_for(0, n * h + n * t, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (item < n * h) {
        const int64_t first = (item / h) * t * frame + (item % h) * w;  // position (clip, 0, row, 0)
        for (int64_t f = 0; f < t; ++f) dots(first + f * frame, 1, t + h, w);
        for (int64_t x = 0; x < w; ++x) dots(first + x, frame, 0, t);
      } else {
        for (int64_t x = 0; x < w; ++x) dots((item - n * h) * frame + x, w, t, h);
      }
    }
  });
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

// The grid N, T, H, W and the number of positions P = N T H W; checks a P x K map of rows with unit channel
// stride on the CPU, K filling whole vectors.
int64_t checked_positions(const std::vector<int64_t>& grid, const torch::Tensor& rows, const char* name) {
  TORCH_CHECK(grid.size() == 4, "rcca line kernels: the grid must be N, T, H, W");
  const int64_t positions = grid[0] * grid[1] * grid[2] * grid[3];
  TORCH_CHECK(rows.dim() == 2 && rows.device().is_cpu() && rows.size(0) == positions &&
                  (rows.stride(1) == 1 || rows.size(1) <= 1),
              "rcca line kernels: ", name, " must be one row per position with unit channel stride, on the CPU");
  TORCH_CHECK(rows.size(1) % (64 / rows.element_size()) == 0,
              "rcca line kernels: the channels of ", name, " must fill whole 64-byte vectors");
  return positions;
}

// a, b: P x K, one dtype. Returns a new contiguous N x T x H x W x (T + H + W) map of their dtype.
torch::Tensor line_affinities(const torch::Tensor& a, const torch::Tensor& b, std::vector<int64_t> grid) {
  checked_positions(grid, a, "a");
  checked_positions(grid, b, "b");
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(), "line_affinities: a and b differ in shape or dtype");
  const int64_t n = grid[0], t = grid[1], h = grid[2], w = grid[3];
  auto energies = torch::empty({n, t, h, w, t + h + w}, a.options());
  if (energies.numel() == 0) return energies;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "line_affinities", [&] {
    affinities<scalar_t>(a.data_ptr<scalar_t>(), a.stride(0), b.data_ptr<scalar_t>(), b.stride(0),
                         energies.data_ptr<scalar_t>(), n, t, h, w, a.size(1));
  });
  return energies;
}

// weights: P x (T + H + W), contiguous; values: P x K; base: None or P x K, contiguous. Returns a new
// contiguous N x T x H x W x K map.
torch::Tensor line_aggregate(const torch::Tensor& weights, const torch::Tensor& values,
                             const std::optional<torch::Tensor>& base, std::vector<int64_t> grid, bool transpose) {
  const int64_t positions = checked_positions(grid, values, "values");
  const int64_t n = grid[0], t = grid[1], h = grid[2], w = grid[3], k = values.size(1);
  TORCH_CHECK(weights.device().is_cpu() && (!base || base->device().is_cpu()),
              "line_aggregate: weights and base must be on the CPU");
  TORCH_CHECK(weights.is_contiguous() && weights.sizes() == torch::IntArrayRef({positions, t + h + w}) &&
                  weights.scalar_type() == values.scalar_type(),
              "line_aggregate: weights must be contiguous P x (T + H + W), of the values' dtype");
  auto out = torch::empty({n, t, h, w, k}, values.options());
  if (base) {
    TORCH_CHECK(base->is_contiguous() && base->sizes() == values.sizes() && base->scalar_type() == values.scalar_type(),
                "line_aggregate: base must be contiguous, of the values' shape and dtype");
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
  using pybind11::arg;
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  module.def("line_affinities", &line_affinities, "Dot products along the lines (see the file's head)", arg("a"),
             arg("b"), arg("grid"), no_gil);
  module.def("line_aggregate", &line_aggregate, "Weighted sums along the lines (see the file's head)",
             arg("weights"), arg("values"), arg("base"), arg("grid"), arg("transpose"), no_gil);
}

// The kernel gradient of a 3D convolution, on AVX-512.
//
//   dw[kd, kh, kw, i, j] = sum over n, d, h, w of
//       a[n, s*d + kd - pd, s*h + kh - ph, s*w + kw - pw, i] * b[n, d, h, w, j]
//
// (values of a outside the volume are zero). With a the convolution's input
// and b the gradient of its output this is Conv3DBackpropFilter's result for
// stride s and padding p; with a the gradient of a transposed convolution's
// output and b its input (s = kernel size, p = 0) it is the transposed
// convolution's kernel gradient, in TensorFlow's [kd, kh, kw, out, in] order.
//
// oneDNN 3.2 (TensorFlow 2.15) computes these with an older jit kernel that
// reaches about 75% of the vector unit on 32-channel layers (and 20-45% on the
// strided and 2x2x2 ones); Eigen (TensorFlow 1.15) less. Here each tap is a
// matrix product over the voxels, computed in register tiles of up to 12 x 32
// (or 6 x 64) sums: per voxel two vector loads of b, one broadcast of a per row
// of the tile and 24 fused multiply-adds; a's channels are split evenly over
// the tiles (32 = 11 + 11 + 10). The work is cut into units of about 128
// positions of b (two rows of a 64-wide plane); each unit's rows of a and b are
// prefetched into the first-level cache while the unit before it computes.
// Units are summed in a fixed number of groups, each in unit order, and the
// groups in group order, so the result does not depend on the thread count.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace unet3d {
namespace {

using Index = tensorflow::int64;

// Positions of b per unit (rows of it, two at 64 wide): their rows of a and b stay in the first-level cache.
constexpr Index kPositionsPerUnit = 128;
constexpr Index kMaxGroups = 16;     // partial sums kept per op (fixed: thread count does not change the sums)
constexpr Index kTileRows = 12;      // rows (channels of a) per register tile
constexpr Index kCacheLine = 64;

struct Geometry {
  Index batch, depth, height, width, channels;          // b: [batch, depth, height, width, channels]
  Index a_depth, a_height, a_width, a_channels;         // a: [batch, a_depth, a_height, a_width, a_channels]
  Index k[3], pad[3], stride;

  Index taps() const { return k[0] * k[1] * k[2]; }
  Index result_size() const { return taps() * a_channels * channels; }
  // Positions p of b along an axis of b's size `size` whose a index s*p + t - pad lies in [0, a_size).
  static void Valid(Index size, Index a_size, Index stride, Index t, Index pad, Index* lo, Index* hi) {
    const Index shift = t - pad;  // a index = stride * p + shift
    *lo = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
    *hi = a_size - 1 - shift < 0 ? 0 : std::min(size, (a_size - 1 - shift) / stride + 1);
  }
};

// c[i][16 t + v] += sum over rows r and positions z of x[r * x_row + z * x_step + i] * y[r * y_row + z * y_step + 16 t + v]
// for i < TI, t < TJ; one cache line of `fetch` (`lines` of them) is prefetched per position.
template <int TI, int TJ>
__attribute__((target("avx512f"))) void Tile(const float* x, Index x_row, Index x_step, const float* y, Index y_row,
                                             Index y_step, Index rows, Index positions, float* c, Index c_row,
                                             const char* fetch, Index lines) {
  __m512 sum[TI][TJ];
  for (int i = 0; i < TI; ++i)
    for (int t = 0; t < TJ; ++t) sum[i][t] = _mm512_loadu_ps(c + i * c_row + 16 * t);
  for (Index r = 0; r < rows; ++r) {
    const float* xr = x + r * x_row;
    const float* yr = y + r * y_row;
    for (Index z = 0; z < positions; ++z) {
      if (lines > 0) {
        _mm_prefetch(fetch, _MM_HINT_T0);
        fetch += kCacheLine;
        --lines;
      }
      __m512 b[TJ];
      for (int t = 0; t < TJ; ++t) b[t] = _mm512_loadu_ps(yr + z * y_step + 16 * t);
      for (int i = 0; i < TI; ++i) {
        const __m512 a = _mm512_set1_ps(xr[z * x_step + i]);
        for (int t = 0; t < TJ; ++t) sum[i][t] = _mm512_fmadd_ps(a, b[t], sum[i][t]);
      }
    }
  }
  for (int i = 0; i < TI; ++i)
    for (int t = 0; t < TJ; ++t) _mm512_storeu_ps(c + i * c_row + 16 * t, sum[i][t]);
}

using TileFunction = void (*)(const float*, Index, Index, const float*, Index, Index, Index, Index, float*, Index,
                              const char*, Index);

// Tile<rows, TJ> for 1 <= rows <= MAX (rows above MAX never asked for).
template <int TJ, int MAX>
struct Tiles {
  static TileFunction For(Index rows) { return rows >= MAX ? Tile<MAX, TJ> : Tiles<TJ, MAX - 1>::For(rows); }
};
template <int TJ>
struct Tiles<TJ, 1> {
  static TileFunction For(Index) { return Tile<1, TJ>; }
};

// Columns (channels of b) per tile, in vectors of 16, and the most rows a tile of that width keeps in registers.
struct Width {
  int vectors;
  Index max_rows;
};

Width WidthAt(Index j, Index channels) {
  if (j + 64 <= channels) return {4, 6};
  if (j + 32 <= channels) return {2, kTileRows};
  return {1, kTileRows};
}

TileFunction TileOf(const Width& width, Index rows) {
  if (width.vectors == 4) return Tiles<4, 6>::For(rows);
  if (width.vectors == 2) return Tiles<2, kTileRows>::For(rows);
  return Tiles<1, kTileRows>::For(rows);
}

// The number of tiles for `channels` rows at most `max_rows` each, shared out evenly (32 = 11 + 11 + 10, not
// 12 + 12 + 8: a small last tile has too few independent sums to keep the multiply-add units busy).
Index TileCount(Index channels, Index max_rows) { return (channels + max_rows - 1) / max_rows; }

// A stretch of memory to bring into the cache: `lines` cache lines from `begin`.
struct Stretch {
  const char* begin = nullptr;
  Index lines = 0;
};

Stretch Span(const float* first, const float* end) {
  Stretch stretch;
  stretch.begin = reinterpret_cast<const char*>(first);
  stretch.lines = (reinterpret_cast<const char*>(end) - stretch.begin + kCacheLine - 1) / kCacheLine;
  return stretch;
}

class Calculation {
 public:
  Calculation(const Geometry& g, const float* a, const float* b) : g_(g), a_(a), b_(b) {
    rows_per_unit_ = std::max<Index>(1, std::min(g.height, kPositionsPerUnit / std::max<Index>(1, g.width)));
    hblocks_ = (g.height + rows_per_unit_ - 1) / rows_per_unit_;
    Index tiles_per_tap = 0;
    for (Index j = 0; j < g.channels;) {
      const Width width = WidthAt(j, g.channels);
      tiles_per_tap += TileCount(g.a_channels, width.max_rows);
      j += 16 * width.vectors;
    }
    tiles_per_row_ = std::max<Index>(1, g.k[2] * tiles_per_tap);
  }

  Index units() const { return g_.batch * g_.depth * hblocks_; }

  // Adds the terms of units [first, last) to c, in unit order.
  void Run(Index first, Index last, float* c) const {
    std::vector<Stretch> mine, next;
    Reads(first, &next);
    for (Index unit = first; unit < last; ++unit) {
      std::swap(mine, next);
      next.clear();
      if (unit + 1 < last) Reads(unit + 1, &next);
      Unit(unit, mine, next, c);
    }
  }

 private:
  struct Place {
    Index n, d, h0, h1;
  };

  Place Locate(Index unit) const {
    const Index block = unit % hblocks_, plane = unit / hblocks_;
    return {plane / g_.depth, plane % g_.depth, block * rows_per_unit_,
            std::min(g_.height, (block + 1) * rows_per_unit_)};
  }

  const float* ARow(Index n, Index d, Index h) const {
    return a_ + ((n * g_.a_depth + d) * g_.a_height + h) * g_.a_width * g_.a_channels;
  }
  const float* BRow(Index n, Index d, Index h) const {
    return b_ + ((n * g_.depth + d) * g_.height + h) * g_.width * g_.channels;
  }

  // The rows of a that tap row (kd, kh) reads for the unit's rows of b: valid h in [*lo, *hi).
  bool Rows(const Place& p, Index kd, Index kh, Index* a_d, Index* lo, Index* hi) const {
    *a_d = g_.stride * p.d + kd - g_.pad[0];
    if (*a_d < 0 || *a_d >= g_.a_depth) return false;
    Index valid_lo, valid_hi;
    Geometry::Valid(g_.height, g_.a_height, g_.stride, kh, g_.pad[1], &valid_lo, &valid_hi);
    *lo = std::max(p.h0, valid_lo);
    *hi = std::min(p.h1, valid_hi);
    return *lo < *hi;
  }

  // What a unit reads, in the order it reads it: its rows of b, then the rows of a of each (kd, kh).
  void Reads(Index unit, std::vector<Stretch>* out) const {
    const Place p = Locate(unit);
    out->push_back(Span(BRow(p.n, p.d, p.h0), BRow(p.n, p.d, p.h1)));
    for (Index kd = 0; kd < g_.k[0]; ++kd) {
      for (Index kh = 0; kh < g_.k[1]; ++kh) {
        Index a_d, lo, hi;
        if (!Rows(p, kd, kh, &a_d, &lo, &hi)) continue;
        const Index first = g_.stride * lo + kh - g_.pad[1], last = g_.stride * (hi - 1) + kh - g_.pad[1];
        out->push_back(Span(ARow(p.n, a_d, first), ARow(p.n, a_d, last + 1)));
      }
    }
  }

  void Unit(Index unit, const std::vector<Stretch>& mine, const std::vector<Stretch>& next, float* c) const {
    const Place p = Locate(unit);
    size_t phase = 1;  // mine[phase]: the rows of a this (kd, kh) reads
    for (Index kd = 0; kd < g_.k[0]; ++kd) {
      for (Index kh = 0; kh < g_.k[1]; ++kh) {
        Index a_d, lo, hi;
        if (!Rows(p, kd, kh, &a_d, &lo, &hi)) continue;
        // Fetched while this (kd, kh) computes: the next one's rows of a, or the next unit's first reads.
        Fetcher fetcher;
        if (phase + 1 < mine.size()) {
          fetcher.Add(mine[phase + 1]);
        } else {
          for (size_t i = 0; i < next.size() && i < 2; ++i) fetcher.Add(next[i]);
        }
        ++phase;
        fetcher.Share(tiles_per_row_);
        const Index a_h = g_.stride * lo + kh - g_.pad[1];
        for (Index kw = 0; kw < g_.k[2]; ++kw) {
          Index w_lo, w_hi;
          Geometry::Valid(g_.width, g_.a_width, g_.stride, kw, g_.pad[2], &w_lo, &w_hi);
          if (w_lo >= w_hi) continue;
          const Index a_w = g_.stride * w_lo + kw - g_.pad[2];
          const float* x = ARow(p.n, a_d, a_h) + a_w * g_.a_channels;
          const float* y = BRow(p.n, p.d, lo) + w_lo * g_.channels;
          float* tap = c + ((kd * g_.k[1] + kh) * g_.k[2] + kw) * g_.a_channels * g_.channels;
          TapProduct(x, y, hi - lo, w_hi - w_lo, tap, &fetcher);
        }
      }
    }
  }

  // Hands out the lines to prefetch (of up to two stretches) a few at a time, an equal share per tile.
  class Fetcher {
   public:
    void Add(const Stretch& stretch) {
      parts_[count_++] = stretch;
      total_ += stretch.lines;
    }
    void Share(Index tiles) { share_ = (total_ + tiles - 1) / tiles; }
    Stretch Next() {
      while (index_ < count_ && used_ >= parts_[index_].lines) {
        ++index_;
        used_ = 0;
      }
      Stretch out;
      if (index_ == count_) return out;
      out.begin = parts_[index_].begin + used_ * kCacheLine;
      out.lines = std::min(share_, parts_[index_].lines - used_);
      used_ += out.lines;
      return out;
    }

   private:
    Stretch parts_[2];
    int count_ = 0, index_ = 0;
    Index total_ = 0, share_ = 0, used_ = 0;
  };

  void TapProduct(const float* x, const float* y, Index rows, Index positions, float* tap, Fetcher* fetcher) const {
    const Index x_row = g_.stride * g_.a_width * g_.a_channels, x_step = g_.stride * g_.a_channels;
    const Index y_row = g_.width * g_.channels, y_step = g_.channels;
    for (Index j = 0; j < g_.channels;) {
      const Width width = WidthAt(j, g_.channels);
      const Index tiles = TileCount(g_.a_channels, width.max_rows);
      for (Index t = 0, i = 0; t < tiles; ++t) {
        const Index tile_rows = g_.a_channels / tiles + (t < g_.a_channels % tiles ? 1 : 0);
        const Stretch fetch = fetcher->Next();
        TileOf(width, tile_rows)(x + i, x_row, x_step, y + j, y_row, y_step, rows, positions,
                                 tap + i * g_.channels + j, g_.channels, fetch.begin, fetch.lines);
        i += tile_rows;
      }
      j += 16 * width.vectors;
    }
  }

  Geometry g_;
  const float* a_;
  const float* b_;
  Index hblocks_;
  Index rows_per_unit_;
  Index tiles_per_row_;  // tile calls per (kd, kh): the prefetch of the next reads is shared out over them
};

class ConvKernelGradientOp : public tensorflow::OpKernel {
 public:
  explicit ConvKernelGradientOp(tensorflow::OpKernelConstruction* context) : OpKernel(context) {
    std::vector<int> kernel, pad;
    OP_REQUIRES_OK(context, context->GetAttr("kernel", &kernel));
    OP_REQUIRES_OK(context, context->GetAttr("pad", &pad));
    OP_REQUIRES_OK(context, context->GetAttr("stride", &stride_));
    OP_REQUIRES(context, kernel.size() == 3 && pad.size() == 3,
                tensorflow::errors::InvalidArgument("kernel and pad need three values each"));
    OP_REQUIRES(context, stride_ >= 1, tensorflow::errors::InvalidArgument("stride must be positive, got ", stride_));
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES(context, kernel[i] >= 1 && pad[i] >= 0 && pad[i] < kernel[i],
                  tensorflow::errors::InvalidArgument("kernel sizes must be positive and pads in [0, kernel), got "
                                                      "kernel ", kernel[i], " pad ", pad[i]));
      kernel_[i] = kernel[i];
      pad_[i] = pad[i];
    }
  }

  void Compute(tensorflow::OpKernelContext* context) override {
    OP_REQUIRES(context, __builtin_cpu_supports("avx512f"),
                tensorflow::errors::Unimplemented("Unet3dConvKernelGradient needs a CPU with AVX-512"));
    const tensorflow::Tensor& a = context->input(0);
    const tensorflow::Tensor& b = context->input(1);
    OP_REQUIRES(context, a.dims() == 5 && b.dims() == 5 && a.dim_size(0) == b.dim_size(0),
                tensorflow::errors::InvalidArgument("a and b must be [batch, depth, height, width, channels] of the "
                                                    "same batch, got ", a.shape().DebugString(), " and ",
                                                    b.shape().DebugString()));
    Geometry g;
    g.batch = b.dim_size(0);
    g.depth = b.dim_size(1);
    g.height = b.dim_size(2);
    g.width = b.dim_size(3);
    g.channels = b.dim_size(4);
    g.a_depth = a.dim_size(1);
    g.a_height = a.dim_size(2);
    g.a_width = a.dim_size(3);
    g.a_channels = a.dim_size(4);
    g.stride = stride_;
    for (int i = 0; i < 3; ++i) {
      g.k[i] = kernel_[i];
      g.pad[i] = pad_[i];
    }
    OP_REQUIRES(context, g.channels % 16 == 0,
                tensorflow::errors::InvalidArgument("b's channels must be a multiple of 16, got ", g.channels));
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, tensorflow::TensorShape({g.k[0], g.k[1], g.k[2], g.a_channels, g.channels}), &out));
    float* result = out->flat<float>().data();
    const Index size = g.result_size();
    std::fill(result, result + size, 0.0f);
    const Calculation calculation(g, a.flat<float>().data(), b.flat<float>().data());
    const Index units = calculation.units();
    if (units == 0 || size == 0) return;

    // Groups of consecutive units, at most 64 MB of partial sums.
    const Index groups = std::max<Index>(1, std::min({kMaxGroups, units, (Index(64) << 20) / (4 * size)}));
    std::vector<float> partial(groups * size, 0.0f);
    auto* pool = context->device()->tensorflow_cpu_worker_threads()->workers;
    const Index flops = 2 * g.taps() * g.a_channels * g.channels * g.batch * g.depth * g.height * g.width;
    pool->ParallelFor(groups, flops / groups, [&](Index begin, Index end) {
      for (Index group = begin; group < end; ++group) {
        calculation.Run(units * group / groups, units * (group + 1) / groups, partial.data() + group * size);
      }
    });
    pool->ParallelFor(size, groups, [&](Index begin, Index end) {
      for (Index group = 0; group < groups; ++group) {
        const float* from = partial.data() + group * size;
        for (Index i = begin; i < end; ++i) result[i] += from[i];
      }
    });
  }

 private:
  Index kernel_[3] = {1, 1, 1}, pad_[3] = {0, 0, 0};
  int stride_ = 1;
};

}  // namespace
}  // namespace unet3d

REGISTER_OP("Unet3dConvKernelGradient")
    .Input("a: float")
    .Input("b: float")
    .Output("dw: float")
    .Attr("kernel: list(int)")
    .Attr("pad: list(int)")
    .Attr("stride: int")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle a, b;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &a));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 5, &b));
      std::vector<int> kernel;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel", &kernel));
      if (kernel.size() != 3) return tensorflow::errors::InvalidArgument("kernel needs three values");
      c->set_output(0, c->MakeShape({c->MakeDim(kernel[0]), c->MakeDim(kernel[1]), c->MakeDim(kernel[2]),
                                     c->Dim(a, 4), c->Dim(b, 4)}));
      return tensorflow::Status();
    })
    .Doc("dw[kd, kh, kw, i, j] = sum over n, d, h, w of a[n, s*d + kd - pd, s*h + kh - ph, s*w + kw - pw, i] * "
         "b[n, d, h, w, j], a taken as zero outside its volume.");

REGISTER_KERNEL_BUILDER(Name("Unet3dConvKernelGradient").Device(tensorflow::DEVICE_CPU),
                        unet3d::ConvKernelGradientOp);

// Instance norm and leaky ReLU in one CPU kernel, forward and backward.
//
// The network normalises every convolution's output per sample and channel
// and applies a leaky ReLU. Written with TensorFlow's own ops that is one
// FusedBatchNormV3 per sample (the samples unstacked, the results stacked)
// and a LeakyRelu, each a pass over the activations in memory, and as many
// again for the gradients. These two ops do the same work in the fewest
// passes over [batch, voxels..., channels] tensors (NDHWC, channels last):
//
//   forward:  read x for the statistics, read x again and write y   (3 passes)
//   backward: read x and dy for two sums, read them again, write dx (5 passes)
//
// Statistics are the biased ones FusedBatchNormV3 uses in training mode.
// Sums are taken over fixed blocks of voxels into double precision, each value
// shifted by its channel's first voxel (so a large mean does not swamp the
// variance), and the blocks are added in order: results do not depend on how
// many threads ran or which thread took which block.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace unet3d {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
using Index = tensorflow::int64;

// About 64K values per block: large enough to amortise a task, small enough
// to share out among threads. Depends on the channel count only, never on
// the thread count, so the summation order is fixed.
Index VoxelsPerBlock(Index channels) { return std::max<Index>(1, (Index{1} << 16) / channels); }
// Values are first summed in float over this many voxels, then added in double.
constexpr Index kChunk = 32;

// The per-voxel loops, over one voxel's channels. Free functions with restrict
// pointers and scalars by value, so that the compiler vectorises them over the
// channels (reached through a lambda's captures, it had to assume aliasing;
// `omp simd` also turns the activation's branch into a blend, with -fopenmp-simd).
// leaky_relu(z) = max(z, alpha * z) for 0 <= alpha <= 1, as TensorFlow computes it.
inline void AccumulateMoments(const float* __restrict row, const float* __restrict shift, Index channels,
                              float* __restrict sum, float* __restrict squares) {
#pragma omp simd
  for (Index c = 0; c < channels; ++c) {
    const float d = row[c] - shift[c];
    sum[c] += d;
    squares[c] += d * d;
  }
}

inline void NormalizeRow(const float* __restrict row, const float* __restrict mean, const float* __restrict scale,
                         const float* __restrict beta, float alpha, Index channels, float* __restrict out) {
#pragma omp simd
  for (Index c = 0; c < channels; ++c) {
    const float z = (row[c] - mean[c]) * scale[c] + beta[c];
    out[c] = std::max(z, z * alpha);
  }
}

// dz = dy * leaky_relu'(z), z = xhat * gamma + beta, xhat = (x - mean) * rstd.
inline void AccumulateGradientSums(const float* __restrict row, const float* __restrict upstream,
                                   const float* __restrict mean, const float* __restrict rstd,
                                   const float* __restrict gamma, const float* __restrict beta, float alpha,
                                   Index channels, float* __restrict sum_dz, float* __restrict sum_dz_xhat) {
#pragma omp simd
  for (Index c = 0; c < channels; ++c) {
    const float xhat = (row[c] - mean[c]) * rstd[c];
    const float scaled = upstream[c] * alpha;  // computed either way: the select is then a blend
    const float dz = xhat * gamma[c] + beta[c] > 0.0f ? upstream[c] : scaled;
    sum_dz[c] += dz;
    sum_dz_xhat[c] += dz * xhat;
  }
}

inline void GradientRow(const float* __restrict row, const float* __restrict upstream, const float* __restrict mean,
                        const float* __restrict rstd, const float* __restrict gamma, const float* __restrict beta,
                        const float* __restrict factor, const float* __restrict mean_dz,
                        const float* __restrict mean_dz_xhat, float alpha, Index channels, float* __restrict out) {
#pragma omp simd
  for (Index c = 0; c < channels; ++c) {
    const float xhat = (row[c] - mean[c]) * rstd[c];
    const float scaled = upstream[c] * alpha;  // computed either way: the select is then a blend
    const float dz = xhat * gamma[c] + beta[c] > 0.0f ? upstream[c] : scaled;
    out[c] = factor[c] * (dz - mean_dz[c] - xhat * mean_dz_xhat[c]);
  }
}

// A block of voxels of one sample: [first, last) of sample n.
struct Block {
  Index n, first, last;
};

struct Layout {
  Index batch = 0, voxels = 0, channels = 0, voxels_per_block = 1, blocks_per_sample = 0;
  Index blocks() const { return batch * blocks_per_sample; }
  Block Of(Index block) const {
    const Index first = (block % blocks_per_sample) * voxels_per_block;
    return {block / blocks_per_sample, first, std::min(voxels, first + voxels_per_block)};
  }
};

// Checks x is [batch, spatial..., channels] with gamma and beta [channels]; fills layout.
tensorflow::Status ReadLayout(const Tensor& x, const Tensor& gamma, const Tensor& beta, Layout* layout) {
  if (x.dims() < 3) {
    return tensorflow::errors::InvalidArgument("x must be [batch, spatial..., channels], got shape ",
                                               x.shape().DebugString());
  }
  layout->batch = x.dim_size(0);
  layout->channels = x.dim_size(x.dims() - 1);
  layout->voxels = 1;
  for (int axis = 1; axis + 1 < x.dims(); ++axis) layout->voxels *= x.dim_size(axis);
  const TensorShape vector_shape({layout->channels});
  if (!(gamma.shape() == vector_shape && beta.shape() == vector_shape)) {
    return tensorflow::errors::InvalidArgument("gamma and beta must be [", layout->channels, "], got ",
                                               gamma.shape().DebugString(), " and ", beta.shape().DebugString());
  }
  if (layout->voxels == 0 && layout->batch > 0 && layout->channels > 0) {
    return tensorflow::errors::InvalidArgument("x has no voxels to normalise: shape ", x.shape().DebugString());
  }
  layout->voxels_per_block = VoxelsPerBlock(std::max<Index>(layout->channels, 1));
  layout->blocks_per_sample = (layout->voxels + layout->voxels_per_block - 1) / layout->voxels_per_block;
  return tensorflow::Status();
}

// The leaky ReLU's negative slope: in [0, 1], where max(z, alpha * z) is the activation.
tensorflow::Status ReadSlope(OpKernelConstruction* context, float* alpha) {
  TF_RETURN_IF_ERROR(context->GetAttr("alpha", alpha));
  if (!(*alpha >= 0.0f && *alpha <= 1.0f)) {
    return tensorflow::errors::InvalidArgument("alpha must be in [0, 1], got ", *alpha);
  }
  return tensorflow::Status();
}

// Runs work(block) for every block on the op's intra-op threads.
void ForEachBlock(OpKernelContext* context, const Layout& layout, const std::function<void(Index)>& work) {
  auto* pool = context->device()->tensorflow_cpu_worker_threads()->workers;
  const Index cost = layout.voxels_per_block * layout.channels * 8;
  pool->ParallelFor(layout.blocks(), cost, [&](Index begin, Index end) {
    for (Index block = begin; block < end; ++block) work(block);
  });
}

// One block's per-channel sums of two terms, into slot[2 * c] and slot[2 * c + 1] (doubles).
// terms(v, f, g) adds voxel v's two terms for every channel to the float chunk sums f and g.
template <typename Terms>
void SumBlock(Index first, Index last, Index channels, const Terms& terms, double* slot) {
  std::vector<float> chunk_f(channels), chunk_g(channels);
  for (Index i = 0; i < 2 * channels; ++i) slot[i] = 0.0;
  for (Index start = first; start < last; start += kChunk) {
    const Index stop = std::min(last, start + kChunk);
    std::fill(chunk_f.begin(), chunk_f.end(), 0.0f);
    std::fill(chunk_g.begin(), chunk_g.end(), 0.0f);
    for (Index v = start; v < stop; ++v) terms(v, chunk_f.data(), chunk_g.data());
    for (Index c = 0; c < channels; ++c) {
      slot[2 * c] += chunk_f[c];
      slot[2 * c + 1] += chunk_g[c];
    }
  }
}

// Adds the blocks' sums of each sample in block order: totals[n][2 * c] and [2 * c + 1].
std::vector<double> SampleTotals(const Layout& layout, const std::vector<double>& partial) {
  const Index channels = layout.channels;
  std::vector<double> totals(layout.batch * 2 * channels, 0.0);
  for (Index n = 0; n < layout.batch; ++n) {
    double* total = totals.data() + n * 2 * channels;
    for (Index b = 0; b < layout.blocks_per_sample; ++b) {
      const double* sums = partial.data() + (n * layout.blocks_per_sample + b) * 2 * channels;
      for (Index i = 0; i < 2 * channels; ++i) total[i] += sums[i];
    }
  }
  return totals;
}

class InstanceNormLeakyReluOp : public OpKernel {
 public:
  explicit InstanceNormLeakyReluOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, ReadSlope(context, &alpha_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    Layout layout;
    OP_REQUIRES_OK(context, ReadLayout(x, gamma, beta, &layout));
    Tensor* y = nullptr;
    Tensor* mean = nullptr;
    Tensor* rstd = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({layout.batch, layout.channels}), &mean));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({layout.batch, layout.channels}), &rstd));
    if (layout.blocks() == 0 || layout.channels == 0) return;

    const Index C = layout.channels, S = layout.voxels;
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();

    // Pass 1: per block, the sums of (x - shift) and its square; shift = the sample's first voxel.
    std::vector<double> partial(layout.blocks() * 2 * C);
    ForEachBlock(context, layout, [&](Index block) {
      const Block range = layout.Of(block);
      const float* sample = in + range.n * S * C;
      const float* shift = sample;
      SumBlock(range.first, range.last, C,
               [&](Index v, float* f, float* q) { AccumulateMoments(sample + v * C, shift, C, f, q); },
               partial.data() + block * 2 * C);
    });
    const std::vector<double> totals = SampleTotals(layout, partial);

    // Per sample and channel: mean, 1/std, and the scale of the normalised value.
    std::vector<float> scale(layout.batch * C);
    float* mean_out = mean->flat<float>().data();
    float* rstd_out = rstd->flat<float>().data();
    for (Index n = 0; n < layout.batch; ++n) {
      for (Index c = 0; c < C; ++c) {
        const double shifted_mean = totals[(n * C + c) * 2] / S;
        const double variance = std::max(0.0, totals[(n * C + c) * 2 + 1] / S - shifted_mean * shifted_mean);
        const double inverse = 1.0 / std::sqrt(variance + static_cast<double>(epsilon_));
        mean_out[n * C + c] = static_cast<float>(in[n * S * C + c] + shifted_mean);
        rstd_out[n * C + c] = static_cast<float>(inverse);
        scale[n * C + c] = static_cast<float>(inverse * g[c]);
      }
    }

    // Pass 2: y = leaky_relu((x - mean) * rstd * gamma + beta).
    const float alpha = alpha_;
    ForEachBlock(context, layout, [&](Index block) {
      const Block range = layout.Of(block);
      const Index n = range.n;
      const float* m = mean_out + n * C;
      const float* a = scale.data() + n * C;
      for (Index v = range.first; v < range.last; ++v) {
        NormalizeRow(in + (n * S + v) * C, m, a, b, alpha, C, out + (n * S + v) * C);
      }
    });
  }

 private:
  float epsilon_ = 0.0f;
  float alpha_ = 0.0f;
};

class InstanceNormLeakyReluGradOp : public OpKernel {
 public:
  explicit InstanceNormLeakyReluGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, ReadSlope(context, &alpha_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& gamma = context->input(2);
    const Tensor& beta = context->input(3);
    const Tensor& mean = context->input(4);
    const Tensor& rstd = context->input(5);
    Layout layout;
    OP_REQUIRES_OK(context, ReadLayout(x, gamma, beta, &layout));
    OP_REQUIRES(context, dy.shape() == x.shape(),
                tensorflow::errors::InvalidArgument("dy must have the shape of x, ", x.shape().DebugString(),
                                                    ", got ", dy.shape().DebugString()));
    const TensorShape statistics_shape({layout.batch, layout.channels});
    OP_REQUIRES(context, mean.shape() == statistics_shape && rstd.shape() == statistics_shape,
                tensorflow::errors::InvalidArgument("mean and rstd must be ", statistics_shape.DebugString()));
    Tensor* dx = nullptr;
    Tensor* dgamma = nullptr;
    Tensor* dbeta = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma.shape(), &dgamma));
    OP_REQUIRES_OK(context, context->allocate_output(2, beta.shape(), &dbeta));
    const Index C = layout.channels, S = layout.voxels;
    float* dgamma_out = dgamma->flat<float>().data();
    float* dbeta_out = dbeta->flat<float>().data();
    std::fill(dgamma_out, dgamma_out + C, 0.0f);
    std::fill(dbeta_out, dbeta_out + C, 0.0f);
    if (layout.blocks() == 0 || C == 0) return;

    const float* in = x.flat<float>().data();
    const float* grad = dy.flat<float>().data();
    float* out = dx->flat<float>().data();
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();
    const float* means = mean.flat<float>().data();
    const float* inverses = rstd.flat<float>().data();
    const float alpha = alpha_;

    // Pass 1: per block, sum of dz and of dz * xhat, where xhat = (x - mean) * rstd,
    // z = xhat * gamma + beta (the activation's input) and dz = dy * leaky_relu'(z).
    std::vector<double> partial(layout.blocks() * 2 * C);
    ForEachBlock(context, layout, [&](Index block) {
      const Block range = layout.Of(block);
      const Index n = range.n;
      const float* m = means + n * C;
      const float* r = inverses + n * C;
      SumBlock(range.first, range.last, C,
               [&](Index v, float* f, float* q) {
                 AccumulateGradientSums(in + (n * S + v) * C, grad + (n * S + v) * C, m, r, g, b, alpha, C, f, q);
               },
               partial.data() + block * 2 * C);
    });
    const std::vector<double> totals = SampleTotals(layout, partial);

    // dbeta = sum of dz, dgamma = sum of dz * xhat (over samples and voxels);
    // dx = gamma * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)), means over a sample's voxels.
    std::vector<float> mean_dz(layout.batch * C), mean_dz_xhat(layout.batch * C), factor(layout.batch * C);
    std::vector<double> dgamma_sum(C, 0.0), dbeta_sum(C, 0.0);
    for (Index n = 0; n < layout.batch; ++n) {
      for (Index c = 0; c < C; ++c) {
        const double sum_dz = totals[(n * C + c) * 2], sum_dz_xhat = totals[(n * C + c) * 2 + 1];
        dbeta_sum[c] += sum_dz;
        dgamma_sum[c] += sum_dz_xhat;
        mean_dz[n * C + c] = static_cast<float>(sum_dz / S);
        mean_dz_xhat[n * C + c] = static_cast<float>(sum_dz_xhat / S);
        factor[n * C + c] = g[c] * inverses[n * C + c];
      }
    }
    for (Index c = 0; c < C; ++c) {
      dgamma_out[c] = static_cast<float>(dgamma_sum[c]);
      dbeta_out[c] = static_cast<float>(dbeta_sum[c]);
    }

    // Pass 2: dx.
    ForEachBlock(context, layout, [&](Index block) {
      const Block range = layout.Of(block);
      const Index n = range.n;
      const float* m = means + n * C;
      const float* r = inverses + n * C;
      const float* k = factor.data() + n * C;
      for (Index v = range.first; v < range.last; ++v) {
        GradientRow(in + (n * S + v) * C, grad + (n * S + v) * C, m, r, g, b, k, mean_dz.data() + n * C,
                    mean_dz_xhat.data() + n * C, alpha, C, out + (n * S + v) * C);
      }
    });
  }

 private:
  float alpha_ = 0.0f;
};

tensorflow::Status StatisticsShape(InferenceContext* c, ShapeHandle x, ShapeHandle* out) {
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(x, 3, &x));
  *out = c->Matrix(c->Dim(x, 0), c->Dim(x, -1));
  return tensorflow::Status();
}

}  // namespace unet3d

REGISTER_OP("Unet3dInstanceNormLeakyRelu")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("rstd: float")
    .Attr("epsilon: float")
    .Attr("alpha: float")
    .SetShapeFn([](unet3d::InferenceContext* c) {
      unet3d::ShapeHandle statistics;
      TF_RETURN_IF_ERROR(unet3d::StatisticsShape(c, c->input(0), &statistics));
      c->set_output(0, c->input(0));
      c->set_output(1, statistics);
      c->set_output(2, statistics);
      return tensorflow::Status();
    })
    .Doc("leaky_relu(instance_norm(x) * gamma + beta) over [batch, spatial..., channels]; also the "
         "per-sample, per-channel mean and 1/sqrt(variance + epsilon) the gradient needs.");

REGISTER_OP("Unet3dInstanceNormLeakyReluGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("rstd: float")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("alpha: float")
    .SetShapeFn([](unet3d::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(3));
      return tensorflow::Status();
    })
    .Doc("Gradients of Unet3dInstanceNormLeakyRelu's y with respect to x, gamma and beta.");

REGISTER_KERNEL_BUILDER(Name("Unet3dInstanceNormLeakyRelu").Device(tensorflow::DEVICE_CPU),
                        unet3d::InstanceNormLeakyReluOp);
REGISTER_KERNEL_BUILDER(Name("Unet3dInstanceNormLeakyReluGrad").Device(tensorflow::DEVICE_CPU),
                        unet3d::InstanceNormLeakyReluGradOp);

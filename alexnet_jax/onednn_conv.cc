// 2-D convolution, its input gradient and its kernel gradient through oneDNN, as XLA FFI
// handlers for JAX on CPU (alexnet_jax/onednn_conv.py builds, loads and differentiates them).
// Layouts as Flax's nn.Conv: activations NHWC, kernels HWIO, float32; no dilation, one group.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

enum class Kind { kForward = 0, kInputGrad = 1, kKernelGrad = 2 };

// Shapes of one convolution: x [n, h, w, c], kernel [kh, kw, c, o], y [n, oh, ow, o].
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  auto key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr);
  }
  memory::desc x() const { return {{n, c, h, w}, memory::data_type::f32, tag::nhwc}; }
  memory::desc y() const { return {{n, o, oh, ow}, memory::data_type::f32, tag::nhwc}; }
  memory::desc kernel_any() const { return {{o, c, kh, kw}, memory::data_type::f32, tag::any}; }
  memory::desc kernel_hwio() const { return {{o, c, kh, kw}, memory::data_type::f32, tag::hwio}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The three primitives of one geometry, with the kernel reorders between HWIO and the layout
// oneDNN chose. Created once (oneDNN generates code for them) and reused; executing a primitive
// from several threads at once is safe because each call brings its own scratchpad.
struct Plan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::primitive fwd, bwd_data, bwd_weights;

  explicit Plan(const Geometry& g) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto algo = dnnl::algorithm::convolution_direct;
    fwd_pd = {{dnnl::prop_kind::forward_training, algo, g.x(), g.kernel_any(), g.y(),
               g.strides(), g.pad_l(), g.pad_r()},
              attr, Engine()};
    bwd_data_pd = {{algo, g.x(), g.kernel_any(), g.y(), g.strides(), g.pad_l(), g.pad_r()},
                   attr, Engine(), fwd_pd};
    bwd_weights_pd = {{algo, g.x(), g.kernel_any(), g.y(), g.strides(), g.pad_l(), g.pad_r()},
                      attr, Engine(), fwd_pd};
    fwd = dnnl::convolution_forward(fwd_pd);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
  }
};

Plan& PlanFor(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.key()), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.key()];
  if (!plan) plan = std::make_unique<Plan>(g);
  return *plan;
}

// A buffer of `desc`'s size owned by this call (scratchpads, reordered kernels), not zeroed.
struct Owned {
  std::unique_ptr<char[]> data;
  memory mem;
  explicit Owned(const memory::desc& desc)
      : data(new char[desc.get_size() + 64]), mem(desc, Engine(), data.get()) {}
};

memory Wrap(const memory::desc& desc, void* data) { return memory(desc, Engine(), data); }

void Reorder(memory& from, memory& to, dnnl::stream& stream) {
  dnnl::reorder(from, to).execute(stream, from, to);
}

// Runs `primitive` (the forward or the input gradient) with the kernel reordered from HWIO into
// the layout `pd` chose; `x_arg` and `y_arg` name the image's and the output's arguments.
template <typename PrimitiveDesc>
void RunWithKernel(const dnnl::primitive& primitive, const PrimitiveDesc& pd, const Geometry& g,
                   int x_arg, void* x, void* kernel, int y_arg, void* y, dnnl::stream& stream) {
  memory user_kernel = Wrap(g.kernel_hwio(), kernel);
  Owned k(pd.weights_desc()), scratch(pd.scratchpad_desc());
  Reorder(user_kernel, k.mem, stream);
  primitive.execute(stream, {{x_arg, Wrap(g.x(), x)},
                             {DNNL_ARG_WEIGHTS, k.mem},
                             {y_arg, Wrap(g.y(), y)},
                             {DNNL_ARG_SCRATCHPAD, scratch.mem}});
  stream.wait();  // before `k` and `scratch` are freed
}

ffi::Error Run(Kind kind, const Geometry& g, void* x, void* kernel, void* y) {
  try {
    Plan& plan = PlanFor(g);
    dnnl::stream stream(Engine());
    if (kind == Kind::kForward) {
      RunWithKernel(plan.fwd, plan.fwd_pd, g, DNNL_ARG_SRC, x, kernel, DNNL_ARG_DST, y, stream);
    } else if (kind == Kind::kInputGrad) {
      RunWithKernel(plan.bwd_data, plan.bwd_data_pd, g, DNNL_ARG_DIFF_SRC, x, kernel,
                    DNNL_ARG_DIFF_DST, y, stream);
    } else {
      Owned dk(plan.bwd_weights_pd.diff_weights_desc());
      Owned scratch(plan.bwd_weights_pd.scratchpad_desc());
      plan.bwd_weights.execute(stream, {{DNNL_ARG_SRC, Wrap(g.x(), x)},
                                        {DNNL_ARG_DIFF_WEIGHTS, dk.mem},
                                        {DNNL_ARG_DIFF_DST, Wrap(g.y(), y)},
                                        {DNNL_ARG_SCRATCHPAD, scratch.mem}});
      memory user_kernel = Wrap(g.kernel_hwio(), kernel);
      Reorder(dk.mem, user_kernel, stream);
      stream.wait();  // before `dk` and `scratch` are freed
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

Geometry Make(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k, ffi::Span<const int64_t> y,
              int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return {x[0], x[1], x[2], x[3], k[0], k[1], k[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 k, F32Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr) {
  auto g = Make(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kForward, g, x.untyped_data(), k.untyped_data(), y->untyped_data());
}

ffi::Error InputGrad(F32 dy, F32 k, F32Out dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                     int64_t pl, int64_t pr) {
  auto g = Make(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kInputGrad, g, dx->untyped_data(), k.untyped_data(), dy.untyped_data());
}

ffi::Error KernelGrad(F32 x, F32 dy, F32Out dk, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr) {
  auto g = Make(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kKernelGrad, g, x.untyped_data(), dk->untyped_data(), dy.untyped_data());
}

template <typename B>
auto WithGeometry(B binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              WithGeometry(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGrad,
                              WithGeometry(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGrad, KernelGrad,
                              WithGeometry(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));

// 2-D convolution, its input gradient and its kernel gradient through oneDNN, as XLA FFI
// handlers for JAX on CPU (alexnet_jax/onednn_conv.py builds, loads and differentiates them).
// Layouts as Flax's nn.Conv: activations NHWC, kernels HWIO, float32; no dilation, one group.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
  memory::desc x(tag layout = tag::nhwc) const {
    return {{n, c, h, w}, memory::data_type::f32, layout};
  }
  memory::desc y(tag layout = tag::nhwc) const {
    return {{n, o, oh, ow}, memory::data_type::f32, layout};
  }
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

// The three primitives of one geometry. Created once (oneDNN generates code for them) and
// reused; executing a primitive from several threads at once is safe because each call brings
// its own scratchpad.
//
// Winograd's F(4x4, 3x3) where oneDNN has it (3x3 kernels, stride 1, AVX-512; it works in its own
// blocked layout, so the activations are copied in and out): with those copies counted, 1.4-1.9x
// faster than the direct kernels on AlexNet's conv3-5, forward and both gradients
// (experiments/logs/2026-12-04-vm-issue19-wino/). Elsewhere, or with ALEXNET_JAX_WINOGRAD=0, the
// direct kernels in NHWC. The choice depends only on the geometry, the host's instruction set and
// that switch, never on a timing, so a resumed run computes what the interrupted one did.
struct Plan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::primitive fwd, bwd_data, bwd_weights;

  explicit Plan(const Geometry& g) {
    const char* winograd = std::getenv("ALEXNET_JAX_WINOGRAD");
    // oneDNN also runs it on channel counts that are not whole 16-float vectors, padded, and then
    // 2-4x slower than direct (3 or 8 channels, 27x27); AlexNet's conv3-5 are all whole vectors.
    bool whole_vectors = g.c % 16 == 0 && g.o % 16 == 0;
    if (whole_vectors && (winograd == nullptr || std::string(winograd) != "0")) {
      try {
        Build(g, dnnl::algorithm::convolution_winograd, tag::any);
        return;
      } catch (const dnnl::error&) {  // not implemented for this geometry or host
      }
    }
    Build(g, dnnl::algorithm::convolution_direct, tag::nhwc);
  }

  void Build(const Geometry& g, dnnl::algorithm algo, tag layout) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto x = g.x(layout), y = g.y(layout), k = g.kernel_any();
    fwd_pd = {{dnnl::prop_kind::forward_training, algo, x, k, y, g.strides(), g.pad_l(),
               g.pad_r()},
              attr, Engine()};
    bwd_data_pd = {{algo, x, k, y, g.strides(), g.pad_l(), g.pad_r()}, attr, Engine(), fwd_pd};
    bwd_weights_pd = {{algo, x, k, y, g.strides(), g.pad_l(), g.pad_r()}, attr, Engine(), fwd_pd};
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

memory Wrap(const memory::desc& desc, void* data) { return memory(desc, Engine(), data); }

void Reorder(memory& from, memory& to, dnnl::stream& stream) {
  dnnl::reorder(from, to).execute(stream, from, to);
}

// The memory of one call: the caller's buffers (NHWC activations, HWIO kernels) used as they are
// where the primitive takes that layout, else copied into or out of buffers in the layout it
// chose; those buffers, and the scratchpad, are this call's and live until Finish() returns.
class Call {
 public:
  explicit Call(dnnl::stream& stream) : stream_(stream) {}

  memory Input(const memory::desc& given, void* data, const memory::desc& wanted) {
    memory user = Wrap(given, data);
    if (wanted == given) return user;
    memory& copy = Buffer(wanted);
    Reorder(user, copy, stream_);
    return copy;
  }

  memory Output(const memory::desc& given, void* data, const memory::desc& produced) {
    memory user = Wrap(given, data);
    if (produced == given) return user;
    memory& result = Buffer(produced);
    copies_out_.emplace_back(result, user);
    return result;
  }

  // A buffer of `desc`'s size (not zeroed), aligned to 64 bytes as oneDNN's kernels load it (the
  // Winograd kernels fault on less).
  memory& Buffer(const memory::desc& desc) {
    buffers_.push_back(std::make_unique<char[]>(desc.get_size() + 64));
    auto start = reinterpret_cast<std::uintptr_t>(buffers_.back().get());
    void* aligned = reinterpret_cast<void*>((start + 63) & ~std::uintptr_t{63});
    memories_.push_back(std::make_unique<memory>(desc, Engine(), aligned));
    return *memories_.back();
  }

  void Finish() {
    for (auto& [from, to] : copies_out_) Reorder(from, to, stream_);
    stream_.wait();  // before the buffers are freed
  }

 private:
  dnnl::stream& stream_;
  std::vector<std::unique_ptr<char[]>> buffers_;
  std::vector<std::unique_ptr<memory>> memories_;
  std::vector<std::pair<memory, memory>> copies_out_;
};

ffi::Error Run(Kind kind, const Geometry& g, void* x, void* kernel, void* y) {
  try {
    Plan& plan = PlanFor(g);
    dnnl::stream stream(Engine());
    Call call(stream);
    if (kind == Kind::kForward) {
      const auto& pd = plan.fwd_pd;
      plan.fwd.execute(stream, {{DNNL_ARG_SRC, call.Input(g.x(), x, pd.src_desc())},
                                {DNNL_ARG_WEIGHTS, call.Input(g.kernel_hwio(), kernel,
                                                              pd.weights_desc())},
                                {DNNL_ARG_DST, call.Output(g.y(), y, pd.dst_desc())},
                                {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
    } else if (kind == Kind::kInputGrad) {
      const auto& pd = plan.bwd_data_pd;
      plan.bwd_data.execute(
          stream, {{DNNL_ARG_DIFF_DST, call.Input(g.y(), y, pd.diff_dst_desc())},
                   {DNNL_ARG_WEIGHTS, call.Input(g.kernel_hwio(), kernel, pd.weights_desc())},
                   {DNNL_ARG_DIFF_SRC, call.Output(g.x(), x, pd.diff_src_desc())},
                   {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
    } else {
      const auto& pd = plan.bwd_weights_pd;
      plan.bwd_weights.execute(
          stream,
          {{DNNL_ARG_SRC, call.Input(g.x(), x, pd.src_desc())},
           {DNNL_ARG_DIFF_DST, call.Input(g.y(), y, pd.diff_dst_desc())},
           {DNNL_ARG_DIFF_WEIGHTS, call.Output(g.kernel_hwio(), kernel, pd.diff_weights_desc())},
           {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
    }
    call.Finish();
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

}  // namespace

// For logs and tests: the names of the implementations oneDNN runs for one geometry (`geometry`:
// n, h, w, c, kh, kw, o, oh, ow, stride h and w, padding top, bottom, left, right), forward, input
// gradient and kernel gradient separated by " | ", into `out` (cut to `size`, NUL-terminated).
extern "C" int OnednnConvImplementations(const int64_t* v, char* out, int64_t size) {
  try {
    Geometry g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
               v[13], v[14]};
    Plan& plan = PlanFor(g);
    std::string names = std::string(plan.fwd_pd.impl_info_str()) + " | " +
                        plan.bwd_data_pd.impl_info_str() + " | " +
                        plan.bwd_weights_pd.impl_info_str();
    snprintf(out, size, "%s", names.c_str());
  } catch (const dnnl::error& e) {
    snprintf(out, size, "oneDNN: %s", e.what());
    return 1;
  }
  return 0;
}

namespace {

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

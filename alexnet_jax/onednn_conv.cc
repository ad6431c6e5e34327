// 2-D convolution, its input gradient and its kernel gradient through oneDNN, as XLA FFI
// handlers for JAX on CPU (alexnet_jax/onednn_conv.py builds, loads and differentiates them).
// Layouts as Flax's nn.Conv: activations NHWC, kernels HWIO, float32; no dilation, one group.
#include <algorithm>
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

// How one part of a convolution (its forward pass, input gradient or kernel gradient) runs: a
// primitive, created once (oneDNN generates code for it) and reused, and how many of the batch's
// images each of its calls takes. Executing a primitive from several threads at once is safe
// because each call brings its own scratchpad.
template <typename PrimitiveDesc, typename Primitive>
struct Part {
  PrimitiveDesc pd;
  Primitive primitive;
  int64_t images_per_call = 0;  // a divisor of the batch

  void Create(const PrimitiveDesc& desc, int64_t images) {
    pd = desc;
    primitive = Primitive(pd);
    images_per_call = images;
  }
};

// The three parts' descriptors for `g` with one algorithm and activation layout.
struct Descriptors {
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;

  Descriptors(const Geometry& g, dnnl::algorithm algo, tag layout) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto x = g.x(layout), y = g.y(layout), k = g.kernel_any();
    fwd = {{dnnl::prop_kind::forward_training, algo, x, k, y, g.strides(), g.pad_l(), g.pad_r()},
           attr, Engine()};
    bwd_data = {{algo, x, k, y, g.strides(), g.pad_l(), g.pad_r()}, attr, Engine(), fwd};
    bwd_weights = {{algo, x, k, y, g.strides(), g.pad_l(), g.pad_r()}, attr, Engine(), fwd};
  }
};

Geometry WithImages(const Geometry& g, int64_t n) {
  Geometry part = g;
  part.n = n;
  return part;
}

// Winograd's F(4x4, 3x3) runs a part where oneDNN has it (3x3 kernels, stride 1, AVX-512; in its
// own blocked layout, so the activations are copied in and out) and its scratchpad stays within
// kWinogradScratchBytes with calls of at least kWinogradMinImages images; elsewhere, or with
// ALEXNET_JAX_WINOGRAD=0, the direct kernels in NHWC, all images in one call. The choice depends
// on the geometry, the host's instruction set, oneDNN's thread count (the scratchpad grows with
// it) and that switch, never on a timing, so a resumed run computes what the interrupted one did.
//
// The scratchpad is what Winograd costs in memory, on top of XLA's buffers for the step: 29-84 MB
// for the forward pass of 1-32 images of the one-tower conv4 (384 channels in and out, two
// threads), 74-129 MB for its kernel gradient. Unbounded, it put `owt`'s peak above PyTorch's;
// bounded, the peak stays under it. Smaller calls are slower: that conv4's forward pass over 32
// images in calls of 8 took 1.16x the time of one call, in calls of 4, 1.38x. Measured in
// experiments/logs/2026-12-04-vm-issue19-wino/ (onednn_wino_*.log, run_all.out).
constexpr size_t kWinogradScratchBytes = size_t{48} << 20;
constexpr int64_t kWinogradMinImages = 8;

struct Plan {
  Part<dnnl::convolution_forward::primitive_desc, dnnl::convolution_forward> fwd;
  Part<dnnl::convolution_backward_data::primitive_desc, dnnl::convolution_backward_data> bwd_data;
  Part<dnnl::convolution_backward_weights::primitive_desc, dnnl::convolution_backward_weights>
      bwd_weights;

  explicit Plan(const Geometry& g) {
    const char* winograd = std::getenv("ALEXNET_JAX_WINOGRAD");
    // oneDNN also runs it on channel counts that are not whole 16-float vectors, padded, and then
    // slower than direct (3 or 8 channels at 27x27: 0.5 against 0.1-0.3 ms); AlexNet's conv3-5
    // are all whole vectors.
    bool whole_vectors = g.c % 16 == 0 && g.o % 16 == 0;
    if (whole_vectors && (winograd == nullptr || std::string(winograd) != "0")) TryWinograd(g);
    Descriptors direct(g, dnnl::algorithm::convolution_direct, tag::nhwc);
    if (!fwd.images_per_call) fwd.Create(direct.fwd, g.n);
    if (!bwd_data.images_per_call) bwd_data.Create(direct.bwd_data, g.n);
    if (!bwd_weights.images_per_call) bwd_weights.Create(direct.bwd_weights, g.n);
  }

  // Gives each part Winograd's kernels with the most images a call (a divisor of the batch, at
  // least kWinogradMinImages) whose scratchpad fits; parts that fit nowhere stay unset.
  void TryWinograd(const Geometry& g) {
    try {
      for (int64_t n = g.n; n >= std::min(g.n, kWinogradMinImages); --n) {
        if (g.n % n != 0) continue;
        Descriptors wino(WithImages(g, n), dnnl::algorithm::convolution_winograd, tag::any);
        CreateIfFits(fwd, wino.fwd, n);
        CreateIfFits(bwd_data, wino.bwd_data, n);
        CreateIfFits(bwd_weights, wino.bwd_weights, n);
        if (fwd.images_per_call && bwd_data.images_per_call && bwd_weights.images_per_call) return;
      }
    } catch (const dnnl::error&) {  // not implemented for this geometry or host
    }
  }

  template <typename P, typename PrimitiveDesc>
  static void CreateIfFits(P& part, const PrimitiveDesc& pd, int64_t images) {
    if (!part.images_per_call && pd.scratchpad_desc().get_size() <= kWinogradScratchBytes) {
      part.Create(pd, images);
    }
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

// Copies `from` into `to`'s layout; with `add`, adds it to what `to` holds.
void Reorder(memory& from, memory& to, dnnl::stream& stream, bool add = false) {
  dnnl::primitive_attr attr;
  if (add) {
    dnnl::post_ops sum;
    sum.append_sum(1.0f);
    attr.set_post_ops(sum);
  }
  dnnl::reorder(dnnl::reorder::primitive_desc(from, to, attr)).execute(stream, from, to);
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

// Runs one part of the convolution on the whole batch, `part.images_per_call` images at a time;
// `run(call, x, y)` runs one call on the images at `x` and `y`.
template <typename P, typename F>
void ForEachCall(const P& part, const Geometry& g, float* x, float* y, dnnl::stream& stream,
                 F run) {
  const Geometry one = WithImages(g, part.images_per_call);
  for (int64_t i = 0; i < g.n / one.n; ++i) {
    Call call(stream);
    run(call, one, x + i * one.n * g.h * g.w * g.c, y + i * one.n * g.oh * g.ow * g.o, i);
    call.Finish();
  }
}

ffi::Error Run(Kind kind, const Geometry& g, float* x, float* kernel, float* y) {
  try {
    Plan& plan = PlanFor(g);
    dnnl::stream stream(Engine());
    Call whole(stream);  // the kernel in the primitive's layout, reordered once for all calls
    if (kind == Kind::kForward) {
      const auto& pd = plan.fwd.pd;
      memory k = whole.Input(g.kernel_hwio(), kernel, pd.weights_desc());
      ForEachCall(plan.fwd, g, x, y, stream, [&](Call& call, const Geometry& one, float* xi,
                                                 float* yi, int64_t) {
        plan.fwd.primitive.execute(
            stream, {{DNNL_ARG_SRC, call.Input(one.x(), xi, pd.src_desc())},
                     {DNNL_ARG_WEIGHTS, k},
                     {DNNL_ARG_DST, call.Output(one.y(), yi, pd.dst_desc())},
                     {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
      });
    } else if (kind == Kind::kInputGrad) {
      const auto& pd = plan.bwd_data.pd;
      memory k = whole.Input(g.kernel_hwio(), kernel, pd.weights_desc());
      ForEachCall(plan.bwd_data, g, x, y, stream, [&](Call& call, const Geometry& one, float* xi,
                                                      float* yi, int64_t) {
        plan.bwd_data.primitive.execute(
            stream, {{DNNL_ARG_DIFF_DST, call.Input(one.y(), yi, pd.diff_dst_desc())},
                     {DNNL_ARG_WEIGHTS, k},
                     {DNNL_ARG_DIFF_SRC, call.Output(one.x(), xi, pd.diff_src_desc())},
                     {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
      });
    } else {  // the kernel gradient, summed over the calls in call order
      const auto& pd = plan.bwd_weights.pd;
      memory user_dk = Wrap(g.kernel_hwio(), kernel);
      ForEachCall(plan.bwd_weights, g, x, y, stream, [&](Call& call, const Geometry& one,
                                                         float* xi, float* yi, int64_t i) {
        memory& dk = call.Buffer(pd.diff_weights_desc());
        plan.bwd_weights.primitive.execute(
            stream, {{DNNL_ARG_SRC, call.Input(one.x(), xi, pd.src_desc())},
                     {DNNL_ARG_DIFF_DST, call.Input(one.y(), yi, pd.diff_dst_desc())},
                     {DNNL_ARG_DIFF_WEIGHTS, dk},
                     {DNNL_ARG_SCRATCHPAD, call.Buffer(pd.scratchpad_desc())}});
        Reorder(dk, user_dk, stream, /*add=*/i > 0);
      });
    }
    whole.Finish();
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
  return Run(Kind::kForward, g, x.typed_data(), k.typed_data(), y->typed_data());
}

ffi::Error InputGrad(F32 dy, F32 k, F32Out dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                     int64_t pl, int64_t pr) {
  auto g = Make(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kInputGrad, g, dx->typed_data(), k.typed_data(), dy.typed_data());
}

ffi::Error KernelGrad(F32 x, F32 dy, F32Out dk, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr) {
  auto g = Make(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kKernelGrad, g, x.typed_data(), dk->typed_data(), dy.typed_data());
}

}  // namespace

// For logs and tests: the names of the implementations oneDNN runs for one geometry (`geometry`:
// n, h, w, c, kh, kw, o, oh, ow, stride h and w, padding top, bottom, left, right), forward, input
// gradient and kernel gradient, then the images per call, separated by " | ", into `out` (cut to
// `size`, NUL-terminated).
extern "C" int OnednnConvImplementations(const int64_t* v, char* out, int64_t size) {
  try {
    Geometry g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
               v[13], v[14]};
    Plan& plan = PlanFor(g);
    auto name = [](const auto& part) {
      return std::string(part.pd.impl_info_str()) + " x" + std::to_string(part.images_per_call);
    };
    std::string names =
        name(plan.fwd) + " | " + name(plan.bwd_data) + " | " + name(plan.bwd_weights);
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

// XLA FFI CPU kernels for 2x2 / stride-2 max pooling (forward with the saved window index,
// and the backward that reads only that index).
//
// Built on first use by invariance/pooling/_cpu_kernel.py with the system C++ compiler and
// called through jax.ffi; everything else (other windows, dtypes, channel counts, GPU, TPU)
// keeps the pure-XLA formulation in _windowed.py, whose results these must match bit for bit
// (except the sign and payload of a NaN output, which follow XLA's code generator there).
//
// Why C++: XLA:CPU cannot produce the pooled output and the int8 window index in ONE pass over
// x (it has no multi-output loop fusion, and its variadic reductions are scalar code), so its
// gradient reads x twice. Here the forward reads x once and writes y plus a 1-byte index; the
// backward reads the cotangent and the index and writes every element of dx exactly once.
//
// Layout: x is (..., H, W, C) row-major (NHWC with any leading dims, flattened to N here).
// Output (..., H/2, W/2, C) with floor division: a trailing odd row / column is never read by
// the forward and gets a zero gradient.
//
// Semantics (those of _first_argmax in _windowed.py):
//   index = position (0..3, row-major) of the FIRST maximum: a later element wins only if it is
//           strictly greater (so a NaN never wins the index, unless it is element 0);
//   y     = the window maximum as XLA's maximum computes it: NaN if any element is NaN (as
//           torch's max_pool2d), and +0 rather than -0 when both are there.
//
// Speed note, measured on the 2-core AMD EPYC that develops this: the per-pixel channel loop
// must be fully unrolled (C a compile-time constant). The same code with a runtime channel count,
// or in blocks smaller than the whole pixel, ran 3-4x slower. Hence the dispatch on C below.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Vectors through the compiler's generic vector extension: 8 lanes where C allows (AVX2 when
// _cpu_kernel.py found it on this CPU and passed -mavx2; two SSE2 / NEON halves otherwise),
// else 4. The AVX2 build was 1.4-1.5x faster than the SSE2 one on the 2-core AMD EPYC.
template <int L>
struct Lanes;
template <>
struct Lanes<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
  typedef int8_t b __attribute__((vector_size(4)));
};
template <>
struct Lanes<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
  typedef int8_t b __attribute__((vector_size(8)));
};
template <int C>
constexpr int kLanes = C % 8 == 0 ? 8 : 4;

template <typename V, typename T>
inline V Load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void Store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Runs body(lo, hi) over [0, n) in chunks on XLA's intra-op thread pool. The caller works too
// and only waits for chunks that a worker has already started, so it never waits on a task
// still queued behind it (no deadlock when the pool is busy or has one thread).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, F body) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t grain = 8;
  const int64_t chunks = std::min<int64_t>(threads * 4, (n + grain - 1) / grain);
  if (threads <= 1 || chunks <= 1) {
    body(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const int64_t per = (n + chunks - 1) / chunks;
  auto work = [state, per, n, chunks, body]() {
    for (;;) {
      const int64_t k = state->next.fetch_add(1);
      if (k >= chunks) return;
      const int64_t lo = k * per, hi = std::min(n, lo + per);
      if (lo < hi) body(lo, hi);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 0; t < std::min(threads, chunks) - 1; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == chunks; });
}

// XLA's maximum (NaN bits aside): a NaN propagates (once taken it stays: v > NaN is false) and
// +0 beats -0 whatever the order (for equal values, AND-ing the bits clears a lone sign bit).
template <typename vf, typename vi>
inline vf Maximum(vf a, vf b) {
  const vf equal_max = (vf)((vi)a & (vi)b);
  const vf larger = ((b > a) | (b != b)) ? b : a;
  return (a == b) ? equal_max : larger;
}

struct Geometry {
  int64_t n, h, w, ho, wo;  // n: product of the leading dims
};

template <typename Dims>
Geometry GeometryOf(const Dims& d, int64_t c_expected, bool* ok) {
  Geometry g{1, 0, 0, 0, 0};
  const int64_t rank = static_cast<int64_t>(d.size());
  *ok = rank >= 3 && d[rank - 1] == c_expected;
  if (!*ok) return g;
  for (int64_t k = 0; k < rank - 3; ++k) g.n *= d[k];
  g.h = d[rank - 3];
  g.w = d[rank - 2];
  g.ho = g.h / 2;
  g.wo = g.w / 2;
  return g;
}

// Output rows [lo, hi) of the flattened (n * ho) grid.
template <int C>
void ForwardRows(const float* x, float* y, int8_t* idx, const Geometry& g, int64_t lo,
                 int64_t hi) {
  static_assert(C % 4 == 0, "channel count must be a multiple of 4");
  constexpr int L = kLanes<C>;
  typedef typename Lanes<L>::f vf;
  typedef typename Lanes<L>::i vi;
  typedef typename Lanes<L>::b vb;
  const int64_t row = g.w * C;
  for (int64_t r = lo; r < hi; ++r) {
    const int64_t n = r / g.ho, i = r % g.ho;
    const float* xr = x + (n * g.h + 2 * i) * row;
    for (int64_t j = 0; j < g.wo; ++j) {
      const float* __restrict__ p0 = xr + 2 * j * C;
      float* __restrict__ yo = y + (r * g.wo + j) * C;
      int8_t* __restrict__ io = idx + (r * g.wo + j) * C;
#pragma GCC unroll 64
      for (int64_t c = 0; c < C; c += L) {
        const vf v0 = Load<vf>(p0 + c), v1 = Load<vf>(p0 + C + c);
        const vf v2 = Load<vf>(p0 + row + c), v3 = Load<vf>(p0 + row + C + c);
        vf best = v0, out = v0;
        vi at = {};
        vi win = v1 > best;
        best = win ? v1 : best;
        at = win ? at * 0 + 1 : at;
        win = v2 > best;
        best = win ? v2 : best;
        at = win ? at * 0 + 2 : at;
        win = v3 > best;
        at = win ? at * 0 + 3 : at;
        out = Maximum<vf, vi>(Maximum<vf, vi>(Maximum<vf, vi>(out, v1), v2), v3);
        Store(yo + c, out);
        Store(io + c, __builtin_convertvector(at, vb));
      }
    }
  }
}

template <int C>
void BackwardRows(const float* gy, const int8_t* idx, float* dx, const Geometry& g, int64_t lo,
                  int64_t hi) {
  constexpr int L = kLanes<C>;
  typedef typename Lanes<L>::f vf;
  typedef typename Lanes<L>::i vi;
  typedef typename Lanes<L>::b vb;
  const int64_t row = g.w * C;
  const vf zero = {};
  for (int64_t r = lo; r < hi; ++r) {
    const int64_t n = r / g.ho, i = r % g.ho;
    float* dr = dx + (n * g.h + 2 * i) * row;
    for (int64_t j = 0; j < g.wo; ++j) {
      const float* __restrict__ go = gy + (r * g.wo + j) * C;
      const int8_t* __restrict__ io = idx + (r * g.wo + j) * C;
      float* __restrict__ d0 = dr + 2 * j * C;
#pragma GCC unroll 64
      for (int64_t c = 0; c < C; c += L) {
        const vi at = __builtin_convertvector(Load<vb>(io + c), vi);
        const vf gv = Load<vf>(go + c);
        Store(d0 + c, at == 0 ? gv : zero);
        Store(d0 + C + c, at == 1 ? gv : zero);
        Store(d0 + row + c, at == 2 ? gv : zero);
        Store(d0 + row + C + c, at == 3 ? gv : zero);
      }
    }
    // An odd last column, then (after the image's last window row) an odd last row: no window
    // covers them, so their gradient is zero.
    if (g.w > 2 * g.wo) {
      std::memset(dr + 2 * g.wo * C, 0, C * sizeof(float));
      std::memset(dr + row + 2 * g.wo * C, 0, C * sizeof(float));
    }
    if (i == g.ho - 1 && g.h > 2 * g.ho) {
      std::memset(dx + (n * g.h + g.h - 1) * row, 0, row * sizeof(float));
    }
  }
}

template <int C>
ffi::Error Forward(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& x,
                   ffi::ResultBuffer<ffi::F32>& y, ffi::ResultBuffer<ffi::S8>& idx) {
  bool ok = false;
  const Geometry g = GeometryOf(x.dimensions(), C, &ok);
  if (!ok) return ffi::Error::InvalidArgument("max_pool_2x2_fwd: x must be (..., H, W, C)");
  const size_t pooled = static_cast<size_t>(g.n * g.ho * g.wo * C);
  if (y->element_count() != pooled || idx->element_count() != pooled) {
    return ffi::Error::InvalidArgument("max_pool_2x2_fwd: outputs must be (..., H/2, W/2, C)");
  }
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  int8_t* ip = idx->typed_data();
  ParallelFor(pool, g.n * g.ho,
              [=](int64_t lo, int64_t hi) { ForwardRows<C>(xp, yp, ip, g, lo, hi); });
  return ffi::Error::Success();
}

template <int C>
ffi::Error Backward(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& gy, ffi::Buffer<ffi::S8>& idx,
                    ffi::ResultBuffer<ffi::F32>& dx) {
  bool ok = false;
  const Geometry g = GeometryOf(dx->dimensions(), C, &ok);
  if (!ok) return ffi::Error::InvalidArgument("max_pool_2x2_bwd: dx must be (..., H, W, C)");
  const size_t pooled = static_cast<size_t>(g.n * g.ho * g.wo * C);
  if (gy.element_count() != pooled || idx.element_count() != pooled) {
    return ffi::Error::InvalidArgument("max_pool_2x2_bwd: gy and idx must be (..., H/2, W/2, C)");
  }
  const float* gp = gy.typed_data();
  const int8_t* ip = idx.typed_data();
  float* dp = dx->typed_data();
  ParallelFor(pool, g.n * g.ho,
              [=](int64_t lo, int64_t hi) { BackwardRows<C>(gp, ip, dp, g, lo, hi); });
  return ffi::Error::Success();
}

// The channel counts with a specialised kernel; keep SUPPORTED_CHANNELS in _cpu_kernel.py equal.
#define INVARIANCE_FOR_EACH_C(X) X(4) X(8) X(16) X(32) X(64)

int64_t Channels(const ffi::Span<const int64_t>& d) { return d.size() == 0 ? -1 : d[d.size() - 1]; }

// f(std::integral_constant<int, C>{}) for the channel count c, if it has a specialisation.
template <typename F>
ffi::Error WithChannels(int64_t c, const char* op, F f) {
  switch (c) {
#define CASE(C) \
  case C:       \
    return f(std::integral_constant<int, C>{});
    INVARIANCE_FOR_EACH_C(CASE)
#undef CASE
    default:
      return ffi::Error::InvalidArgument(std::string(op) + ": unsupported channel count");
  }
}

ffi::Error MaxPool2x2Fwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S8> idx) {
  return WithChannels(Channels(x.dimensions()), "max_pool_2x2_fwd", [&](auto c) {
    return Forward<decltype(c)::value>(pool, x, y, idx);
  });
}

ffi::Error MaxPool2x2Bwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gy, ffi::Buffer<ffi::S8> idx,
                         ffi::ResultBuffer<ffi::F32> dx) {
  return WithChannels(Channels(dx->dimensions()), "max_pool_2x2_bwd", [&](auto c) {
    return Backward<decltype(c)::value>(pool, gy, idx, dx);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvarianceMaxPool2x2Fwd, MaxPool2x2Fwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvarianceMaxPool2x2Bwd, MaxPool2x2Bwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Fused CPU kernels of the level set evolution (dlset_jax.levelset.evolve), called
// from JAX through the XLA FFI. Built on first use by evolution_kernel/__init__.py.
//
// Why a kernel: XLA:CPU compiles one evolution step into ~30 loop fusions, each a full
// pass over the batch, and its autodiff backward into ~30 more plus the transposes of
// every finite-difference slice. Here one step is five row-wise passes over one image
// held in L2, and the backward is written by hand (the curvature and regularisation
// branches carry no gradient, as in levelset.evolve_step).
//
// The arithmetic mirrors levelset.py operation by operation (same float32 polynomials
// for sin/cos, same order of additions) so the two agree to float rounding; the tests
// compare values and gradients against the XLA version.
//
// Layout: phi0 and g are (N..., H, W) float32 (any leading dims, flattened to N
// images), the motion (N..., H, W, 2) (y, x). Images are split over threads; each
// thread owns its scratch planes.

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Params {
  int64_t steps;
  float timestep, ratio, dt_max;
  bool authors_corners;
};

// --- float32 sin/cos, as levelset._quadrants (Cody-Waite reduction by pi/2) -------

constexpr float kPio2_1 = 1.5703125f;
constexpr float kPio2_2 = 4.837512969970703125e-4f;
constexpr float kPio2_3 = 7.54978995489188216e-8f;

inline void Quadrants(float x, float* sin_out, float* cos_out) {
  const float k = std::rint(x * static_cast<float>(2 / 3.14159265358979323846));
  const float r = ((x - k * kPio2_1) - k * kPio2_2) - k * kPio2_3;
  const float z = r * r;
  const float s = r * (1 + z * (static_cast<float>(-1.0 / 6) + z * (
      static_cast<float>(1.0 / 120) + z * (static_cast<float>(-1.0 / 5040) + z * (
      static_cast<float>(1.0 / 362880) + z * (static_cast<float>(-1.0 / 39916800) +
      z * static_cast<float>(1.0 / 6227020800))))))) ;
  const float c = 1 + z * (-0.5f + z * (static_cast<float>(1.0 / 24) + z * (
      static_cast<float>(-1.0 / 720) + z * (static_cast<float>(1.0 / 40320) + z * (
      static_cast<float>(-1.0 / 3628800) + z * (static_cast<float>(1.0 / 479001600) +
      z * static_cast<float>(-1.0 / 87178291200))))))) ;
  const int q = static_cast<int>(k - 4 * std::floor(k / 4));
  *sin_out = q == 0 ? s : (q == 1 ? c : (q == 2 ? -s : -c));
  *cos_out = q == 0 ? c : (q == 1 ? -s : (q == 2 ? -c : s));
}

// --- the band-limited Dirac delta (levelset.dirac) and its derivative ----------------

struct Band {
  explicit Band(const Params& prm)
      : inv_dt_max(1.f / prm.dt_max), ratio(prm.ratio),
        arg_scale(static_cast<float>(3.14159265358979323846 / prm.ratio)),
        slope_scale(static_cast<float>(-0.5 * 3.14159265358979323846 / prm.ratio /
                                       prm.dt_max)) {}
  float inv_dt_max, ratio, arg_scale, slope_scale;
};

// delta(phi) = 0.5 (1 + cos(pi u / ratio)) for |u| < ratio, u = phi / dt_max; slope =
// d delta / d phi. Constants are multiplied as reciprocals (1 ulp from the XLA code).
inline void Dirac(float phi, const Band& band, float* delta, float* slope) {
  const float u = phi * band.inv_dt_max;
  float sn, cs;
  Quadrants(band.arg_scale * u, &sn, &cs);
  const bool in_band = std::fabs(u) < band.ratio;
  *delta = in_band ? 0.5f * (1 + cs) : 0.f;
  *slope = in_band ? band.slope_scale * sn : 0.f;
}

// --- finite differences with numpy.gradient rules ----------------------------------

// Rows entering d/dy at row i: (x[hi] - x[lo]) * scale.
inline void YStencil(int i, int h, int* lo, int* hi, float* scale) {
  if (i == 0) {
    *lo = 0, *hi = 1, *scale = 1.f;
  } else if (i == h - 1) {
    *lo = h - 2, *hi = h - 1, *scale = 1.f;
  } else {
    *lo = i - 1, *hi = i + 1, *scale = 0.5f;
  }
}

inline void DxRow(const float* r, float* out, int w) {
  out[0] = r[1] - r[0];
#pragma omp simd
  for (int j = 1; j < w - 1; ++j) out[j] = (r[j + 1] - r[j - 1]) * 0.5f;
  out[w - 1] = r[w - 1] - r[w - 2];
}

// out += transpose of d/dx applied to the cotangent row a.
inline void DxTransposeAddRow(const float* a, float* out, int w) {
#pragma omp simd
  for (int k = 2; k < w - 2; ++k) out[k] += 0.5f * a[k - 1] - 0.5f * a[k + 1];
  for (int k = 0; k < w; ++k) {
    if (k >= 2 && k < w - 2) continue;
    float v = 0.f;
    if (k - 1 >= 1 && k - 1 <= w - 2) v += 0.5f * a[k - 1];
    if (k + 1 >= 1 && k + 1 <= w - 2) v -= 0.5f * a[k + 1];
    if (k == 1) v += a[0];
    if (k == 0) v -= a[0];
    if (k == w - 1) v += a[w - 1];
    if (k == w - 2) v -= a[w - 1];
    out[k] += v;
  }
}

// out (H x W) += transpose of d/dy applied to the cotangent image a.
inline void DyTransposeAdd(const float* a, float* out, int h, int w) {
  for (int i = 0; i < h; ++i) {
    int lo, hi;
    float scale;
    YStencil(i, h, &lo, &hi, &scale);
    const float* ai = a + static_cast<int64_t>(i) * w;
    float* o_hi = out + static_cast<int64_t>(hi) * w;
    float* o_lo = out + static_cast<int64_t>(lo) * w;
#pragma omp simd
    for (int j = 0; j < w; ++j) o_hi[j] += scale * ai[j];
#pragma omp simd
    for (int j = 0; j < w; ++j) o_lo[j] -= scale * ai[j];
  }
}

// --- Neumann boundary --------------------------------------------------------------

inline int Mirror(int i, int n) { return i == 0 ? 2 : (i == n - 1 ? n - 3 : i); }

inline bool KeptCorner(int i, int j, int h, int w) {
  return (i == 0 && j == w - 1) || (i == h - 1 && j == 0);
}

// b = neumann_boundary(p).
void Boundary(const float* p, float* b, int h, int w, bool authors) {
  for (int i = 0; i < h; ++i) {
    const float* src = p + static_cast<int64_t>(Mirror(i, h)) * w;
    float* dst = b + static_cast<int64_t>(i) * w;
    std::copy(src, src + w, dst);
    dst[0] = src[2];
    dst[w - 1] = src[w - 3];
  }
  if (authors) {
    b[w - 1] = p[w - 1];
    b[static_cast<int64_t>(h - 1) * w] = p[static_cast<int64_t>(h - 1) * w];
  }
}

// cp = transpose of neumann_boundary applied to cb (overwrites cp).
void BoundaryTranspose(const float* cb, float* cp, int h, int w, bool authors) {
  std::fill(cp, cp + static_cast<int64_t>(h) * w, 0.f);
  for (int i = 0; i < h; ++i) {
    const float* src = cb + static_cast<int64_t>(i) * w;
    float* dst = cp + static_cast<int64_t>(Mirror(i, h)) * w;
#pragma omp simd
    for (int j = 1; j < w - 1; ++j) dst[j] += src[j];
    for (int j : {0, w - 1}) {
      if (authors && KeptCorner(i, j, h, w)) {
        cp[static_cast<int64_t>(i) * w + j] += src[j];
      } else {
        dst[Mirror(j, w)] += src[j];
      }
    }
  }
}

// --- one step ------------------------------------------------------------------------

// Uninitialised float storage: every element is written before it is read.
class Floats {
 public:
  explicit Floats(int64_t n) : p_(new float[n]) {}
  float* data() { return p_.get(); }
  const float* data() const { return p_.get(); }

 private:
  std::unique_ptr<float[]> p_;
};

// One worker's images: full-image planes, and two rows of temporaries.
struct Scratch {
  Scratch(int h, int w)
      : b(int64_t{h} * w), gx(int64_t{h} * w), gy(int64_t{h} * w), nx(int64_t{h} * w),
        ny(int64_t{h} * w), p1(int64_t{h} * w), ax(int64_t{h} * w), ay(int64_t{h} * w),
        vy(int64_t{h} * w), vx(int64_t{h} * w), c(int64_t{h} * w),
        c_prev(int64_t{h} * w), row(w), row2(w) {}
  Floats b, gx, gy, nx, ny, p1, ax, ay;
  Floats vy, vx;         // the image's motion, de-interleaved (backward: cotangents)
  Floats c, c_prev;      // backward: cotangents of the current and previous state
  Floats row, row2;
};

// From b = boundary(phi): gradients (gx, gy) and the unit normal (nx, ny).
void GradientsAndNormal(const float* b, Scratch& s, int h, int w) {
  for (int i = 0; i < h; ++i) {
    int lo, hi;
    float scale;
    YStencil(i, h, &lo, &hi, &scale);
    const int64_t o = static_cast<int64_t>(i) * w;
    const float* rl = b + static_cast<int64_t>(lo) * w;
    const float* rh = b + static_cast<int64_t>(hi) * w;
    float* gx = s.gx.data() + o;
    float* gy = s.gy.data() + o;
    float* nx = s.nx.data() + o;
    float* ny = s.ny.data() + o;
    DxRow(b + o, gx, w);
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      gy[j] = (rh[j] - rl[j]) * scale;
      const float inv = 1.f / std::sqrt(gx[j] * gx[j] + gy[j] * gy[j] + 1e-10f);
      nx[j] = gx[j] * inv;
      ny[j] = gy[j] * inv;
    }
  }
}

// kappa of row i = d(nx)/dx + d(ny)/dy, into out.
inline void CurvatureRow(const Scratch& s, int i, int h, int w, float* dx_tmp,
                         float* out) {
  int lo, hi;
  float scale;
  YStencil(i, h, &lo, &hi, &scale);
  DxRow(s.nx.data() + static_cast<int64_t>(i) * w, dx_tmp, w);
  const float* ny_l = s.ny.data() + static_cast<int64_t>(lo) * w;
  const float* ny_h = s.ny.data() + static_cast<int64_t>(hi) * w;
#pragma omp simd
  for (int j = 0; j < w; ++j) out[j] = dx_tmp[j] + (ny_h[j] - ny_l[j]) * scale;
}

// phi_next = p1 + 0.2 * R(p1) with p1 the level set after the motion/curvature update.
void Regularise(const float* p1, Scratch& s, float* out, int h, int w) {
  for (int i = 0; i < h; ++i) {
    int lo, hi;
    float scale;
    YStencil(i, h, &lo, &hi, &scale);
    const int64_t o = static_cast<int64_t>(i) * w;
    const float* rl = p1 + static_cast<int64_t>(lo) * w;
    const float* rh = p1 + static_cast<int64_t>(hi) * w;
    float* gx = s.row.data();
    float* ax = s.ax.data() + o;
    float* ay = s.ay.data() + o;
    DxRow(p1 + o, gx, w);
    const float two_pi = static_cast<float>(2 * 3.14159265358979323846);
    const float inv_two_pi = static_cast<float>(1 / (2 * 3.14159265358979323846));
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const float gy = (rh[j] - rl[j]) * scale;
      const float norm = std::sqrt(gx[j] * gx[j] + gy * gy + 1e-10f);
      float sn, cs;
      Quadrants(two_pi * norm, &sn, &cs);
      float ps = norm <= 1 ? sn * inv_two_pi : norm - 1;
      ps = std::fabs(ps) <= 1e-10f ? 1.f : ps;
      const float safe = std::fabs(norm) <= 1e-10f ? 1.f : norm;
      const float dps = ps / safe;
      ax[j] = dps * gx[j] - gx[j];
      ay[j] = dps * gy - gy;
    }
  }
  for (int i = 0; i < h; ++i) {
    int lo, hi;
    float scale;
    YStencil(i, h, &lo, &hi, &scale);
    const int64_t o = static_cast<int64_t>(i) * w;
    // Laplacian: interior 5-point stencil, border = nearest interior value.
    const int ci = std::min(std::max(i, 1), h - 2);
    const float* up = p1 + static_cast<int64_t>(ci - 1) * w;
    const float* mid = p1 + static_cast<int64_t>(ci) * w;
    const float* down = p1 + static_cast<int64_t>(ci + 1) * w;
    float* lap = s.row2.data();
#pragma omp simd
    for (int j = 1; j < w - 1; ++j)
      lap[j] = up[j] + down[j] + mid[j - 1] + mid[j + 1] - 4 * mid[j];
    lap[0] = lap[1];
    lap[w - 1] = lap[w - 2];
    float* dax = s.row.data();
    DxRow(s.ax.data() + o, dax, w);
    const float* ay_l = s.ay.data() + static_cast<int64_t>(lo) * w;
    const float* ay_h = s.ay.data() + static_cast<int64_t>(hi) * w;
    const float* p = p1 + o;
    float* dst = out + o;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const float reg = dax[j] + (ay_h[j] - ay_l[j]) * scale + lap[j];
      dst[j] = p[j] + 0.2f * reg;
    }
  }
}

void ForwardStep(const float* phi, const float* vy, const float* vx, const float* g,
                 float* out, Scratch& s, int h, int w, const Params& prm) {
  Boundary(phi, s.b.data(), h, w, prm.authors_corners);
  GradientsAndNormal(s.b.data(), s, h, w);
  const Band band(prm);
  for (int i = 0; i < h; ++i) {
    const int64_t o = static_cast<int64_t>(i) * w;
    float* kappa = s.row2.data();
    CurvatureRow(s, i, h, w, s.row.data(), kappa);
    const float* b = s.b.data() + o;
    const float* gx = s.gx.data() + o;
    const float* gy = s.gy.data() + o;
    float* p1 = s.p1.data() + o;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      float delta, slope;
      Dirac(b[j], band, &delta, &slope);
      const float force = vx[o + j] * gx[j] + vy[o + j] * gy[j] + g[o + j] * kappa[j];
      p1[j] = b[j] + prm.timestep * delta * force;
    }
  }
  Regularise(s.p1.data(), s, out, h, w);
}

// Backward of one step: c_phi = d(step)/d(phi)^T c_out, and the motion / modulation
// cotangents are accumulated into c_vy, c_vx, c_g. Only the Dirac-weighted update
// carries gradient (kappa and the regularisation input are stop_gradient).
void BackwardStep(const float* phi, const float* vy, const float* vx, const float* g,
                  const float* c_out, float* c_phi, float* c_vy, float* c_vx,
                  float* c_g, Scratch& s, int h, int w, const Params& prm) {
  Boundary(phi, s.b.data(), h, w, prm.authors_corners);
  GradientsAndNormal(s.b.data(), s, h, w);
  const Band band(prm);
  // s.p1 holds c_b (cotangent of the bounded level set); s.ax / s.ay the cotangents
  // of gx / gy, transposed below.
  for (int i = 0; i < h; ++i) {
    const int64_t o = static_cast<int64_t>(i) * w;
    float* kappa = s.row2.data();
    CurvatureRow(s, i, h, w, s.row.data(), kappa);
    const float* b = s.b.data() + o;
    const float* gx = s.gx.data() + o;
    const float* gy = s.gy.data() + o;
    const float* c = c_out + o;
    float* cb = s.p1.data() + o;
    float* cgx = s.ax.data() + o;
    float* cgy = s.ay.data() + o;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      float delta, slope;
      Dirac(b[j], band, &delta, &slope);
      const float force = vx[o + j] * gx[j] + vy[o + j] * gy[j] + g[o + j] * kappa[j];
      const float c_force = c[j] * prm.timestep * delta;
      cb[j] = c[j] + c[j] * prm.timestep * force * slope;
      cgx[j] = c_force * vx[o + j];
      cgy[j] = c_force * vy[o + j];
      c_vx[o + j] += c_force * gx[j];
      c_vy[o + j] += c_force * gy[j];
      c_g[o + j] += c_force * kappa[j];
    }
  }
  for (int i = 0; i < h; ++i) {
    const int64_t o = static_cast<int64_t>(i) * w;
    DxTransposeAddRow(s.ax.data() + o, s.p1.data() + o, w);
  }
  DyTransposeAdd(s.ay.data(), s.p1.data(), h, w);
  BoundaryTranspose(s.p1.data(), c_phi, h, w, prm.authors_corners);
}

// --- batching and threads --------------------------------------------------------------

int WorkerCount(int64_t images) {
  cpu_set_t set;
  int cpus = 1;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus < 1) cpus = 1;
  return static_cast<int>(std::min<int64_t>(cpus, std::max<int64_t>(images, 1)));
}

// per_image(n, scratch) for every image n, over threads with one Scratch each.
template <typename F>
void ParallelOverImages(int64_t images, int h, int w, F&& per_image) {
  const int workers = WorkerCount(images);
  auto run = [&](int worker) {
    Scratch s(h, w);
    for (int64_t n = worker; n < images; n += workers) per_image(n, s);
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < workers; ++t) threads.emplace_back(run, t);
  run(0);
  for (auto& t : threads) t.join();
}

struct Geometry {
  int64_t images;
  int h, w;
};

ffi::Error ImageGeometry(const ffi::Buffer<ffi::F32>& phi, Geometry* geo) {
  auto dims = phi.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("phi needs rank >= 2");
  geo->h = static_cast<int>(dims[dims.size() - 2]);
  geo->w = static_cast<int>(dims[dims.size() - 1]);
  if (geo->h < 3 || geo->w < 3)
    return ffi::Error::InvalidArgument("evolution needs H, W >= 3");
  geo->images = 1;
  for (size_t k = 0; k + 2 < dims.size(); ++k) geo->images *= dims[k];
  return ffi::Error::Success();
}

struct Sizes {
  const char* name;
  size_t got, want;
};

ffi::Error CheckSameSize(const char* name, size_t got, size_t want) {
  if (got == want) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(name) + " has " + std::to_string(got) +
                                     " elements, expected " + std::to_string(want));
}

Params MakeParams(int64_t steps, float timestep, float ratio, float dt_max,
                  int64_t authors) {
  return Params{steps, timestep, ratio, dt_max, authors != 0};
}

// Motion is (..., H, W, 2) with y then x: split into two planes once per image.
void SplitMotion(const float* motion, int64_t hw, float* vy, float* vx) {
#pragma omp simd
  for (int64_t k = 0; k < hw; ++k) {
    vy[k] = motion[2 * k];
    vx[k] = motion[2 * k + 1];
  }
}

void JoinMotion(const float* vy, const float* vx, int64_t hw, float* motion) {
#pragma omp simd
  for (int64_t k = 0; k < hw; ++k) {
    motion[2 * k] = vy[k];
    motion[2 * k + 1] = vx[k];
  }
}

// phi0, g: (N..., H, W); motion (N..., H, W, 2). Results: the states the backward
// needs, phi_0 .. phi_{T-1} as (N..., T, H, W), and phi_T (N..., H, W).
ffi::Error Forward(ffi::Buffer<ffi::F32> phi0, ffi::Buffer<ffi::F32> motion,
                   ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> states,
                   ffi::ResultBuffer<ffi::F32> last, int64_t steps, float timestep,
                   float ratio, float dt_max, int64_t authors) {
  Geometry geo;
  if (auto e = ImageGeometry(phi0, &geo); e.failure()) return e;
  if (steps < 0) return ffi::Error::InvalidArgument("steps must be >= 0");
  const size_t n = phi0.element_count();
  for (auto [name, got, want] :
       {Sizes{"motion", motion.element_count(), 2 * n}, Sizes{"g", g.element_count(), n},
        Sizes{"states", states->element_count(), n * steps},
        Sizes{"phi_T", last->element_count(), n}})
    if (auto e = CheckSameSize(name, got, want); e.failure()) return e;
  const Params prm = MakeParams(steps, timestep, ratio, dt_max, authors);
  const int64_t hw = static_cast<int64_t>(geo.h) * geo.w;
  ParallelOverImages(geo.images, geo.h, geo.w, [&](int64_t img, Scratch& s) {
    const float* p0 = phi0.typed_data() + img * hw;
    float* saved = states->typed_data() + img * steps * hw;
    float* out = last->typed_data() + img * hw;
    if (steps == 0) {
      std::copy(p0, p0 + hw, out);
      return;
    }
    SplitMotion(motion.typed_data() + 2 * img * hw, hw, s.vy.data(), s.vx.data());
    std::copy(p0, p0 + hw, saved);
    for (int64_t t = 0; t < steps; ++t) {
      float* next = t + 1 < steps ? saved + (t + 1) * hw : out;
      ForwardStep(saved + t * hw, s.vy.data(), s.vx.data(), g.typed_data() + img * hw,
                  next, s, geo.h, geo.w, prm);
    }
  });
  return ffi::Error::Success();
}

// states: (N..., T, H, W) from Forward; cotangent: of phi_T alone (N..., H, W) or of
// every state phi_0 .. phi_T (N..., T+1, H, W). Results: cotangents of phi0, motion, g.
ffi::Error Backward(ffi::Buffer<ffi::F32> states, ffi::Buffer<ffi::F32> motion,
                    ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> cotangent,
                    ffi::ResultBuffer<ffi::F32> c_phi0,
                    ffi::ResultBuffer<ffi::F32> c_motion, ffi::ResultBuffer<ffi::F32> c_g,
                    int64_t steps, float timestep, float ratio, float dt_max,
                    int64_t authors) {
  Geometry geo;
  if (auto e = ImageGeometry(g, &geo); e.failure()) return e;
  if (steps < 0) return ffi::Error::InvalidArgument("steps must be >= 0");
  const size_t n = g.element_count();
  const bool per_state = cotangent.element_count() == n * (steps + 1) && steps > 0;
  for (auto [name, got, want] :
       {Sizes{"motion", motion.element_count(), 2 * n},
        Sizes{"states", states.element_count(), n * steps},
        Sizes{"cotangent", cotangent.element_count(), per_state ? n * (steps + 1) : n},
        Sizes{"phi0 cotangent", c_phi0->element_count(), n},
        Sizes{"motion cotangent", c_motion->element_count(), 2 * n},
        Sizes{"g cotangent", c_g->element_count(), n}})
    if (auto e = CheckSameSize(name, got, want); e.failure()) return e;
  const Params prm = MakeParams(steps, timestep, ratio, dt_max, authors);
  const int64_t hw = static_cast<int64_t>(geo.h) * geo.w;
  ParallelOverImages(geo.images, geo.h, geo.w, [&](int64_t img, Scratch& s) {
    const int64_t o = img * hw;
    const float* saved = states.typed_data() + img * steps * hw;
    const float* cots = cotangent.typed_data() + img * (per_state ? steps + 1 : 1) * hw;
    float* cg = c_g->typed_data() + o;
    // The motion planes hold the motion while stepping back, their cotangents in
    // c_vy / c_vx (reusing ax / ay would clash with BackwardStep's temporaries).
    std::vector<float> cvy(hw, 0.f), cvx(hw, 0.f);
    std::fill(cg, cg + hw, 0.f);
    SplitMotion(motion.typed_data() + 2 * o, hw, s.vy.data(), s.vx.data());
    const float* c_last = cots + (per_state ? steps : 0) * hw;
    std::copy(c_last, c_last + hw, s.c.data());
    for (int64_t t = steps - 1; t >= 0; --t) {
      BackwardStep(saved + t * hw, s.vy.data(), s.vx.data(), g.typed_data() + o,
                   s.c.data(), s.c_prev.data(), cvy.data(), cvx.data(), cg, s, geo.h,
                   geo.w, prm);
      float* c = s.c.data();
      const float* prev = s.c_prev.data();
      if (per_state) {
        const float* ct = cots + t * hw;
#pragma omp simd
        for (int64_t k = 0; k < hw; ++k) c[k] = prev[k] + ct[k];
      } else {
        std::copy(prev, prev + hw, c);
      }
    }
    std::copy(s.c.data(), s.c.data() + hw, c_phi0->typed_data() + o);
    JoinMotion(cvy.data(), cvx.data(), hw, c_motion->typed_data() + 2 * o);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DlsetEvolveForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("steps")
                                  .Attr<float>("timestep")
                                  .Attr<float>("ratio")
                                  .Attr<float>("dt_max")
                                  .Attr<int64_t>("authors_corners"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DlsetEvolveBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("steps")
                                  .Attr<float>("timestep")
                                  .Attr<float>("ratio")
                                  .Attr<float>("dt_max")
                                  .Attr<int64_t>("authors_corners"));

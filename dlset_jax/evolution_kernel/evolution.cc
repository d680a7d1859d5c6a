// Fused CPU kernels of the level set evolution (dlset_jax.levelset.evolve), called
// from JAX through the XLA FFI. Built on first use by evolution_kernel/__init__.py.
//
// Why a kernel: XLA:CPU compiles one evolution step into ~30 loop fusions, each a full
// pass over the batch, and its autodiff backward into ~30 more plus the transposes of
// every finite-difference slice. Here a step is a few row-wise passes over one image,
// the motion/curvature update and its backward run only where the Dirac delta is
// non-zero, and the backward is written by hand (the curvature and regularisation
// branches carry no gradient, as in levelset.evolve_step).
//
// The arithmetic follows levelset.py operation by operation (same order of additions,
// same sin/cos polynomials after a cheaper range reduction, 1/sqrt to ~2e-7) so the
// two agree to float rounding; the tests compare values and gradients against the XLA
// version and the authors' fixtures.
//
// Layout: NHWC as levelset.evolve: phi0 and g are (N..., H, W, 1) float32 (any
// leading dims, flattened to N images), the motion (N..., H, W, 2) (y, x). Images are
// shared out over XLA's intra-op threads; each thread owns its scratch planes.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Params {
  float timestep, ratio, dt_max;
  bool authors_corners;
};

// --- float32 sin/cos ---------------------------------------------------------------
//
// The Taylor polynomials of levelset._sin_cos_small after a range reduction:
//  * SinOfArgument, for the regularisation: sin of the float32 product
//    float32(2 pi) * s, reduced by pi, as accurate as levelset._quadrants. The
//    regularisation needs exactly this, not a reduction of s itself: its guard
//    |p2'(s)| <= 1e-10 is discontinuous, and sin(float32(2 pi) * s) decides where it
//    fires (at s = 1/2 it is -8.7e-8, not 0; the authors' fixtures include such
//    pixels, where an exact sin(2 pi s) changes phi_T by 0.2 px).
//  * SinCosPi, for the Dirac delta, whose argument pi y lies in [-pi, pi] and whose
//    value has no guard: reduced by symmetry with exact subtractions.

constexpr float kPi = 3.14159265358979323846f;
constexpr float kTwoPi = 6.28318530717958647692f;
constexpr float kPio2_1 = 1.5703125f;  // pi/2 in three parts, as levelset._PIO2_*
constexpr float kPio2_2 = 4.837512969970703125e-4f;
constexpr float kPio2_3 = 7.54978995489188216e-8f;

// sin(x), cos(x) for |x| <= pi/2 + 1e-3 (truncation < 1e-9).
inline float SinSmall(float x) {
  const float z = x * x;
  return x * (1 + z * (static_cast<float>(-1.0 / 6) + z * (
      static_cast<float>(1.0 / 120) + z * (static_cast<float>(-1.0 / 5040) + z * (
      static_cast<float>(1.0 / 362880) + z * (static_cast<float>(-1.0 / 39916800) +
      z * static_cast<float>(1.0 / 6227020800)))))));
}

inline float CosSmall(float x) {
  const float z = x * x;
  return 1 + z * (-0.5f + z * (static_cast<float>(1.0 / 24) + z * (
      static_cast<float>(-1.0 / 720) + z * (static_cast<float>(1.0 / 40320) + z * (
      static_cast<float>(-1.0 / 3628800) + z * (static_cast<float>(1.0 / 479001600) +
      z * static_cast<float>(-1.0 / 87178291200)))))));
}

// sin(x) for a float32 0 <= x <= 2 pi + 1e-3 (to ~1 ulp, as levelset._quadrants,
// whose reduction by pi/2 needs both polynomials).
inline float SinOfArgument(float x) {
  const float m = std::rint(x * static_cast<float>(1 / 3.14159265358979323846));
  const float sn =
      SinSmall(((x - m * (2 * kPio2_1)) - m * (2 * kPio2_2)) - m * (2 * kPio2_3));
  return (static_cast<int>(m) & 1) ? -sn : sn;
}

// sin(pi y), cos(pi y) for |y| <= 1: pi y = pi r + k pi with |r| <= 1/2.
inline void SinCosPi(float y, float* sin_out, float* cos_out) {
  const bool far = std::fabs(y) > 0.5f;
  const float r = far ? y - std::copysign(1.f, y) : y;
  const float s = SinSmall(kPi * r), c = CosSmall(kPi * r);
  *sin_out = far ? -s : s;
  *cos_out = far ? -c : c;
}

// --- the band-limited Dirac delta (levelset.dirac) and its derivative ----------------

struct Band {
  explicit Band(const Params& prm)
      : inv_dt_max(1.f / prm.dt_max), ratio(prm.ratio), inv_ratio(1.f / prm.ratio),
        slope_scale(static_cast<float>(-0.5 * 3.14159265358979323846 / prm.ratio /
                                       prm.dt_max)) {}
  float inv_dt_max, ratio, inv_ratio, slope_scale;
};

// delta(phi) = 0.5 (1 + cos(pi u / ratio)) for |u| < ratio, u = phi / dt_max; slope =
// d delta / d phi. Constants are multiplied as reciprocals (1 ulp from the XLA code).
inline void Dirac(float phi, const Band& band, float* delta, float* slope) {
  const float u = phi * band.inv_dt_max;
  const bool in_band = std::fabs(u) < band.ratio;
  // Outside the band the value is discarded; clamping keeps the polynomial finite.
  const float y = std::min(std::max(u * band.inv_ratio, -1.f), 1.f);
  float sn, cs;
  SinCosPi(y, &sn, &cs);
  *delta = in_band ? 0.5f * (1 + cs) : 0.f;
  *slope = in_band ? band.slope_scale * sn : 0.f;
}

// --- 1 / sqrt -----------------------------------------------------------------------

// out[j] = 1 / sqrt(q[j]), q > 0, in place allowed: the hardware estimate refined by
// one Newton step (relative error ~2e-7), in place of a vector sqrt and division
// (~20 cycles per 16 floats here).
inline void InvSqrtRow(const float* q, float* out, int n) {
  int j = 0;
#if defined(__AVX512F__)
  const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
  for (; j + 16 <= n; j += 16) {
    const __m512 x = _mm512_loadu_ps(q + j);
    const __m512 y = _mm512_rsqrt14_ps(x);
    const __m512 hxyy = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_mul_ps(y, y));
    _mm512_storeu_ps(out + j, _mm512_mul_ps(y, _mm512_sub_ps(three_halves, hxyy)));
  }
#elif defined(__AVX__)
  const __m256 half = _mm256_set1_ps(0.5f), three_halves = _mm256_set1_ps(1.5f);
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_loadu_ps(q + j);
    const __m256 y = _mm256_rsqrt_ps(x);
    const __m256 hxyy = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_mul_ps(y, y));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(y, _mm256_sub_ps(three_halves, hxyy)));
  }
#endif
  for (; j < n; ++j) out[j] = 1.f / std::sqrt(q[j]);
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
  // The border columns 0, 1, w-2, w-1 by the general rule (w >= 3).
  const int border[4] = {0, 1, w - 2, w - 1};
  for (int m = 0; m < 4; ++m) {
    const int k = border[m];
    if (m == 2 && k <= 1) continue;  // w == 3: column 1 is done
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

// out (H x W) += transpose of d/dy applied to the cotangent image a, whose rows are
// zero where nonzero_row[i] is 0.
inline void DyTransposeAdd(const float* a, float* out, const uint8_t* nonzero_row,
                           int h, int w) {
  for (int i = 0; i < h; ++i) {
    if (!nonzero_row[i]) continue;
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

// --- where the update acts ----------------------------------------------------------
//
// The Dirac delta is zero outside the band |phi| < dirac_ratio * dt_max (9 px by
// default): there p1 = b exactly and no gradient flows, so the normals, the curvature
// and the whole backward of the update are needed only near the band. Activity is kept
// per chunk of kChunk columns of a row (one AVX-512 vector); in the test images of
// benchmarks/levelset.py a quarter of the chunks are active.

constexpr int kChunk = 16;

struct Activity {
  int chunks = 0;
  std::vector<uint8_t> band;     // h x chunks: some pixel has delta != 0
  std::vector<uint8_t> normals;  // normals needed: band dilated by a row and a chunk
  std::vector<uint8_t> any_row;  // h: the row has a band chunk
  std::vector<uint8_t> sideways;  // h x chunks: band dilated by a chunk (temporary)
};

void FindActivity(const float* b, const Band& bd, int h, int w, Activity& act) {
  const int nc = act.chunks;
  uint8_t* band = act.band.data();
  for (int i = 0; i < h; ++i) {
    const float* r = b + static_cast<int64_t>(i) * w;
    uint8_t row_any = 0;
    for (int c = 0; c < nc; ++c) {
      const int j0 = c * kChunk, j1 = std::min(w, j0 + kChunk);
      // Multiplying by inv_dt_max > 0 is monotonic in float, so the chunk's smallest
      // |phi| decides exactly as the per-pixel test in Dirac would.
      float m = std::fabs(r[j0]);
#pragma omp simd reduction(min : m)
      for (int j = j0; j < j1; ++j) m = std::min(m, std::fabs(r[j]));
      const uint8_t any = m * bd.inv_dt_max < bd.ratio;
      band[i * nc + c] = any;
      row_any |= any;
    }
    act.any_row[i] = row_any;
  }
  // normals = band dilated by one chunk sideways, then by one row up and down.
  std::vector<uint8_t>& rows = act.sideways;
  for (int i = 0; i < h; ++i) {
    const uint8_t* f = band + i * nc;
    uint8_t* o = rows.data() + i * nc;
    for (int c = 0; c < nc; ++c)
      o[c] = f[c] | (c > 0 ? f[c - 1] : 0) | (c + 1 < nc ? f[c + 1] : 0);
  }
  for (int i = 0; i < h; ++i) {
    const uint8_t* up = rows.data() + std::max(i - 1, 0) * nc;
    const uint8_t* mid = rows.data() + i * nc;
    const uint8_t* down = rows.data() + std::min(i + 1, h - 1) * nc;
    for (int c = 0; c < nc; ++c) act.normals[i * nc + c] = up[c] | mid[c] | down[c];
  }
}

// f(j0, j1) for each maximal run of flagged chunks of a row, as a column range.
template <typename F>
inline void ForRuns(const uint8_t* flags, int chunks, int w, F&& f) {
  for (int c = 0; c < chunks;) {
    if (!flags[c]) {
      ++c;
      continue;
    }
    int e = c + 1;
    while (e < chunks && flags[e]) ++e;
    f(c * kChunk, std::min(w, e * kChunk));
    c = e;
  }
}

// out[j] = d/dx of the row r at columns j0 <= j < j1 (numpy.gradient rules).
inline void DxRange(const float* r, float* out, int j0, int j1, int w) {
  if (j0 == 0) out[0] = r[1] - r[0];
  const int a = std::max(j0, 1), e = std::min(j1, w - 1);
#pragma omp simd
  for (int j = a; j < e; ++j) out[j] = (r[j + 1] - r[j - 1]) * 0.5f;
  if (j1 == w) out[w - 1] = r[w - 1] - r[w - 2];
}

// One worker's images: full-image planes, two rows of temporaries, the activity.
struct Scratch {
  Scratch(int h, int w)
      : b(int64_t{h} * w), gx(int64_t{h} * w), gy(int64_t{h} * w), nx(int64_t{h} * w),
        ny(int64_t{h} * w), ax(int64_t{h} * w), ay(int64_t{h} * w),
        vy(int64_t{h} * w), vx(int64_t{h} * w), c(int64_t{h} * w),
        c_prev(int64_t{h} * w), c_vy(int64_t{h} * w), c_vx(int64_t{h} * w), row(w),
        row2(w) {
    act.chunks = (w + kChunk - 1) / kChunk;
    act.band.resize(static_cast<size_t>(h) * act.chunks);
    act.normals.resize(static_cast<size_t>(h) * act.chunks);
    act.sideways.resize(static_cast<size_t>(h) * act.chunks);
    act.any_row.resize(h);
  }
  Floats b, gx, gy, nx, ny, ax, ay;  // b: the bounded level set, then p1
  Floats vy, vx;         // the image's motion, de-interleaved
  Floats c, c_prev;      // forward: c alternates with phi_T; backward: cotangents
  Floats c_vy, c_vx;     // backward: the motion's cotangents, de-interleaved
  Floats row, row2;
  Activity act;
};

// From b = boundary(phi), where act.normals is set: gradients (gx, gy) and the unit
// normal (nx, ny).
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
    const uint8_t* needed = s.act.normals.data() + i * s.act.chunks;
    ForRuns(needed, s.act.chunks, w, [&](int j0, int j1) {
      DxRange(b + o, gx, j0, j1, w);
      float* inv = nx;  // 1 / |grad|, then overwritten by nx
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        gy[j] = (rh[j] - rl[j]) * scale;
        inv[j] = gx[j] * gx[j] + gy[j] * gy[j] + 1e-10f;
      }
      InvSqrtRow(inv + j0, inv + j0, j1 - j0);
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        ny[j] = gy[j] * inv[j];
        nx[j] = gx[j] * inv[j];
      }
    });
  }
}

// kappa = d(nx)/dx + d(ny)/dy of row i at columns [j0, j1) (inside the band), into out.
inline void CurvatureRange(const Scratch& s, int i, int h, int w, int j0, int j1,
                           float* dx_tmp, float* out) {
  int lo, hi;
  float scale;
  YStencil(i, h, &lo, &hi, &scale);
  DxRange(s.nx.data() + static_cast<int64_t>(i) * w, dx_tmp, j0, j1, w);
  const float* ny_l = s.ny.data() + static_cast<int64_t>(lo) * w;
  const float* ny_h = s.ny.data() + static_cast<int64_t>(hi) * w;
#pragma omp simd
  for (int j = j0; j < j1; ++j) out[j] = dx_tmp[j] + (ny_h[j] - ny_l[j]) * scale;
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
    const float inv_two_pi = static_cast<float>(1 / (2 * 3.14159265358979323846));
    float* gy = ay;  // d/dy, then overwritten by ay
    float* q = s.row2.data();
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      gy[j] = (rh[j] - rl[j]) * scale;
      q[j] = gx[j] * gx[j] + gy[j] * gy[j] + 1e-10f;
    }
    float* inv = ax;  // 1 / |grad|, then overwritten by ax
    InvSqrtRow(q, inv, w);
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const float norm = q[j] * inv[j];
      // Where norm > 1 the sine is discarded; the clamp keeps its argument in range.
      const float sn = SinOfArgument(kTwoPi * std::min(norm, 1.f));
      float ps = norm <= 1 ? sn * inv_two_pi : norm - 1;
      ps = std::fabs(ps) <= 1e-10f ? 1.f : ps;
      // The reference divides by 1 where |grad| <= 1e-10; with the 1e-10 under the
      // root, |grad| >= 1e-5 always, so dps = ps / |grad| everywhere.
      const float dps = ps * inv[j];
      ax[j] = dps * gx[j] - gx[j];
      ay[j] = dps * gy[j] - gy[j];
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

// What both directions of a step start with: b = boundary(phi), where the band is,
// and the gradients and normals near it.
void PrepareStep(const float* phi, Scratch& s, int h, int w, const Params& prm,
                 const Band& band) {
  Boundary(phi, s.b.data(), h, w, prm.authors_corners);
  FindActivity(s.b.data(), band, h, w, s.act);
  GradientsAndNormal(s.b.data(), s, h, w);
}

// f(j0, j1, kappa) for each run of band chunks of row i, with the curvature of the run
// in kappa[j0:j1].
template <typename F>
inline void ForBandRuns(Scratch& s, int i, int h, int w, F&& f) {
  float* kappa = s.row2.data();
  ForRuns(s.act.band.data() + i * s.act.chunks, s.act.chunks, w, [&](int j0, int j1) {
    CurvatureRange(s, i, h, w, j0, j1, s.row.data(), kappa);
    f(j0, j1, kappa);
  });
}

// The update p1 = b + timestep * delta(b) * force at one pixel: delta, its slope
// d delta / d b, and force = M . grad(b) + g kappa.
struct Update {
  float delta, slope, force;
};

inline Update UpdateAt(float b, float vx, float vy, float gx, float gy, float g,
                       float kappa, const Band& band) {
  Update u;
  Dirac(b, band, &u.delta, &u.slope);
  u.force = vx * gx + vy * gy + g * kappa;
  return u;
}

// One step phi -> out.
void ForwardStep(const float* phi, const float* vy, const float* vx, const float* g,
                 float* out, Scratch& s, int h, int w, const Params& prm) {
  const Band band(prm);
  PrepareStep(phi, s, h, w, prm, band);
  // p1 = b + A force overwrites b in place: from here on b is read pixel by pixel only
  // (its gradients and normals are computed), and outside the band p1 = b.
  for (int i = 0; i < h; ++i) {
    if (!s.act.any_row[i]) continue;
    const int64_t o = static_cast<int64_t>(i) * w;
    float* b = s.b.data() + o;
    const float* gx = s.gx.data() + o;
    const float* gy = s.gy.data() + o;
    ForBandRuns(s, i, h, w, [&](int j0, int j1, const float* kappa) {
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        const Update u =
            UpdateAt(b[j], vx[o + j], vy[o + j], gx[j], gy[j], g[o + j], kappa[j], band);
        b[j] = b[j] + prm.timestep * u.delta * u.force;
      }
    });
  }
  Regularise(s.b.data(), s, out, h, w);
}

// Backward of one step: c_phi = d(step)/d(phi)^T c_out, and the motion / modulation
// cotangents are accumulated into c_vy, c_vx, c_g. Only the Dirac-weighted update
// carries gradient (kappa and the regularisation input are stop_gradient), so outside
// the band c_b = c_out and nothing else flows.
//
// c_out is overwritten (it becomes c_b, the cotangent of the bounded level set).
void BackwardStep(const float* phi, const float* vy, const float* vx, const float* g,
                  float* c_out, float* c_phi, float* c_vy, float* c_vx,
                  float* c_g, Scratch& s, int h, int w, const Params& prm) {
  const Band band(prm);
  PrepareStep(phi, s, h, w, prm, band);
  // s.ax / s.ay hold the cotangents of gx / gy (zero outside the band), transposed
  // below.
  for (int i = 0; i < h; ++i) {
    if (!s.act.any_row[i]) continue;
    const int64_t o = static_cast<int64_t>(i) * w;
    float* c = c_out + o;
    const float* b = s.b.data() + o;
    const float* gx = s.gx.data() + o;
    const float* gy = s.gy.data() + o;
    float* cgx = s.ax.data() + o;
    float* cgy = s.ay.data() + o;
    std::fill(cgx, cgx + w, 0.f);
    std::fill(cgy, cgy + w, 0.f);
    ForBandRuns(s, i, h, w, [&](int j0, int j1, const float* kappa) {
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        const Update u =
            UpdateAt(b[j], vx[o + j], vy[o + j], gx[j], gy[j], g[o + j], kappa[j], band);
        const float cj = c[j];
        const float c_force = cj * prm.timestep * u.delta;
        c[j] = cj + cj * prm.timestep * u.force * u.slope;  // c_b
        cgx[j] = c_force * vx[o + j];
        cgy[j] = c_force * vy[o + j];
        c_vx[o + j] += c_force * gx[j];
        c_vy[o + j] += c_force * gy[j];
        c_g[o + j] += c_force * kappa[j];
      }
    });
  }
  for (int i = 0; i < h; ++i) {
    if (!s.act.any_row[i]) continue;
    const int64_t o = static_cast<int64_t>(i) * w;
    DxTransposeAddRow(s.ax.data() + o, c_out + o, w);
  }
  DyTransposeAdd(s.ay.data(), c_out, s.act.any_row.data(), h, w);
  BoundaryTranspose(c_out, c_phi, h, w, prm.authors_corners);
}

// --- batching and threads ------------------------------------------------------------

// Images are shared out over XLA's own intra-op thread pool (the FFI ThreadPool)
// rather than threads of ours, which would compete with XLA's workers for the same
// cores (measured, kernels alone at batch 10, 256x256: forward 5.7 -> 4.5 ms, backward
// 4.9 -> 4.2 ms). The calling thread takes images too, so the work is done even when
// no pool thread is free.
struct SharedWork {
  SharedWork(int64_t images, int h, int w,
             std::function<void(int64_t, Scratch&)> per_image)
      : images(images), h(h), w(w), per_image(std::move(per_image)) {}
  const int64_t images;
  const int h, w;
  // Called only for claimed images, i.e. while the FFI call is still running: a task
  // that starts late finds nothing to claim and never touches the call's buffers.
  const std::function<void(int64_t, Scratch&)> per_image;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable finished;

  void Work() {
    std::unique_ptr<Scratch> scratch;
    for (int64_t n = next.fetch_add(1); n < images; n = next.fetch_add(1)) {
      if (scratch == nullptr) scratch = std::make_unique<Scratch>(h, w);
      per_image(n, *scratch);
      if (done.fetch_add(1) + 1 == images) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

template <typename F>
void ParallelOverImages(ffi::ThreadPool& pool, int64_t images, int h, int w,
                        F&& per_image) {
  auto work = std::make_shared<SharedWork>(images, h, w, std::forward<F>(per_image));
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), images) - 1;
  for (int64_t k = 0; k < helpers; ++k) pool.Schedule([work] { work->Work(); });
  work->Work();
  std::unique_lock<std::mutex> lock(work->mu);
  work->finished.wait(lock, [&] { return work->done.load() == images; });
}

struct Geometry {
  int64_t images;
  int h, w;
};

// Image count and size from the motion field, (N..., H, W, 2).
ffi::Error ImageGeometry(const ffi::Buffer<ffi::F32>& motion, Geometry* geo) {
  auto dims = motion.dimensions();
  if (dims.size() < 3 || dims[dims.size() - 1] != 2)
    return ffi::Error::InvalidArgument("motion must be (..., H, W, 2)");
  geo->h = static_cast<int>(dims[dims.size() - 3]);
  geo->w = static_cast<int>(dims[dims.size() - 2]);
  if (geo->h < 3 || geo->w < 3)
    return ffi::Error::InvalidArgument("evolution needs H, W >= 3");
  geo->images = 1;
  for (size_t k = 0; k + 3 < dims.size(); ++k) geo->images *= dims[k];
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

Params MakeParams(float timestep, float ratio, float dt_max, int64_t authors) {
  return Params{timestep, ratio, dt_max, authors != 0};
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

// phi0, g: (N..., H, W, 1); motion (N..., H, W, 2). Results: phi_T (N..., H, W, 1), the
// states phi_0 .. phi_{T-1} (N..., T, H, W) for a trajectory or the backward; the
// states may be empty (a zero-sized axis) when the caller needs neither.
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> phi0,
                   ffi::Buffer<ffi::F32> motion, ffi::Buffer<ffi::F32> g,
                   ffi::ResultBuffer<ffi::F32> last, ffi::ResultBuffer<ffi::F32> states,
                   int64_t steps, float timestep, float ratio, float dt_max,
                   int64_t authors) {
  Geometry geo;
  if (auto e = ImageGeometry(motion, &geo); e.failure()) return e;
  if (steps < 0) return ffi::Error::InvalidArgument("steps must be >= 0");
  const size_t n = static_cast<size_t>(geo.images) * geo.h * geo.w;
  const bool keep_states = states->element_count() > 0;
  for (auto [name, got, want] :
       {Sizes{"phi0", phi0.element_count(), n}, Sizes{"g", g.element_count(), n},
        Sizes{"phi_T", last->element_count(), n},
        Sizes{"states", states->element_count(), keep_states ? n * steps : 0}})
    if (auto e = CheckSameSize(name, got, want); e.failure()) return e;
  const Params prm = MakeParams(timestep, ratio, dt_max, authors);
  const int64_t hw = static_cast<int64_t>(geo.h) * geo.w;
  ParallelOverImages(pool, geo.images, geo.h, geo.w, [&](int64_t img, Scratch& s) {
    const float* p0 = phi0.typed_data() + img * hw;
    float* out = last->typed_data() + img * hw;
    if (steps == 0) {
      std::copy(p0, p0 + hw, out);
      return;
    }
    SplitMotion(motion.typed_data() + 2 * img * hw, hw, s.vy.data(), s.vx.data());
    float* saved = keep_states ? states->typed_data() + img * steps * hw : nullptr;
    if (saved != nullptr) std::copy(p0, p0 + hw, saved);
    const float* cur = p0;
    for (int64_t t = 0; t < steps; ++t) {
      // Step t writes the saved state t+1, or without saved states alternates between
      // phi_T's plane and a scratch plane so that the last step lands in phi_T's.
      float* next = t + 1 == steps ? out
                    : saved != nullptr ? saved + (t + 1) * hw
                    : ((steps - 1 - t) % 2 == 0 ? out : s.c.data());
      ForwardStep(cur, s.vy.data(), s.vx.data(), g.typed_data() + img * hw, next, s,
                  geo.h, geo.w, prm);
      cur = next;
    }
  });
  return ffi::Error::Success();
}

// states: phi_0 .. phi_{T-1} from Forward (N..., T, H, W); cotangent: of phi_T alone
// (N..., H, W, 1) or of every state phi_0 .. phi_T (N..., T+1, H, W). Results:
// cotangents of phi0, motion, g.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> states,
                    ffi::Buffer<ffi::F32> motion, ffi::Buffer<ffi::F32> g,
                    ffi::Buffer<ffi::F32> cotangent, ffi::ResultBuffer<ffi::F32> c_phi0,
                    ffi::ResultBuffer<ffi::F32> c_motion,
                    ffi::ResultBuffer<ffi::F32> c_g,
                    int64_t steps, float timestep, float ratio, float dt_max,
                    int64_t authors) {
  Geometry geo;
  if (auto e = ImageGeometry(motion, &geo); e.failure()) return e;
  if (steps < 0) return ffi::Error::InvalidArgument("steps must be >= 0");
  const size_t n = static_cast<size_t>(geo.images) * geo.h * geo.w;
  const bool per_state = cotangent.element_count() == n * (steps + 1) && steps > 0;
  for (auto [name, got, want] :
       {Sizes{"g", g.element_count(), n},
        Sizes{"states", states.element_count(), n * steps},
        Sizes{"cotangent", cotangent.element_count(), per_state ? n * (steps + 1) : n},
        Sizes{"phi0 cotangent", c_phi0->element_count(), n},
        Sizes{"motion cotangent", c_motion->element_count(), 2 * n},
        Sizes{"g cotangent", c_g->element_count(), n}})
    if (auto e = CheckSameSize(name, got, want); e.failure()) return e;
  const Params prm = MakeParams(timestep, ratio, dt_max, authors);
  const int64_t hw = static_cast<int64_t>(geo.h) * geo.w;
  ParallelOverImages(pool, geo.images, geo.h, geo.w, [&](int64_t img, Scratch& s) {
    const int64_t o = img * hw;
    const float* saved = states.typed_data() + img * steps * hw;
    const float* cots = cotangent.typed_data() + img * (per_state ? steps + 1 : 1) * hw;
    float* cg = c_g->typed_data() + o;
    float* cvy = s.c_vy.data();
    float* cvx = s.c_vx.data();
    std::fill(cvy, cvy + hw, 0.f);
    std::fill(cvx, cvx + hw, 0.f);
    std::fill(cg, cg + hw, 0.f);
    SplitMotion(motion.typed_data() + 2 * o, hw, s.vy.data(), s.vx.data());
    const float* c_last = cots + (per_state ? steps : 0) * hw;
    std::copy(c_last, c_last + hw, s.c.data());
    for (int64_t t = steps - 1; t >= 0; --t) {
      BackwardStep(saved + t * hw, s.vy.data(), s.vx.data(), g.typed_data() + o,
                   s.c.data(), s.c_prev.data(), cvy, cvx, cg, s, geo.h,
                   geo.w, prm);
      float* c = s.c.data();
      const float* prev = s.c_prev.data();
      if (per_state) {
        const float* ct = cots + t * hw;
#pragma omp simd
        for (int64_t k = 0; k < hw; ++k) c[k] = prev[k] + ct[k];
      } else {
        std::swap(s.c, s.c_prev);
      }
    }
    std::copy(s.c.data(), s.c.data() + hw, c_phi0->typed_data() + o);
    JoinMotion(cvy, cvx, hw, c_motion->typed_data() + 2 * o);
  });
  return ffi::Error::Success();
}

// The step parameters: the same attributes, in the order of the handlers' arguments.
template <typename Binding>
auto WithStepAttributes(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("steps")
      .template Attr<float>("timestep")
      .template Attr<float>("ratio")
      .template Attr<float>("dt_max")
      .template Attr<int64_t>("authors_corners");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DlsetEvolveForward, Forward,
                              WithStepAttributes(ffi::Ffi::Bind()
                                                     .Ctx<ffi::ThreadPool>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Ret<ffi::Buffer<ffi::F32>>()
                                                     .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DlsetEvolveBackward, Backward,
                              WithStepAttributes(ffi::Ffi::Bind()
                                                     .Ctx<ffi::ThreadPool>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Arg<ffi::Buffer<ffi::F32>>()
                                                     .Ret<ffi::Buffer<ffi::F32>>()
                                                     .Ret<ffi::Buffer<ffi::F32>>()
                                                     .Ret<ffi::Buffer<ffi::F32>>()));

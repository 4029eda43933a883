// The FC head's large elementwise passes on CPU, each one read (and at most one write) of its array.
//
// Why native: at r = 1.0 and a million classes per rank, the step's [N, S] logits and [S, D] centers are
// hundreds of MB to GB. MXNet 1.9's CPU operators make one pass per operator (scale, subtract, exp, sum, ...)
// and its reductions over an axis run several times slower than memory allows, so these passes took longer
// than the step's three matmuls. Here each pass is one loop over its array at memory speed (docs/design.md §3,
// docs/performance.md). The operators compute the same math as the stock-operator path of head/kernels.py,
// which GPU contexts (and a CPU without this library) take; tests compare both with the dense reference.
//
//   pfc_inv_row_norms(x [S, D])                   -> [S]     1 / |x_s|
//   pfc_scale_columns(x [N, S], v [S])            -> [N, S]  x_ns * v_s
//   pfc_row_max(x [N, S])                         -> [N]     max_s x_ns
//   pfc_exp_row_sum(x [N, S], shift [N]; scale)   -> [N, S]  exp(scale * x - shift_n), and [N] its row sums
//   pfc_scaled_transpose(e [N, S], a [N], b [S])  -> [S, N]  e_ns * a_n * b_s, transposed
//
// The [N, S] results of scale_columns and exp_row_sum may be x itself (out=x: in place, as the head calls them).
// They are outputs, not mutable inputs: MXNet 1.9 never frees the list of mutable inputs that it asks a library
// operator for on every call (32 bytes a call; row_update.cc says more).
// All float32, row-major, on the CPU. Work splits across MXNet's OpenMP threads by rows (by column tiles for
// the transpose), and each row's reduction runs in a fixed order, so results do not depend on the thread count.
// The inner loops are compiled for AVX-512, AVX2 and a generic x86-64 (target_clones): the library is built
// once and runs on whichever CPU the machine has today.
#include <cmath>
#include <cstdint>
#include <string>
#include <mxnet/lib_api.h>

using namespace mxnet::ext;

#define PFC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;
typedef std::vector<std::vector<unsigned int>> Shapes;

// exp(x) for float32 x, within 2.1 * 2^-23 relative of the exact value on [-87, 0] (tests/unit/test_softmax.py);
// 0 below -87.3 (where the exact value is below 1.2e-38).
// Written out (range reduction to r in [-ln2/2, ln2/2], a degree-6 polynomial, then the exponent bits) so the
// compiler vectorises the loops that call it; glibc's expf is a scalar call.
inline float exp_approx(float x) {
  x = x > 88.0f ? 88.0f : x;
  const bool tiny = x < -87.3f;
  x = tiny ? -87.3f : x;
  // k = round(x / ln 2) by adding and removing 1.5 * 2^23 (exact in round-to-nearest; a floor() call would
  // keep the loop scalar unless the whole file were compiled with -ffast-math).
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // ln 2 split in two parts, the first with few mantissa bits so that k * part is exact.
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  __builtin_memcpy(&two_k, &bits, sizeof two_k);
  return tiny ? 0.0f : p * two_k;
}

// Row sums run in blocks: each block sums in float32 lanes, the blocks add up in double, so a million-column
// row keeps float32 accuracy.
constexpr int64_t kBlock = 1024;

PFC_CLONES void inv_norm_rows(const float* x, float* out, int64_t lo, int64_t hi, int64_t D) {
  for (int64_t s = lo; s < hi; ++s) {
    const float* row = x + s * D;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += row[d] * row[d];
    out[s] = 1.0f / std::sqrt(acc);
  }
}

PFC_CLONES void scale_row(const float* x, const float* v, float* y, int64_t S) {
#pragma omp simd
  for (int64_t s = 0; s < S; ++s) y[s] = x[s] * v[s];
}

PFC_CLONES float max_row(const float* x, int64_t S) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t s = 0; s < S; ++s) m = x[s] > m ? x[s] : m;
  return m;
}

PFC_CLONES double exp_sum_row(const float* x, float* y, float scale, float shift, int64_t S) {
  double total = 0.0;
  for (int64_t lo = 0; lo < S; lo += kBlock) {
    const int64_t hi = lo + kBlock < S ? lo + kBlock : S;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t s = lo; s < hi; ++s) {
      const float e = exp_approx(scale * x[s] - shift);
      y[s] = e;
      acc += e;
    }
    total += acc;
  }
  return total;
}

// One tile of columns [lo, hi) of every row: read row-contiguous, written row-contiguous into the transpose.
PFC_CLONES void scaled_transpose_tile(const float* e, const float* a, const float* b, float* out, int64_t N,
                                      int64_t S, int64_t lo, int64_t hi) {
  for (int64_t n0 = 0; n0 < N; n0 += 64) {
    const int64_t n1 = n0 + 64 < N ? n0 + 64 : N;
    for (int64_t s = lo; s < hi; ++s) {
      float* dst = out + s * N;
      const float bs = b[s];
#pragma omp simd
      for (int64_t n = n0; n < n1; ++n) dst[n] = e[n * S + s] * a[n] * bs;
    }
  }
}

// --- shape and type checks ------------------------------------------------------------------------------

MXReturnValue all_float32(const char* op, const std::vector<int>& in, std::vector<int>* out) {
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != kFloat32) {
      MX_ERROR_MSG << op << ": input " << i << " must be float32";
      return MX_FAIL;
    }
  }
  for (auto& t : *out) t = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue fail_shape(const char* op, const char* expected) {
  MX_ERROR_MSG << op << ": expected " << expected;
  return MX_FAIL;
}

#define PFC_PARSE(NAME, IN, OUT)                                            \
  MXReturnValue NAME(const Attrs&, int* num_in, int* num_out) {             \
    *num_in = IN;                                                           \
    *num_out = OUT;                                                         \
    return MX_SUCCESS;                                                      \
  }
PFC_PARSE(parse_1_1, 1, 1)
PFC_PARSE(parse_2_1, 2, 1)
PFC_PARSE(parse_3_1, 3, 1)

#define PFC_TYPES(NAME, OP)                                                                          \
  MXReturnValue NAME(const Attrs&, std::vector<int>* in, std::vector<int>* out) {                   \
    return all_float32(OP, *in, out);                                                                \
  }
PFC_TYPES(types_inv_row_norms, "pfc_inv_row_norms")
PFC_TYPES(types_scale_columns, "pfc_scale_columns")
PFC_TYPES(types_row_max, "pfc_row_max")
PFC_TYPES(types_exp_row_sum, "pfc_exp_row_sum")
PFC_TYPES(types_scaled_transpose, "pfc_scaled_transpose")

// --- pfc_inv_row_norms ----------------------------------------------------------------------------------

MXReturnValue shape_inv_row_norms(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2) return fail_shape("pfc_inv_row_norms", "x [S, D]");
  (*out)[0] = {(*in)[0][0]};
  return MX_SUCCESS;
}

MXReturnValue inv_row_norms(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t S = (*in)[0].shape[0], D = (*in)[0].shape[1];
  const int64_t rows = 256;
#pragma omp parallel for schedule(static)
  for (int64_t lo = 0; lo < S; lo += rows) inv_norm_rows(x, y, lo, lo + rows < S ? lo + rows : S, D);
  return MX_SUCCESS;
}

// --- pfc_scale_columns ----------------------------------------------------------------------------------

MXReturnValue shape_scale_columns(const Attrs&, Shapes* in, Shapes* out) {
  const auto &x = (*in)[0], &v = (*in)[1];
  if (x.size() != 2 || v.size() != 1 || v[0] != x[1]) return fail_shape("pfc_scale_columns", "x [N, S], v [S]");
  (*out)[0] = x;
  return MX_SUCCESS;
}

MXReturnValue scale_columns(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  const float* x = (*in)[0].data<float>();
  const float* v = (*in)[1].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t N = (*in)[0].shape[0], S = (*in)[0].shape[1];
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) scale_row(x + n * S, v, y + n * S, S);
  return MX_SUCCESS;
}

// --- pfc_row_max ----------------------------------------------------------------------------------------

MXReturnValue shape_rows(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2) return fail_shape("pfc_row_max", "x [N, S]");
  (*out)[0] = {(*in)[0][0]};
  return MX_SUCCESS;
}

MXReturnValue row_max(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out, const OpResource&) {
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t N = (*in)[0].shape[0], S = (*in)[0].shape[1];
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) y[n] = max_row(x + n * S, S);
  return MX_SUCCESS;
}

// --- pfc_exp_row_sum ------------------------------------------------------------------------------------

MXReturnValue parse_exp_row_sum(const Attrs& attrs, int* num_in, int* num_out) {
  if (!attrs.count("scale")) {
    MX_ERROR_MSG << "pfc_exp_row_sum: attribute 'scale' is required";
    return MX_FAIL;
  }
  *num_in = 2;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue shape_exp_row_sum(const Attrs&, Shapes* in, Shapes* out) {
  const auto &x = (*in)[0], &shift = (*in)[1];
  if (x.size() != 2 || shift.size() != 1 || shift[0] != x[0])
    return fail_shape("pfc_exp_row_sum", "x [N, S], shift [N]");
  (*out)[0] = x;
  (*out)[1] = {x[0]};
  return MX_SUCCESS;
}

MXReturnValue exp_row_sum(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                          const OpResource&) {
  const float scale = std::stof(attrs.at("scale"));
  const float* x = (*in)[0].data<float>();
  const float* shift = (*in)[1].data<float>();
  float* y = (*out)[0].data<float>();
  float* sums = (*out)[1].data<float>();
  const int64_t N = (*in)[0].shape[0], S = (*in)[0].shape[1];
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) sums[n] = static_cast<float>(exp_sum_row(x + n * S, y + n * S, scale, shift[n], S));
  return MX_SUCCESS;
}

// --- pfc_scaled_transpose -------------------------------------------------------------------------------

MXReturnValue shape_scaled_transpose(const Attrs&, Shapes* in, Shapes* out) {
  const auto &e = (*in)[0], &a = (*in)[1], &b = (*in)[2];
  if (e.size() != 2 || a.size() != 1 || a[0] != e[0] || b.size() != 1 || b[0] != e[1])
    return fail_shape("pfc_scaled_transpose", "e [N, S], a [N], b [S]");
  (*out)[0] = {e[1], e[0]};
  return MX_SUCCESS;
}

MXReturnValue scaled_transpose(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               const OpResource&) {
  const float* e = (*in)[0].data<float>();
  const float* a = (*in)[1].data<float>();
  const float* b = (*in)[2].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t N = (*in)[0].shape[0], S = (*in)[0].shape[1];
  const int64_t cols = 64;
#pragma omp parallel for schedule(static)
  for (int64_t lo = 0; lo < S; lo += cols) scaled_transpose_tile(e, a, b, y, N, S, lo, lo + cols < S ? lo + cols : S);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(pfc_inv_row_norms)
.setParseAttrs(parse_1_1)
.setInferType(types_inv_row_norms)
.setInferShape(shape_inv_row_norms)
.setForward(inv_row_norms, "cpu");

REGISTER_OP(pfc_scale_columns)
.setParseAttrs(parse_2_1)
.setInferType(types_scale_columns)
.setInferShape(shape_scale_columns)
.setForward(scale_columns, "cpu");

REGISTER_OP(pfc_row_max)
.setParseAttrs(parse_1_1)
.setInferType(types_row_max)
.setInferShape(shape_rows)
.setForward(row_max, "cpu");

REGISTER_OP(pfc_exp_row_sum)
.setParseAttrs(parse_exp_row_sum)
.setInferType(types_exp_row_sum)
.setInferShape(shape_exp_row_sum)
.setForward(exp_row_sum, "cpu");

REGISTER_OP(pfc_scaled_transpose)
.setParseAttrs(parse_3_1)
.setInferType(types_scaled_transpose)
.setInferShape(shape_scaled_transpose)
.setForward(scaled_transpose, "cpu");

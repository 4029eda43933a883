// The two operators on the sampled rows of a float32 CPU memory bank: the step's gather and its update.
//
// pfc_gather_rows: copies rows `index` of the centers into a contiguous [S, D] array (what the step's
// matmuls read) and computes 1 / |w| of each in the same pass, while the row is in cache. Stock MXNet
// gathers with `take` and then reads the copy again for the norms; at r = 0.1 and a million rows per rank
// those two passes and the scattered reads were what kept the sampled step above a tenth of the full one.
//
//   Inputs:  0 weight  float32 [count, D]   1 index int64 [S] (rows of the bank, any order)
//   Outputs: 0 rows    float32 [S, D]       1 inv_norms float32 [S], 1 / |w_s|
//
// pfc_sgd_mom_rows: SGD with momentum and weight decay applied to a set of rows of a memory bank, in place.
//
// Why a native operator: MXNet 1.9 has no dense "update these rows where they are" operator. Built from stock
// operators, the sampled update of a float32 shard takes the momentum rows out, updates the two copies and
// scatters centers and momentum back: about twice the memory traffic of the update itself, which made the
// r = 0.1 step slower than a tenth of the r = 1.0 step (whose shard is updated in place). This operator reads
// each sampled row's center, gradient and momentum once and writes its center and momentum once.
//
// Inputs (all on the CPU, row-major):
//   0 weight    float32 [count, D]  the bank's centers
//   1 momentum  float32 [count, D]  the bank's momentum
//   2 grad      float32 [S, D]      the gradient of rows `index`
//   3 index     int64   [S]         bank rows to update, each at most once (the sampler's ids are unique)
// Attributes lr, momentum, wd: as MXNet's sgd_mom_update (rescale_grad 1, no clipping), with the same
// arithmetic in the same order, so results are bit-identical to sgd_mom_update on gathered copies.
// Attribute project (optional, default 0): 1 takes grad as g = dL/dw before the center normalisation's
// projection and applies the true gradient g - w (g.w) / (w.w) (docs/design.md §3 step 8): the projection
// needs the row's w, which this pass reads anyway, so the step never writes a projected [S, D] gradient.
// Outputs: 0 weight and 1 momentum after the update, [count, D] each. Call it with out=(weight, momentum), the
// inputs themselves: the rows are then updated where they lie, and MXNet's engine orders the call after every
// earlier reader of the bank and before every later one, as for any operator writing its output. (Outputs
// that are other arrays get a copy of the inputs first, then the update.)
// Why outputs and not mutable inputs: MXNet 1.9 asks a library operator for its mutable inputs on every call
// and never frees the list the library allocates for the answer (src/c_api/c_api.cc, callMutateInputs), 32
// bytes per call: the head's RSS rose by about 0.1 KB per step through a 100,000-step soak.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <mxnet/lib_api.h>

using namespace mxnet::ext;

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;

// Both operators visit bank rows in index order, and each sampled row starts a fresh stretch of memory where
// the hardware prefetcher has no history: they ask for the row two turns ahead while working on this one
// (100 k of 1e6 x 512 rows, the operator alone, AMD EPYC: the update 8-15 % faster in three runs; inside
// bench fc's step the gain was below that machine's run-to-run noise).
constexpr int64_t kAhead = 2;

inline void prefetch_row(const float* row, int64_t D, bool for_write) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(float)); b += 64) {
    if (for_write) __builtin_prefetch(p + b, 1, 3);
    else __builtin_prefetch(p + b, 0, 3);
  }
}

// Both operators check every index before they touch a row it names: a bad one fails the call with the
// operator's name, the index and the bank's row count.
MXReturnValue check_rows(const char* op, const int64_t* index, int64_t S, int64_t count) {
  for (int64_t s = 0; s < S; ++s) {
    if (index[s] < 0 || index[s] >= count) {
      MX_ERROR_MSG << op << ": index " << index[s] << " outside the bank's " << count << " rows";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

MXReturnValue parseAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  for (const char* key : {"lr", "momentum", "wd"}) {
    if (!attrs.count(key)) {
      MX_ERROR_MSG << "pfc_sgd_mom_rows: attribute '" << key << "' is required";
      return MX_FAIL;
    }
  }
  *num_in = 4;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue inferType(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  static const char* names[] = {"weight", "momentum", "grad"};
  for (int i = 0; i < 3; ++i) {
    if ((*in)[i] != kFloat32) {
      MX_ERROR_MSG << "pfc_sgd_mom_rows: " << names[i] << " must be float32";
      return MX_FAIL;
    }
  }
  if ((*in)[3] != kInt64) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows: index must be int64";
    return MX_FAIL;
  }
  (*out)[0] = (*out)[1] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue inferShape(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                         std::vector<std::vector<unsigned int>>* out) {
  const auto &w = (*in)[0], &m = (*in)[1], &g = (*in)[2], &i = (*in)[3];
  if (w.size() != 2 || m != w || g.size() != 2 || g[1] != w[1] || i.size() != 1 || i[0] != g[0]) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows: expected weight = momentum [count, D], grad [S, D], index [S]";
    return MX_FAIL;
  }
  (*out)[0] = (*out)[1] = w;
  return MX_SUCCESS;
}

// One row of the update. Compiled for AVX-512, AVX2 and a generic x86-64 (the library is built once and runs
// on whichever CPU the machine has today); vector lanes do not change the elementwise arithmetic (no FMA
// contraction), only the order of the projection's two row sums.
__attribute__((target_clones("avx512f", "avx2", "default")))
void update_row(float* w, float* m, const float* g, int64_t D, float lr, float mu, float wd, bool project) {
  float c = 0.f;
  if (project) {
    float gw = 0.f, ww = 0.f;
#pragma omp simd reduction(+ : gw, ww)
    for (int64_t d = 0; d < D; ++d) {
      gw += g[d] * w[d];
      ww += w[d] * w[d];
    }
    c = gw / ww;
  }
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const float gd = project ? g[d] - c * w[d] : g[d];
    // sgd_mom_update's expression, term by term: mom = mu*mom - lr*wd*w - lr*grad; w = w + mom.
    const float step = mu * m[d] - lr * wd * w[d] - lr * gd;
    m[d] = step;
    w[d] = w[d] + step;
  }
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  const float lr = std::stof(attrs.at("lr"));
  const float mu = std::stof(attrs.at("momentum"));
  const float wd = std::stof(attrs.at("wd"));
  const bool project = attrs.count("project") && std::stoi(attrs.at("project")) != 0;
  float* weight = (*out)[0].data<float>();
  float* momentum = (*out)[1].data<float>();
  const float* grad = (*in)[2].data<float>();
  const int64_t* index = (*in)[3].data<int64_t>();
  const int64_t count = (*in)[0].shape[0], S = (*in)[2].shape[0], D = (*in)[2].shape[1];
  // Outputs that are not the inputs themselves start as their copies (the rows not sampled stay as they were).
  for (int k = 0; k < 2; ++k) {
    const float* src = (*in)[k].data<float>();
    float* dst = (*out)[k].data<float>();
    if (src != dst) std::copy(src, src + count * D, dst);
  }
  if (check_rows("pfc_sgd_mom_rows", index, S, count) != MX_SUCCESS) return MX_FAIL;
  // Rows are independent (unique indices), so they split across the OpenMP threads MXNet itself uses.
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < S; ++s) {
    if (s + kAhead < S) {
      prefetch_row(weight + index[s + kAhead] * D, D, true);
      prefetch_row(momentum + index[s + kAhead] * D, D, true);
    }
    update_row(weight + index[s] * D, momentum + index[s] * D, grad + s * D, D, lr, mu, wd, project);
  }
  return MX_SUCCESS;
}

// --- pfc_gather_rows --------------------------------------------------------------------------------------

MXReturnValue parseGather(const Attrs&, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue inferTypeGather(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if ((*in)[0] != kFloat32 || (*in)[1] != kInt64) {
    MX_ERROR_MSG << "pfc_gather_rows: expected float32 weight and int64 index";
    return MX_FAIL;
  }
  (*out)[0] = (*out)[1] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue inferShapeGather(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                               std::vector<std::vector<unsigned int>>* out) {
  const auto &w = (*in)[0], &i = (*in)[1];
  if (w.size() != 2 || i.size() != 1) {
    MX_ERROR_MSG << "pfc_gather_rows: expected weight [count, D], index [S]";
    return MX_FAIL;
  }
  (*out)[0] = {i[0], w[1]};
  (*out)[1] = {i[0]};
  return MX_SUCCESS;
}

// Rows [lo, hi) of the gather. The sum of squares is the same loop as pfc_inv_row_norms' (kernels.cc), so
// the norms equal the ones that operator computes on the copy.
__attribute__((target_clones("avx512f", "avx2", "default")))
void gather_rows(const float* weight, const int64_t* index, float* rows, float* inv_norms, int64_t lo, int64_t hi,
                 int64_t D) {
  for (int64_t s = lo; s < hi; ++s) {
    if (s + kAhead < hi) prefetch_row(weight + index[s + kAhead] * D, D, false);
    const float* src = weight + index[s] * D;
    float* dst = rows + s * D;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) {
      dst[d] = src[d];
      acc += src[d] * src[d];
    }
    inv_norms[s] = 1.0f / std::sqrt(acc);
  }
}

MXReturnValue forwardGather(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  const float* weight = (*in)[0].data<float>();
  const int64_t* index = (*in)[1].data<int64_t>();
  float* rows = (*out)[0].data<float>();
  float* inv_norms = (*out)[1].data<float>();
  const int64_t count = (*in)[0].shape[0], D = (*in)[0].shape[1], S = (*in)[1].shape[0];
  if (check_rows("pfc_gather_rows", index, S, count) != MX_SUCCESS) return MX_FAIL;
  const int64_t block = 256;
#pragma omp parallel for schedule(static)
  for (int64_t lo = 0; lo < S; lo += block) gather_rows(weight, index, rows, inv_norms, lo, std::min(lo + block, S), D);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(pfc_gather_rows)
.setParseAttrs(parseGather)
.setInferType(inferTypeGather)
.setInferShape(inferShapeGather)
.setForward(forwardGather, "cpu");

REGISTER_OP(pfc_sgd_mom_rows)
.setParseAttrs(parseAttrs)
.setInferType(inferType)
.setInferShape(inferShape)
.setForward(forward, "cpu");

MXReturnValue initialize(int version) {
  // lib_api's layout is checked by MXNet against MX_LIBRARY_VERSION; the operator itself needs only 1.9.
  if (version < 10900) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows needs MXNet 1.9 or newer, found " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

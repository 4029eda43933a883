// pfc_sgd_mom_rows: SGD with momentum and weight decay applied to a set of rows of a memory bank, in place.
//
// Why a native operator: MXNet 1.9 has no dense "update these rows where they are" operator. Built from stock
// operators, the sampled update of a float32 shard takes the momentum rows out, updates the two copies and
// scatters centers and momentum back: about twice the memory traffic of the update itself, which made the
// r = 0.1 step slower than a tenth of the r = 1.0 step (whose shard is updated in place). This operator reads
// each sampled row's center, gradient and momentum once and writes its center and momentum once.
//
// Inputs (all on the CPU, row-major):
//   0 weight    float32 [count, D]  the bank's centers; rows `index` are overwritten
//   1 momentum  float32 [count, D]  the bank's momentum; rows `index` are overwritten
//   2 rows      float32 [S, D]      the current centers of rows `index` (the forward already gathered them)
//   3 grad      float32 [S, D]      their gradient
//   4 index     int64   [S]         bank rows to update, each at most once (the sampler's ids are unique)
// Attributes lr, momentum, wd: as MXNet's sgd_mom_update (rescale_grad 1, no clipping), with the same
// arithmetic in the same order, so results are bit-identical to sgd_mom_update on gathered copies.
// Output: a float32 [1] zero. The operator exists for its effect on inputs 0 and 1, which it declares mutable
// so the engine orders it after every earlier reader of the bank and before every later one.
#include <cstdint>
#include <string>
#include <mxnet/lib_api.h>

using namespace mxnet::ext;

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;

MXReturnValue parseAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  for (const char* key : {"lr", "momentum", "wd"}) {
    if (!attrs.count(key)) {
      MX_ERROR_MSG << "pfc_sgd_mom_rows: attribute '" << key << "' is required";
      return MX_FAIL;
    }
  }
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue inferType(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  static const char* names[] = {"weight", "momentum", "rows", "grad"};
  for (int i = 0; i < 4; ++i) {
    if ((*in)[i] != kFloat32) {
      MX_ERROR_MSG << "pfc_sgd_mom_rows: " << names[i] << " must be float32";
      return MX_FAIL;
    }
  }
  if ((*in)[4] != kInt64) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows: index must be int64";
    return MX_FAIL;
  }
  (*out)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue inferShape(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                         std::vector<std::vector<unsigned int>>* out) {
  const auto &w = (*in)[0], &m = (*in)[1], &r = (*in)[2], &g = (*in)[3], &i = (*in)[4];
  if (w.size() != 2 || m != w || r.size() != 2 || g != r || r[1] != w[1] || i.size() != 1 || i[0] != r[0]) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows: expected weight = momentum [count, D], rows = grad [S, D], index [S]";
    return MX_FAIL;
  }
  (*out)[0] = std::vector<unsigned int>{1};
  return MX_SUCCESS;
}

MXReturnValue mutateInputs(const Attrs&, std::vector<int>* inputs) {
  inputs->push_back(0);
  inputs->push_back(1);
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  const float lr = std::stof(attrs.at("lr"));
  const float mu = std::stof(attrs.at("momentum"));
  const float wd = std::stof(attrs.at("wd"));
  float* weight = (*in)[0].data<float>();
  float* momentum = (*in)[1].data<float>();
  const float* rows = (*in)[2].data<float>();
  const float* grad = (*in)[3].data<float>();
  const int64_t* index = (*in)[4].data<int64_t>();
  const int64_t count = (*in)[0].shape[0], S = (*in)[2].shape[0], D = (*in)[2].shape[1];
  for (int64_t s = 0; s < S; ++s) {
    if (index[s] < 0 || index[s] >= count) {
      MX_ERROR_MSG << "pfc_sgd_mom_rows: index " << index[s] << " outside the bank's " << count << " rows";
      return MX_FAIL;
    }
  }
  // Rows are independent (unique indices), so they split across the OpenMP threads MXNet itself uses.
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < S; ++s) {
    float* w = weight + index[s] * D;
    float* m = momentum + index[s] * D;
    const float* x = rows + s * D;
    const float* g = grad + s * D;
    for (int64_t d = 0; d < D; ++d) {
      // sgd_mom_update's expression, term by term: mom = mu*mom - lr*wd*w - lr*grad; w = w + mom.
      const float step = mu * m[d] - lr * wd * x[d] - lr * g[d];
      m[d] = step;
      w[d] = x[d] + step;
    }
  }
  out->at(0).data<float>()[0] = 0.f;
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(pfc_sgd_mom_rows)
.setParseAttrs(parseAttrs)
.setInferType(inferType)
.setInferShape(inferShape)
.setMutateInputs(mutateInputs)
.setForward(forward, "cpu");

MXReturnValue initialize(int version) {
  // lib_api's layout is checked by MXNet against MX_LIBRARY_VERSION; the operator itself needs only 1.9.
  if (version < 10900) {
    MX_ERROR_MSG << "pfc_sgd_mom_rows needs MXNet 1.9 or newer, found " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

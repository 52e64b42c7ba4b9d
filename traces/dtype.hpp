// Element types and tensor names of the trace format (schema v1, README.md).
//
// One table of traits indexed by the enum drives every dispatch (STYLE.md):
// the reader, the writer, the validator and the tests read it.
#pragma once
#include <cstdint>

namespace kvsim::traces {

// The element type of every tensor dataset of one trace file.
enum class DType : int { f16, bf16, f32 };
// The per-layer tensors: q [T, Hq, D], k and v [T, Hkv, D], k_pre_rope [T, Hkv, D].
enum class Tensor : int { q, k, v, k_pre_rope };

inline constexpr int kNumTensors = 4;
inline constexpr Tensor kAllTensors[kNumTensors] = {Tensor::q, Tensor::k, Tensor::v,
                                                    Tensor::k_pre_rope};

struct DTypeTraits {
  const char* name;  // the value of the `dtype` attribute
  int bytes;         // bytes per element in the file
  // HDF5 float fields (bit positions within the element), as in H5Tset_fields.
  int sign_pos, exp_pos, exp_size, mant_pos, mant_size, exp_bias;
};

inline constexpr DTypeTraits kDTypeTraits[3] = {
    {"f16", 2, 15, 10, 5, 0, 10, 15},
    {"bf16", 2, 15, 7, 8, 0, 7, 127},
    {"f32", 4, 31, 23, 8, 0, 23, 127},
};

constexpr const DTypeTraits& dtype_traits(DType t) { return kDTypeTraits[static_cast<int>(t)]; }
const char* dtype_name(DType);
const char* tensor_name(Tensor);
// "f16" -> f16 etc.; returns false for an unknown name.
bool parse_dtype(const char* name, DType& out);

}  // namespace kvsim::traces

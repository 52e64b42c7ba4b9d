// Bad trace files: each class gives a TraceError with one line naming the
// dataset or attribute and the problem.
#include <catch2/catch.hpp>
#include <hdf5.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "tests/traces/test_util.hpp"
#include "traces/h5.hpp"
#include "traces/trace.hpp"
#include "traces/validate.hpp"

using namespace kvsim::traces;
using kvsim::traces::test::TempDir;
namespace h5 = kvsim::traces::h5;

namespace {

// A good small trace, copied and then edited through the HDF5 C API.
class BadFiles {
 public:
  BadFiles() {
    good_ = dir_.file("good.h5");
    test::write_test_trace(good_, test::small_meta(DType::f16, 20), 8);
    h5::silence_errors();
  }
  const std::string& good() const { return good_; }
  std::string edit(const std::string& name, const std::function<void(hid_t)>& fn) {
    const std::string f = dir_.file(name);
    test::copy_file(good_, f);
    const hid_t file = H5Fopen(f.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(file >= 0);
    fn(file);
    REQUIRE(H5Fclose(file) >= 0);
    return f;
  }
  std::string file(const std::string& name) const { return dir_.file(name); }

 private:
  TempDir dir_;
  std::string good_;
};

// Creates dataset `path` of `type` and shape `dims` (values zero).
void make_dataset(hid_t file, const char* path, hid_t type, std::vector<hsize_t> dims) {
  if (H5Lexists(file, path, H5P_DEFAULT) > 0) REQUIRE(H5Ldelete(file, path, H5P_DEFAULT) >= 0);
  const hid_t sp = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t d = H5Dcreate2(file, path, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  REQUIRE(d >= 0);
  hsize_t n = 1;
  for (hsize_t x : dims) n *= x;
  std::vector<double> zeros(static_cast<size_t>(n), 0.0);
  REQUIRE(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()) >= 0);
  H5Dclose(d);
  H5Sclose(sp);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const TraceError& e) {
    return e.what();
  }
  return "(no TraceError)";
}

// Opening (and, when values, fully validating) `f` must fail with a one-line
// message "<f>: <what>: ..." that contains every string of `parts`.
void expect_bad(const std::string& f, const std::string& what, std::vector<std::string> parts,
                bool values_only = false) {
  if (!values_only) {
    const std::string e = error_of([&] { TraceReader r(f); });
    INFO("TraceReader: " << e);
    CHECK(e.rfind(f + ": " + what + ": ", 0) == 0);
    CHECK(e.find('\n') == std::string::npos);
    for (const auto& p : parts) CHECK_THAT(e, Catch::Contains(p));
  } else {
    CHECK_NOTHROW(TraceReader(f));
  }
  const std::string v = error_of([&] { validate_trace(f); });
  INFO("validate_trace: " << v);
  CHECK(v.rfind(f + ": " + what + ": ", 0) == 0);
  CHECK(v.find('\n') == std::string::npos);
  for (const auto& p : parts) CHECK_THAT(v, Catch::Contains(p));
}

}  // namespace

TEST_CASE("the good file passes", "[trace][bad]") {
  BadFiles b;
  const ValidateReport rep = validate_trace(b.good());
  CHECK(rep.values_checked == 2 * 20 * (4 + 2 + 2 + 2) * 8);
  CHECK(rep.max_abs > 100);
  CHECK(rep.max_abs < 1001);
}

TEST_CASE("file-level problems: missing, empty, truncated, not HDF5", "[trace][bad]") {
  BadFiles b;
  expect_bad(b.file("nope.h5"), "file", {"no such file"});
  const std::string empty = b.file("empty.h5");
  std::ofstream(empty).close();
  expect_bad(empty, "file", {"empty"});
  const std::string text = b.file("text.h5");
  std::ofstream(text) << "this is not an HDF5 file\n";
  expect_bad(text, "file", {"not an HDF5 file"});
  const std::string all = test::read_text(b.good());
  for (size_t keep : {size_t{1000}, all.size() / 2, all.size() - 100}) {
    const std::string t = b.file("trunc" + std::to_string(keep) + ".h5");
    std::ofstream(t, std::ios::binary).write(all.data(), static_cast<std::streamsize>(keep));
    expect_bad(t, "file", {"truncated or corrupt"});
  }
}

TEST_CASE("missing root attributes are named", "[trace][bad]") {
  BadFiles b;
  for (const char* a : {"kvsim_trace_version", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
                        "num_tokens", "prefill_len", "rope_theta", "rope_scaling_type",
                        "rope_scaling_factor", "dtype"}) {
    const std::string f =
        b.edit(std::string("noattr_") + a + ".h5", [&](hid_t file) { REQUIRE(H5Adelete(file, a) >= 0); });
    expect_bad(f, std::string("attribute ") + a, {"missing"});
  }
}

TEST_CASE("wrong attribute types and values are named", "[trace][bad]") {
  BadFiles b;
  expect_bad(b.edit("str_layers.h5", [](hid_t f) { h5::write_attr_string(f, "num_layers", "2"); }),
             "attribute num_layers", {"expected an integer", "string"});
  expect_bad(b.edit("float_heads.h5", [](hid_t f) { h5::write_attr_f64(f, "head_dim", 8.0); }),
             "attribute head_dim", {"expected an integer", "float64"});
  expect_bad(b.edit("str_theta.h5", [](hid_t f) { h5::write_attr_string(f, "rope_theta", "1e4"); }),
             "attribute rope_theta", {"expected a float", "string"});
  expect_bad(b.edit("int_dtype.h5", [](hid_t f) { h5::write_attr_i32(f, "dtype", 16); }),
             "attribute dtype", {"expected a string", "int32"});
  expect_bad(b.edit("version2.h5", [](hid_t f) { h5::write_attr_i32(f, "kvsim_trace_version", 2); }),
             "attribute kvsim_trace_version", {"version 2 is not supported"});
  expect_bad(b.edit("t0.h5", [](hid_t f) { h5::write_attr_i64(f, "num_tokens", 0); }),
             "attribute num_tokens", {"at least one token"});
  expect_bad(b.edit("prefill.h5", [](hid_t f) { h5::write_attr_i64(f, "prefill_len", 21); }),
             "attribute prefill_len", {"21", "outside [0, num_tokens = 20]"});
  expect_bad(b.edit("scaling.h5", [](hid_t f) { h5::write_attr_string(f, "rope_scaling_type", "yarn"); }),
             "attribute rope_scaling_type", {"yarn"});
  expect_bad(b.edit("llama3.h5", [](hid_t f) { h5::write_attr_string(f, "rope_scaling_type", "llama3"); }),
             "attribute rope_low_freq_factor", {"missing"});
  expect_bad(b.edit("dtypename.h5", [](hid_t f) { h5::write_attr_string(f, "dtype", "f8"); }),
             "attribute dtype", {"'f8'"});
  expect_bad(b.edit("gqa.h5", [](hid_t f) { h5::write_attr_i32(f, "num_kv_heads", 3); }),
             "attribute num_kv_heads", {"does not divide"});
}

TEST_CASE("missing datasets are named", "[trace][bad]") {
  BadFiles b;
  expect_bad(b.edit("notokens.h5", [](hid_t f) { H5Ldelete(f, "/tokens", H5P_DEFAULT); }), "/tokens",
             {"missing"});
  expect_bad(b.edit("nov.h5", [](hid_t f) { H5Ldelete(f, "/layers/1/v", H5P_DEFAULT); }), "/layers/1/v",
             {"missing"});
  expect_bad(b.edit("nolayer.h5", [](hid_t f) { H5Ldelete(f, "/layers/1", H5P_DEFAULT); }), "/layers/1",
             {"missing"});
  expect_bad(b.edit("nolayers.h5", [](hid_t f) { H5Ldelete(f, "/layers", H5P_DEFAULT); }), "/layers",
             {"missing"});
  expect_bad(b.edit("extralayer.h5",
                    [](hid_t f) {
                      H5Gclose(H5Gcreate2(f, "/layers/2", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
                    }),
             "/layers", {"3 members", "num_layers = 2"});
  expect_bad(b.edit("prerope.h5", [](hid_t f) { H5Ldelete(f, "/layers/1/k_pre_rope", H5P_DEFAULT); }),
             "/layers/1/k_pre_rope", {"missing, but layer 0 has it"});
  expect_bad(b.edit("prerope0.h5", [](hid_t f) { H5Ldelete(f, "/layers/0/k_pre_rope", H5P_DEFAULT); }),
             "/layers/1/k_pre_rope", {"present, but layer 0 has none"});
}

TEST_CASE("wrong ranks, shapes and element types are named", "[trace][bad]") {
  BadFiles b;
  auto f16type = [] { return h5::make_file_type(DType::f16); };
  expect_bad(b.edit("rank.h5", [&](hid_t f) { make_dataset(f, "/layers/0/q", f16type(), {20, 32}); }),
             "/layers/0/q", {"rank 2", "expected 3"});
  expect_bad(b.edit("shapeT.h5", [&](hid_t f) { make_dataset(f, "/layers/0/k", f16type(), {19, 2, 8}); }),
             "/layers/0/k", {"shape [19, 2, 8]", "[20, 2, 8]"});
  expect_bad(b.edit("shapeH.h5", [&](hid_t f) { make_dataset(f, "/layers/1/v", f16type(), {20, 4, 8}); }),
             "/layers/1/v", {"shape [20, 4, 8]", "[T, Hkv, D]"});
  expect_bad(b.edit("shapeD.h5", [&](hid_t f) { make_dataset(f, "/layers/1/q", f16type(), {20, 4, 16}); }),
             "/layers/1/q", {"shape [20, 4, 16]", "[T, Hq, D] = [20, 4, 8]"});
  // Inconsistent geometry between layers: layer 1 has a different kv-head count everywhere.
  expect_bad(b.edit("layers.h5",
                    [&](hid_t f) {
                      make_dataset(f, "/layers/1/k", f16type(), {20, 1, 8});
                      make_dataset(f, "/layers/1/v", f16type(), {20, 1, 8});
                    }),
             "/layers/1/k", {"shape [20, 1, 8]"});
  expect_bad(b.edit("int32.h5", [&](hid_t f) { make_dataset(f, "/layers/0/v", H5T_STD_I32LE, {20, 2, 8}); }),
             "/layers/0/v", {"element type int32 is not supported"});
  expect_bad(b.edit("f64.h5", [&](hid_t f) { make_dataset(f, "/layers/1/k", H5T_IEEE_F64LE, {20, 2, 8}); }),
             "/layers/1/k", {"element type float64 is not supported"});
  expect_bad(b.edit("f32.h5", [&](hid_t f) { make_dataset(f, "/layers/1/k", H5T_IEEE_F32LE, {20, 2, 8}); }),
             "/layers/1/k", {"element type f32 does not match", "dtype = f16"});
  expect_bad(b.edit("tokrank.h5", [&](hid_t f) { make_dataset(f, "/tokens", H5T_STD_I32LE, {20, 1}); }),
             "/tokens", {"rank 2"});
  expect_bad(b.edit("tokfloat.h5", [&](hid_t f) { make_dataset(f, "/tokens", H5T_IEEE_F32LE, {20}); }),
             "/tokens", {"element type f32", "expected int32"});
  expect_bad(b.edit("dsattr.h5", [&](hid_t f) {
               const hid_t d = H5Dopen2(f, "/layers/0/k", H5P_DEFAULT);
               h5::write_attr_string(d, "dtype", "bf16");
               H5Dclose(d);
             }),
             "/layers/0/k attribute dtype", {"'bf16' does not match"});
}

TEST_CASE("NaN, Inf and out-of-range values are found by validate, with their index", "[trace][bad]") {
  BadFiles b;
  struct Case {
    const char* name;
    float value;
    int layer;
    Tensor t;
    int64_t token;
    int head, channel;
    const char* text;
  };
  const Case cases[] = {
      {"nan", std::numeric_limits<float>::quiet_NaN(), 1, Tensor::v, 17, 1, 5, "NaN at layer 1 v token 17 head 1 channel 5"},
      {"inf", -std::numeric_limits<float>::infinity(), 0, Tensor::q, 8, 3, 0, "-Inf at layer 0 q token 8 head 3 channel 0"},
      {"big", 3100.0f, 0, Tensor::k, 17, 1, 5,
       "value 3100 at layer 0 k token 17 head 1 channel 5 exceeds the fixed-point entry range |x| < 2048"},
      {"edge", 2048.0f, 1, Tensor::k_pre_rope, 0, 0, 7, "value 2048 at layer 1 k_pre_rope token 0 head 0 channel 7"},
  };
  for (const Case& c : cases) {
    const TraceMeta m = test::small_meta(DType::f16, 20);
    const std::string f = b.file(std::string(c.name) + ".h5");
    test::write_test_trace(f, m, 8);
    // Overwrite one row with the bad element.
    {
      const std::string tmp = f + ".edit";
      TraceMeta m2 = m;
      TraceReader r(f);
      TraceWriter w(tmp, m2, 8);
      w.write_tokens(r.tokens());
      std::vector<uint32_t> bits;
      for (int l = 0; l < 2; ++l)
        for (Tensor t : kAllTensors) {
          r.read_bits(l, t, 0, 20, bits);
          if (l == c.layer && t == c.t)
            bits[static_cast<size_t>((c.token * m.heads(t) + c.head) * m.head_dim + c.channel)] =
                float_to_f16_bits(c.value);
          w.write_bits(l, t, 0, 20, bits.data());
        }
      w.close();
      std::filesystem::rename(tmp, f);
    }
    expect_bad(f, TraceReader::dataset_name(c.layer, c.t), {c.text}, /*values_only=*/true);
    // Structure-only validation does not read values.
    CHECK_NOTHROW(validate_trace(f, ValidateOptions{false, {}}));
  }
  // Just below the limit is accepted.
  const TraceMeta m = test::small_meta(DType::f32, 2, false);
  const std::string f = b.file("below.h5");
  {
    TraceWriter w(f, m);
    w.write_tokens({0, 1});
    std::vector<float> rows(2 * 4 * 8, std::nextafter(2048.0f, 0.0f));
    for (int l = 0; l < 2; ++l)
      for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) w.write_rows(l, t, 0, 2, rows.data());
    w.close();
  }
  CHECK(validate_trace(f).max_abs == std::nextafter(2048.0f, 0.0f));
}

TEST_CASE("negative token ids are rejected by validate", "[trace][bad]") {
  BadFiles b;
  const std::string f = b.edit("negtok.h5", [](hid_t file) {
    const hid_t d = H5Dopen2(file, "/tokens", H5P_DEFAULT);
    std::vector<int32_t> ids(20, 3);
    ids[11] = -5;
    REQUIRE(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids.data()) >= 0);
    H5Dclose(d);
  });
  expect_bad(f, "/tokens", {"negative token id -5 at token 11"}, true);
}

// traces/trace.hpp: writer -> reader round trips (bits, floats, tokens, meta),
// hyperslab reads at chunk boundaries, and the writer's no-half-file rule.
#include <catch2/catch.hpp>
#include <hdf5.h>

#include <filesystem>
#include <thread>

#include "tests/traces/test_util.hpp"
#include "traces/half.hpp"
#include "traces/trace.hpp"

using namespace kvsim::traces;
using kvsim::traces::test::TempDir;

namespace {

// Expected bits of rows [t0, t0+n) of one tensor, as the writer rounds them.
std::vector<uint32_t> expected_bits(const TraceMeta& m, int l, Tensor t, int64_t t0, int64_t n) {
  std::vector<uint32_t> out;
  for (int64_t r = 0; r < n; ++r)
    for (int h = 0; h < m.heads(t); ++h)
      for (int c = 0; c < m.head_dim; ++c)
        out.push_back(encode_bits(m.dtype, test::test_value(l, static_cast<int>(t), t0 + r, h, c)));
  return out;
}

void check_rows(const TraceReader& r, int l, Tensor t, int64_t t0, int64_t n) {
  const TraceMeta& m = r.meta();
  std::vector<uint32_t> bits;
  std::vector<float> vals;
  r.read_bits(l, t, t0, n, bits);
  r.read_float(l, t, t0, n, vals);
  const std::vector<uint32_t> want = expected_bits(m, l, t, t0, n);
  REQUIRE(bits.size() == want.size());
  REQUIRE(vals.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO(dtype_name(m.dtype) << " layer " << l << " " << tensor_name(t) << " rows [" << t0 << ", "
                             << t0 + n << ") element " << i);
    REQUIRE(bits[i] == want[i]);
    REQUIRE(float_bits(vals[i]) == float_bits(decode_bits(m.dtype, want[i])));
  }
}

}  // namespace

TEST_CASE("round trip is bit exact for every dtype, at chunk boundaries +-1", "[trace][roundtrip]") {
  TempDir dir;
  for (DType dt : {DType::f16, DType::bf16, DType::f32}) {
    for (int gzip : {0, 4}) {
      const TraceMeta m = test::small_meta(dt, 45);  // chunks of 8: the last one partial
      const int64_t Tc = 8;
      const std::string f = dir.file(std::string("rt_") + dtype_name(dt) + std::to_string(gzip) + ".h5");
      test::write_test_trace(f, m, Tc, 5, gzip);
      TraceReader r(f);
      REQUIRE(r.chunk_tokens() == Tc);
      REQUIRE(r.meta().has_k_pre_rope);
      REQUIRE(r.meta().dtype == dt);
      if (gzip) REQUIRE(r.layout_description().find("gzip 4") != std::string::npos);
      for (int l = 0; l < m.num_layers; ++l)
        for (Tensor t : kAllTensors) {
          check_rows(r, l, t, 0, m.num_tokens);  // everything at once
          for (int64_t b : {Tc, 2 * Tc, 4 * Tc}) {  // chunk boundaries 8, 16, 32
            check_rows(r, l, t, b - 1, 1);
            check_rows(r, l, t, b - 1, 2);
            check_rows(r, l, t, b, 1);
            check_rows(r, l, t, b + 1, Tc);
            check_rows(r, l, t, b - 1, Tc + 2);
          }
          check_rows(r, l, t, m.num_tokens - 1, 1);  // last row, partial last chunk
          check_rows(r, l, t, 3, 0);                  // empty read
        }
      // f16/bf16 really stored as 16 bits (not a float32 value in disguise).
      std::vector<uint32_t> bits;
      r.read_bits(0, Tensor::q, 0, m.num_tokens, bits);
      bool all_low = true;
      for (uint32_t b : bits) all_low = all_low && (b >> 16) == 0;
      REQUIRE(all_low == (dt != DType::f32));
    }
  }
}

TEST_CASE("f16 values are stored with round-half-to-even bits", "[trace][roundtrip]") {
  TempDir dir;
  TraceMeta m = test::small_meta(DType::f16, 1, false);
  m.num_layers = 1;
  m.num_q_heads = m.num_kv_heads = 1;
  m.head_dim = 8;
  m.prefill_len = 1;
  const float row[8] = {1.0f + 0x1.0p-11f, 1.0f + 3 * 0x1.0p-11f, 65519.0f, 0x1.0p-25f,
                        3 * 0x1.0p-25f,   -2.5f,                   0.1f,     -0.0f};
  const uint16_t want[8] = {0x3c00, 0x3c02, 0x7bff, 0x0000, 0x0002, 0xc100, 0x2e66, 0x8000};
  const std::string f = dir.file("rne.h5");
  {
    TraceWriter w(f, m);
    w.write_tokens({5});
    for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) w.write_rows(0, t, 0, 1, row);
    w.close();
  }
  TraceReader r(f);
  std::vector<uint32_t> bits;
  r.read_bits(0, Tensor::k, 0, 1, bits);
  for (int i = 0; i < 8; ++i) {
    INFO("element " << i);
    CHECK(bits[static_cast<size_t>(i)] == want[i]);
  }
}

TEST_CASE("write_bits stores the given patterns unchanged", "[trace][roundtrip]") {
  TempDir dir;
  for (DType dt : {DType::f16, DType::bf16, DType::f32}) {
    TraceMeta m = test::small_meta(dt, 3, false);
    m.num_layers = 1;
    const std::string f = dir.file(std::string("bits_") + dtype_name(dt) + ".h5");
    std::vector<uint32_t> q(static_cast<size_t>(3 * 4 * 8)), kv(static_cast<size_t>(3 * 2 * 8));
    for (size_t i = 0; i < q.size(); ++i) q[i] = dt == DType::f32 ? 0x3f800000u + static_cast<uint32_t>(i) : 0x3c00u + static_cast<uint32_t>(i);
    for (size_t i = 0; i < kv.size(); ++i) kv[i] = dt == DType::f32 ? 0xbf000000u + static_cast<uint32_t>(i) : 0xb800u + static_cast<uint32_t>(i);
    {
      TraceWriter w(f, m);
      w.write_tokens({1, 2, 3});
      w.write_bits(0, Tensor::q, 0, 3, q.data());
      w.write_bits(0, Tensor::k, 0, 3, kv.data());
      w.write_bits(0, Tensor::v, 0, 3, kv.data());
      w.close();
    }
    TraceReader r(f);
    std::vector<uint32_t> got;
    r.read_bits(0, Tensor::q, 0, 3, got);
    REQUIRE(got == q);
    r.read_bits(0, Tensor::v, 0, 3, got);
    REQUIRE(got == kv);
  }
}

TEST_CASE("tokens and meta round trip", "[trace][roundtrip]") {
  TempDir dir;
  TraceMeta m = test::small_meta(DType::bf16, 300, false);
  m.rope_theta = 500000.0;
  m.rope_scaling_type = "llama3";
  m.rope_scaling_factor = 8.0;
  m.rope_low_freq_factor = 1.0;
  m.rope_high_freq_factor = 4.0;
  m.rope_original_max_position = 8192;
  m.created = "2025-01-02T03:04:05Z";
  m.extra = {{"a_note", "hello world"}, {"recorder", "record_hf 0.1"}};
  const std::string f = dir.file("meta.h5");
  std::vector<int32_t> ids(300);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % 128256);
  {
    TraceWriter w(f, m, 64);
    w.write_tokens(0, 100, ids.data());
    w.write_tokens(100, 200, ids.data() + 100);
    w.set_attribute("z_number", 2.5);
    w.set_attribute("z_count", int64_t{-7});
    std::vector<float> zero(static_cast<size_t>(300 * 4 * 8), 0.0f);
    for (int l = 0; l < m.num_layers; ++l)
      for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) w.write_rows(l, t, 0, 300, zero.data());
    w.close();
  }
  TraceReader r(f);
  const TraceMeta& g = r.meta();
  CHECK(r.tokens() == ids);
  std::vector<int32_t> part;
  r.read_tokens(63, 3, part);
  CHECK(part == std::vector<int32_t>(ids.begin() + 63, ids.begin() + 66));
  CHECK(g.version == 1);
  CHECK(g.num_layers == m.num_layers);
  CHECK(g.num_q_heads == m.num_q_heads);
  CHECK(g.num_kv_heads == m.num_kv_heads);
  CHECK(g.head_dim == m.head_dim);
  CHECK(g.num_tokens == 300);
  CHECK(g.prefill_len == 150);
  CHECK(g.rope_theta == 500000.0);
  CHECK(g.rope_scaling_type == "llama3");
  CHECK(g.rope_scaling_factor == 8.0);
  CHECK(g.rope_low_freq_factor == 1.0);
  CHECK(g.rope_high_freq_factor == 4.0);
  CHECK(g.rope_original_max_position == 8192);
  CHECK(g.dtype == DType::bf16);
  CHECK_FALSE(g.has_k_pre_rope);
  CHECK(g.model == "unit-test");
  CHECK(g.source == "test");
  CHECK(g.tool_revision == "test-rev");
  CHECK(g.created == "2025-01-02T03:04:05Z");
  CHECK(g.seed == 42);
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"a_note", "hello world"}, {"recorder", "record_hf 0.1"}, {"z_count", "-7"}, {"z_number", "2.5"}};
  CHECK(g.extra == extra);
  CHECK(r.chunk_tokens() == 64);
  CHECK(g.heads(Tensor::q) == 4);
  CHECK(g.heads(Tensor::v) == 2);
  // The file has no k_pre_rope: asking for it is an error naming the dataset.
  std::vector<float> v;
  CHECK_THROWS_WITH(r.read_float(0, Tensor::k_pre_rope, 0, 1, v),
                    Catch::Contains("/layers/0/k_pre_rope") && Catch::Contains("no such tensor"));
  const std::string info = format_info(r);
  CHECK_THAT(info, Catch::Contains("2 layers, 4 query heads, 2 KV heads (GQA group 2), head dim 8"));
  CHECK_THAT(info, Catch::Contains("300 (prefill 150, decode 150)"));
  CHECK_THAT(info, Catch::Contains("scaling llama3 factor 8"));
  CHECK_THAT(info, Catch::Contains("recorder"));
  CHECK_THAT(info, Catch::Contains("record_hf 0.1"));
}

TEST_CASE("reads outside the trace are TraceErrors naming the dataset", "[trace][roundtrip]") {
  TempDir dir;
  const TraceMeta m = test::small_meta(DType::f16, 20);
  const std::string f = dir.file("range.h5");
  test::write_test_trace(f, m, 8);
  TraceReader r(f);
  std::vector<uint32_t> b;
  CHECK_THROWS_WITH(r.read_bits(0, Tensor::k, 19, 2, b),
                    Catch::Contains("/layers/0/k") && Catch::Contains("rows [19, 21)"));
  CHECK_THROWS_AS(r.read_bits(0, Tensor::k, -1, 1, b), TraceError);
  CHECK_THROWS_WITH(r.read_bits(2, Tensor::q, 0, 1, b), Catch::Contains("/layers/2/q"));
  std::vector<int32_t> ids;
  CHECK_THROWS_WITH(r.read_tokens(15, 6, ids), Catch::StartsWith(f + ": /tokens:"));
}

TEST_CASE("one reader serves several threads at once", "[trace][roundtrip]") {
  TempDir dir;
  const TraceMeta m = test::small_meta(DType::f16, 200);
  const std::string f = dir.file("threads.h5");
  test::write_test_trace(f, m, 16, 7);
  const TraceReader r(f);
  std::vector<std::thread> pool;
  std::vector<int> ok(4, 0);
  for (int k = 0; k < 4; ++k)
    pool.emplace_back([&, k] {
      std::vector<uint32_t> bits;
      int good = 1;
      for (int rep = 0; rep < 20; ++rep)
        for (int64_t t0 = k; t0 + 3 <= m.num_tokens; t0 += 11) {
          const Tensor t = kAllTensors[(rep + k) % 4];
          r.read_bits(rep % 2, t, t0, 3, bits);
          good = good && bits == expected_bits(m, rep % 2, t, t0, 3);
        }
      ok[static_cast<size_t>(k)] = good;
    });
  for (auto& th : pool) th.join();
  CHECK(ok == std::vector<int>(4, 1));
}

TEST_CASE("the writer never leaves a half-written file", "[trace][writer]") {
  TempDir dir;
  const TraceMeta m = test::small_meta(DType::f16, 10);
  const std::string f = dir.file("half.h5");
  SECTION("destroyed without close") {
    {
      TraceWriter w(f, m);
      w.write_tokens(std::vector<int32_t>(10, 1));
      REQUIRE(std::filesystem::exists(f + ".tmp"));
    }
    CHECK_FALSE(std::filesystem::exists(f));
    CHECK_FALSE(std::filesystem::exists(f + ".tmp"));
  }
  SECTION("close with rows missing throws, names the dataset, leaves nothing") {
    {
      TraceWriter w(f, m);
      w.write_tokens(std::vector<int32_t>(10, 1));
      std::vector<float> rows(static_cast<size_t>(10 * 4 * 8), 0.5f);
      for (int l = 0; l < 2; ++l)
        for (Tensor t : kAllTensors) {
          const int64_t n = (l == 1 && t == Tensor::v) ? 6 : 10;  // rows [6, 10) of /layers/1/v missing
          w.write_rows(l, t, 0, n, rows.data());
        }
      CHECK_THROWS_WITH(w.close(), Catch::Contains("/layers/1/v") && Catch::Contains("rows [6, 10)"));
    }
    CHECK_FALSE(std::filesystem::exists(f));
    CHECK_FALSE(std::filesystem::exists(f + ".tmp"));
  }
  SECTION("tokens missing") {
    {
      TraceWriter w(f, m);
      w.write_tokens(0, 4, std::vector<int32_t>(4, 1).data());
      std::vector<float> rows(static_cast<size_t>(10 * 4 * 8), 0.5f);
      for (int l = 0; l < 2; ++l)
        for (Tensor t : kAllTensors) w.write_rows(l, t, 0, 10, rows.data());
      CHECK_THROWS_WITH(w.close(), Catch::Contains("/tokens") && Catch::Contains("rows [4, 10)"));
    }
    CHECK_FALSE(std::filesystem::exists(f));
  }
  SECTION("an existing file is replaced only on a successful close") {
    test::write_test_trace(f, m, 4);
    const auto before = std::filesystem::file_size(f);
    { TraceWriter w(f, test::small_meta(DType::f32, 10)); }
    CHECK(std::filesystem::file_size(f) == before);
    CHECK(TraceReader(f).meta().dtype == DType::f16);
  }
  SECTION("bad arguments are rejected with the dataset named") {
    TraceWriter w(f, test::small_meta(DType::f16, 10, false));
    std::vector<float> rows(static_cast<size_t>(10 * 4 * 8), 0.5f);
    CHECK_THROWS_WITH(w.write_rows(0, Tensor::k_pre_rope, 0, 1, rows.data()),
                      Catch::Contains("/layers/0/k_pre_rope"));
    CHECK_THROWS_WITH(w.write_rows(0, Tensor::q, 8, 3, rows.data()), Catch::Contains("rows [8, 11)"));
    CHECK_THROWS_WITH(w.write_tokens(std::vector<int32_t>(3, 0)), Catch::Contains("/tokens"));
    CHECK_THROWS_WITH(w.set_attribute("num_layers", 2.0), Catch::Contains("collides"));
  }
  SECTION("bad meta is rejected before anything is created") {
    TraceMeta bad = m;
    bad.num_kv_heads = 3;
    CHECK_THROWS_WITH(TraceWriter(f, bad), Catch::Contains("attribute num_kv_heads"));
    bad = m;
    bad.num_tokens = 0;
    CHECK_THROWS_WITH(TraceWriter(f, bad), Catch::Contains("attribute num_tokens"));
    bad = m;
    bad.head_dim = 7;
    CHECK_THROWS_WITH(TraceWriter(f, bad), Catch::Contains("attribute head_dim"));
    CHECK_FALSE(std::filesystem::exists(f + ".tmp"));
  }
}

TEST_CASE("chunk length is clamped to T and a one-token trace works", "[trace][writer]") {
  TempDir dir;
  const TraceMeta m = test::small_meta(DType::f32, 1);
  const std::string f = dir.file("one.h5");
  test::write_test_trace(f, m, 256);
  TraceReader r(f);
  CHECK(r.chunk_tokens() == 1);
  check_rows(r, 1, Tensor::k_pre_rope, 0, 1);
}

TEST_CASE("HDF5's own conversion to float32 (h5py astype) equals read_float", "[trace][roundtrip]") {
  // README.md tells h5py users to read through .astype("float32"): HDF5 then
  // converts the 2-byte floats itself. Check that this is exact.
  TempDir dir;
  for (DType dt : {DType::f16, DType::bf16}) {
    const TraceMeta m = test::small_meta(dt, 30);
    const std::string f = dir.file(std::string("conv_") + dtype_name(dt) + ".h5");
    test::write_test_trace(f, m, 8);
    std::vector<float> ours;
    TraceReader(f).read_float(1, Tensor::k, 0, 30, ours);
    std::vector<float> theirs(ours.size(), -1.0f);
    const hid_t file = H5Fopen(f.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(file >= 0);
    const hid_t d = H5Dopen2(file, "/layers/1/k", H5P_DEFAULT);
    REQUIRE(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, theirs.data()) >= 0);
    H5Dclose(d);
    H5Fclose(file);
    for (size_t i = 0; i < ours.size(); ++i) {
      INFO(dtype_name(dt) << " element " << i << ": " << ours[i] << " vs " << theirs[i]);
      REQUIRE(float_bits(ours[i]) == float_bits(theirs[i]));
    }
  }
}

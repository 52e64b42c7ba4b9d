// Trace schema v1: meta checks, the streaming reader and writer (trace.hpp).
#include "traces/trace.hpp"

#include <hdf5.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "reference/common.hpp"
#include "traces/h5.hpp"
#include "traces/half.hpp"

namespace kvsim::traces {

namespace fs = std::filesystem;

const char* dtype_name(DType t) { return dtype_traits(t).name; }

const char* tensor_name(Tensor t) {
  switch (t) {
    case Tensor::q: return "q";
    case Tensor::k: return "k";
    case Tensor::v: return "v";
    case Tensor::k_pre_rope: return "k_pre_rope";
  }
  return "?";
}

bool parse_dtype(const char* name, DType& out) {
  for (DType t : {DType::f16, DType::bf16, DType::f32}) {
    if (std::strcmp(name, dtype_name(t)) == 0) {
      out = t;
      return true;
    }
  }
  return false;
}

namespace {

// The root attributes of schema v1 (any other root attribute is "extra").
const std::set<std::string>& schema_attrs() {
  static const std::set<std::string> s = {
      "kvsim_trace_version", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
      "num_tokens", "prefill_len", "rope_theta", "rope_scaling_type", "rope_scaling_factor",
      "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position", "dtype",
      "model", "source", "tool_revision", "created", "seed"};
  return s;
}

[[noreturn]] void fail(const std::string& file, const std::string& what, const std::string& problem) {
  throw TraceError(file + ": " + what + ": " + problem);
}

std::string shape_text(const std::vector<hsize_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Row bookkeeping for the writer: union of written [begin, end) intervals.
class Coverage {
 public:
  void add(int64_t b, int64_t e) {
    if (b >= e) return;
    auto it = iv_.upper_bound(b);
    if (it != iv_.begin()) {
      auto prev = std::prev(it);
      if (prev->second >= b) {
        b = prev->first;
        e = std::max(e, prev->second);
        it = iv_.erase(prev);
      }
    }
    while (it != iv_.end() && it->first <= e) {
      e = std::max(e, it->second);
      it = iv_.erase(it);
    }
    iv_.emplace(b, e);
  }
  // The first unwritten range within [0, n), or {n, n} when complete.
  std::pair<int64_t, int64_t> first_gap(int64_t n) const {
    int64_t pos = 0;
    for (const auto& [b, e] : iv_) {
      if (b > pos) return {pos, std::min(b, n)};
      pos = std::max(pos, e);
      if (pos >= n) break;
    }
    return pos >= n ? std::pair<int64_t, int64_t>{n, n} : std::pair<int64_t, int64_t>{pos, n};
  }

 private:
  std::map<int64_t, int64_t> iv_;
};

}  // namespace

void check_meta(const TraceMeta& m, const std::string& file) {
  auto bad = [&](const char* attr, const std::string& problem) {
    fail(file, std::string("attribute ") + attr, problem);
  };
  if (m.version != kTraceVersion)
    bad("kvsim_trace_version", "version " + std::to_string(m.version) +
                                   " is not supported (this kvsim reads version 1)");
  if (m.num_layers < 1) bad("num_layers", std::to_string(m.num_layers) + ", must be >= 1");
  if (m.num_q_heads < 1) bad("num_q_heads", std::to_string(m.num_q_heads) + ", must be >= 1");
  if (m.num_kv_heads < 1) bad("num_kv_heads", std::to_string(m.num_kv_heads) + ", must be >= 1");
  if (m.num_q_heads % m.num_kv_heads != 0)
    bad("num_kv_heads", std::to_string(m.num_kv_heads) + " does not divide num_q_heads = " +
                            std::to_string(m.num_q_heads));
  if (m.head_dim < 2 || m.head_dim % 2 != 0 || m.head_dim > kvsim::kMaxHeadDim)
    bad("head_dim", std::to_string(m.head_dim) + ", must be even and in [2, " +
                        std::to_string(kvsim::kMaxHeadDim) + "]");
  if (m.num_tokens < 1)
    bad("num_tokens", std::to_string(m.num_tokens) + ", a trace needs at least one token");
  if (m.prefill_len < 0 || m.prefill_len > m.num_tokens)
    bad("prefill_len", std::to_string(m.prefill_len) + " is outside [0, num_tokens = " +
                           std::to_string(m.num_tokens) + "]");
  if (!(std::isfinite(m.rope_theta) && m.rope_theta > 0))
    bad("rope_theta", h5::format_double(m.rope_theta) + ", must be finite and > 0");
  if (m.rope_scaling_type != "none" && m.rope_scaling_type != "linear" &&
      m.rope_scaling_type != "llama3")
    bad("rope_scaling_type",
        "'" + m.rope_scaling_type + "' is not one of \"none\", \"linear\", \"llama3\"");
  if (!(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor > 0))
    bad("rope_scaling_factor", h5::format_double(m.rope_scaling_factor) + ", must be finite and > 0");
  if (m.rope_scaling_type == "none" && m.rope_scaling_factor != 1.0)
    bad("rope_scaling_factor", h5::format_double(m.rope_scaling_factor) +
                                   ", must be 1 when rope_scaling_type is \"none\"");
  if (m.rope_scaling_type == "llama3") {
    if (!(std::isfinite(m.rope_low_freq_factor) && m.rope_low_freq_factor > 0))
      bad("rope_low_freq_factor", h5::format_double(m.rope_low_freq_factor) + ", must be > 0");
    if (!(std::isfinite(m.rope_high_freq_factor) && m.rope_high_freq_factor > m.rope_low_freq_factor))
      bad("rope_high_freq_factor", h5::format_double(m.rope_high_freq_factor) +
                                       ", must be > rope_low_freq_factor");
    if (m.rope_original_max_position < 1)
      bad("rope_original_max_position", std::to_string(m.rope_original_max_position) +
                                            ", must be >= 1 for llama3 scaling");
  }
  for (const auto& [name, value] : m.extra) {
    if (schema_attrs().count(name))
      fail(file, "attribute " + name, "extra attribute collides with a schema attribute");
    if (name.empty()) fail(file, "attribute ''", "extra attribute with an empty name");
  }
}

std::string iso_time_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string TraceReader::dataset_name(int layer, Tensor which) {
  return "/layers/" + std::to_string(layer) + "/" + tensor_name(which);
}

// ---------------------------------------------------------------------------
// Reader

struct TraceReader::Impl {
  std::string path;
  TraceMeta meta;
  h5::Id file, tokens;
  std::vector<std::array<h5::Id, kNumTensors>> ds;  // [L][tensor]; k_pre_rope invalid if absent
  h5::Id mem_type;                                  // element type in machine order
  int64_t chunk = 0;
  std::string layout;
#ifndef H5_HAVE_THREADSAFE
  mutable std::mutex mu;  // a non-thread-safe HDF5 needs every call serialised
#endif

  [[noreturn]] void fail_at(const std::string& what, const std::string& problem) const {
    fail(path, what, problem);
  }
  void open_and_check();
  void read_meta();
  void check_tensor(int layer, Tensor t, hid_t group);
  hid_t dataset(int layer, Tensor t) const;
  void read_rows(int layer, Tensor t, int64_t t0, int64_t n, void* buf) const;
};

void TraceReader::Impl::read_meta() {
  const hid_t root = file.get();
  auto need_i64 = [&](const char* name, int64_t& out) {
    const h5::AttrRead r = h5::read_attr_i64(root, name, out);
    if (!r.ok) fail_at(std::string("attribute ") + name, r.problem);
  };
  auto need_int = [&](const char* name, int& out) {
    int64_t v = 0;
    need_i64(name, v);
    if (v < INT32_MIN || v > INT32_MAX)
      fail_at(std::string("attribute ") + name, std::to_string(v) + " does not fit in int32");
    out = static_cast<int>(v);
  };
  auto need_f64 = [&](const char* name, double& out) {
    const h5::AttrRead r = h5::read_attr_f64(root, name, out);
    if (!r.ok) fail_at(std::string("attribute ") + name, r.problem);
  };
  auto need_str = [&](const char* name, std::string& out) {
    const h5::AttrRead r = h5::read_attr_string(root, name, out);
    if (!r.ok) fail_at(std::string("attribute ") + name, r.problem);
  };
  // Optional: absent leaves the default; present with a wrong type fails.
  auto opt = [&](const char* name, auto&& reader) {
    if (H5Aexists(root, name) > 0) reader(name);
  };
  TraceMeta& m = meta;
  need_int("kvsim_trace_version", m.version);
  if (m.version != kTraceVersion)
    fail_at("attribute kvsim_trace_version", "version " + std::to_string(m.version) +
                                                 " is not supported (this kvsim reads version 1)");
  need_int("num_layers", m.num_layers);
  need_int("num_q_heads", m.num_q_heads);
  need_int("num_kv_heads", m.num_kv_heads);
  need_int("head_dim", m.head_dim);
  need_i64("num_tokens", m.num_tokens);
  need_i64("prefill_len", m.prefill_len);
  need_f64("rope_theta", m.rope_theta);
  need_str("rope_scaling_type", m.rope_scaling_type);
  need_f64("rope_scaling_factor", m.rope_scaling_factor);
  if (m.rope_scaling_type == "llama3") {
    need_f64("rope_low_freq_factor", m.rope_low_freq_factor);
    need_f64("rope_high_freq_factor", m.rope_high_freq_factor);
    need_i64("rope_original_max_position", m.rope_original_max_position);
  } else {
    opt("rope_low_freq_factor", [&](const char* n) { need_f64(n, m.rope_low_freq_factor); });
    opt("rope_high_freq_factor", [&](const char* n) { need_f64(n, m.rope_high_freq_factor); });
    opt("rope_original_max_position",
        [&](const char* n) { need_i64(n, m.rope_original_max_position); });
  }
  std::string dt;
  need_str("dtype", dt);
  if (!parse_dtype(dt.c_str(), m.dtype))
    fail_at("attribute dtype", "'" + dt + "' is not one of \"f16\", \"bf16\", \"f32\"");
  opt("model", [&](const char* n) { need_str(n, m.model); });
  opt("source", [&](const char* n) { need_str(n, m.source); });
  opt("tool_revision", [&](const char* n) { need_str(n, m.tool_revision); });
  opt("created", [&](const char* n) { need_str(n, m.created); });
  opt("seed", [&](const char* n) { need_i64(n, m.seed); });
  for (auto& kv : h5::all_attrs_as_text(root))
    if (!schema_attrs().count(kv.first)) m.extra.push_back(std::move(kv));
  check_meta(m, path);
}

void TraceReader::Impl::check_tensor(int layer, Tensor t, hid_t group) {
  const std::string name = dataset_name(layer, t);
  h5::Id d = h5::dataset_id(H5Dopen2(group, tensor_name(t), H5P_DEFAULT));
  if (!d.valid()) fail_at(name, "is not a readable dataset (" + h5::last_error() + ")");
  h5::Id sp = h5::space_id(H5Dget_space(d));
  const int rank = H5Sget_simple_extent_ndims(sp);
  const std::string expect_names = t == Tensor::q ? "[T, Hq, D]" : "[T, Hkv, D]";
  if (rank != 3)
    fail_at(name, "rank " + std::to_string(rank) + ", expected 3 " + expect_names);
  std::vector<hsize_t> dims(3);
  H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
  const std::vector<hsize_t> want = {static_cast<hsize_t>(meta.num_tokens),
                                     static_cast<hsize_t>(meta.heads(t)),
                                     static_cast<hsize_t>(meta.head_dim)};
  if (dims != want)
    fail_at(name, "shape " + shape_text(dims) + " does not match " + expect_names + " = " +
                      shape_text(want) + " from the root attributes");
  h5::Id ty = h5::type_id(H5Dget_type(d));
  DType dt;
  if (!h5::classify_float_type(ty, dt))
    fail_at(name, "element type " + h5::describe_type(ty) +
                      " is not supported (expected f16, bf16 or f32 floats)");
  if (dt != meta.dtype)
    fail_at(name, std::string("element type ") + dtype_name(dt) +
                      " does not match the root attribute dtype = " + dtype_name(meta.dtype));
  if (H5Aexists(d, "dtype") > 0) {
    std::string a;
    const h5::AttrRead r = h5::read_attr_string(d, "dtype", a);
    if (!r.ok) fail_at(name + " attribute dtype", r.problem);
    if (a != dtype_name(dt))
      fail_at(name + " attribute dtype",
              "'" + a + "' does not match the element type " + dtype_name(dt));
  }
  // Compressed chunks are decoded whole: give such a dataset a chunk cache
  // that holds one chunk, so that row-by-row reads do not decode it per row.
  h5::Id dcpl = h5::plist_id(H5Dget_create_plist(d));
  if (H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_nfilters(dcpl) > 0) {
    hsize_t cd[3] = {0, 0, 0};
    H5Pget_chunk(dcpl, 3, cd);
    const size_t bytes = static_cast<size_t>(cd[0] * cd[1] * cd[2]) *
                         static_cast<size_t>(dtype_traits(dt).bytes);
    h5::Id dapl = h5::plist_id(H5Pcreate(H5P_DATASET_ACCESS));
    H5Pset_chunk_cache(dapl, 521, std::max<size_t>(bytes + 4096, size_t{1} << 20), 1.0);
    d = h5::dataset_id(H5Dopen2(group, tensor_name(t), dapl));
    if (!d.valid()) fail_at(name, "cannot be reopened (" + h5::last_error() + ")");
  }
  if (layer == 0 && t == Tensor::q) {
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
      hsize_t cd[3] = {0, 0, 0};
      H5Pget_chunk(dcpl, 3, cd);
      chunk = static_cast<int64_t>(cd[0]);
      layout = "chunked " + shape_text({cd[0], cd[1], cd[2]});
      const int nf = H5Pget_nfilters(dcpl);
      for (int i = 0; i < nf; ++i) {
        unsigned flags = 0, cv[8] = {};
        size_t ncv = 8;
        char fname[64] = "";
        const H5Z_filter_t f = H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &ncv, cv,
                                              sizeof fname, fname, nullptr);
        if (f == H5Z_FILTER_DEFLATE)
          layout += ", gzip " + std::to_string(ncv ? cv[0] : 0);
        else if (f == H5Z_FILTER_SHUFFLE)
          layout += ", shuffle";
        else
          layout += std::string(", filter ") + (fname[0] ? fname : std::to_string(f).c_str());
      }
    } else {
      chunk = meta.num_tokens;
      layout = "contiguous (not chunked)";
    }
  }
  ds[static_cast<size_t>(layer)][static_cast<size_t>(t)] = std::move(d);
}

void TraceReader::Impl::open_and_check() {
  h5::silence_errors();
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail_at("file", "no such file");
  if (!fs::is_regular_file(st)) fail_at("file", "not a regular file");
  const auto size = fs::file_size(path, ec);
  if (!ec && size == 0) fail_at("file", "empty file (0 bytes)");
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is == 0) fail_at("file", "not an HDF5 file (no HDF5 signature)");
  if (is < 0) fail_at("file", "cannot be read (" + h5::last_error() + ")");
  file = h5::file_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!file.valid())
    fail_at("file", "cannot be opened as HDF5, truncated or corrupt? (" + h5::last_error() + ")");
  read_meta();

  // /tokens: integer [T].
  if (H5Lexists(file, "tokens", H5P_DEFAULT) <= 0) fail_at("/tokens", "missing");
  tokens = h5::dataset_id(H5Dopen2(file, "tokens", H5P_DEFAULT));
  if (!tokens.valid()) fail_at("/tokens", "is not a readable dataset (" + h5::last_error() + ")");
  {
    h5::Id sp = h5::space_id(H5Dget_space(tokens));
    const int rank = H5Sget_simple_extent_ndims(sp);
    if (rank != 1) fail_at("/tokens", "rank " + std::to_string(rank) + ", expected 1 [T]");
    std::vector<hsize_t> dims(1);
    H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
    if (dims[0] != static_cast<hsize_t>(meta.num_tokens))
      fail_at("/tokens", "shape " + shape_text(dims) + " does not match [T] = [" +
                             std::to_string(meta.num_tokens) + "]");
    h5::Id ty = h5::type_id(H5Dget_type(tokens));
    if (H5Tget_class(ty) != H5T_INTEGER || H5Tget_size(ty) > 4)
      fail_at("/tokens", "element type " + h5::describe_type(ty) + ", expected int32");
  }

  // /layers/<l>, exactly num_layers groups named 0 .. L-1.
  if (H5Lexists(file, "layers", H5P_DEFAULT) <= 0) fail_at("/layers", "missing");
  h5::Id layers = h5::group_id(H5Gopen2(file, "layers", H5P_DEFAULT));
  if (!layers.valid()) fail_at("/layers", "is not a group (" + h5::last_error() + ")");
  H5G_info_t gi{};
  if (H5Gget_info(layers, &gi) < 0) fail_at("/layers", "cannot be listed (" + h5::last_error() + ")");
  ds.resize(static_cast<size_t>(meta.num_layers));
  for (int l = 0; l < meta.num_layers; ++l) {
    const std::string lname = std::to_string(l);
    if (H5Lexists(layers, lname.c_str(), H5P_DEFAULT) <= 0)
      fail_at("/layers/" + lname, "missing (num_layers = " + std::to_string(meta.num_layers) + ")");
    h5::Id g = h5::group_id(H5Gopen2(layers, lname.c_str(), H5P_DEFAULT));
    if (!g.valid()) fail_at("/layers/" + lname, "is not a group");
    for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) {
      if (H5Lexists(g, tensor_name(t), H5P_DEFAULT) <= 0) fail_at(dataset_name(l, t), "missing");
      check_tensor(l, t, g);
    }
    const bool pre = H5Lexists(g, "k_pre_rope", H5P_DEFAULT) > 0;
    if (l == 0) meta.has_k_pre_rope = pre;
    if (pre != meta.has_k_pre_rope)
      fail_at(dataset_name(l, Tensor::k_pre_rope),
              std::string(pre ? "present, but layer 0 has none" : "missing, but layer 0 has it") +
                  " (k_pre_rope must be in every layer or in none)");
    if (pre) check_tensor(l, Tensor::k_pre_rope, g);
  }
  if (gi.nlinks != static_cast<hsize_t>(meta.num_layers))
    fail_at("/layers", "has " + std::to_string(gi.nlinks) + " members, but num_layers = " +
                           std::to_string(meta.num_layers));
  mem_type = h5::make_mem_type(meta.dtype);
  H5Eclear2(H5E_DEFAULT);
}

hid_t TraceReader::Impl::dataset(int layer, Tensor t) const {
  const std::string what = "layer " + std::to_string(layer) + " " + tensor_name(t);
  if (layer < 0 || layer >= meta.num_layers)
    fail_at(dataset_name(layer, t), "no such layer (num_layers = " +
                                        std::to_string(meta.num_layers) + ")");
  const int ti = static_cast<int>(t);
  if (ti < 0 || ti >= kNumTensors) fail_at("/layers/" + std::to_string(layer), "bad tensor index");
  const h5::Id& d = ds[static_cast<size_t>(layer)][static_cast<size_t>(ti)];
  if (!d.valid()) fail_at(dataset_name(layer, t), "this trace has no such tensor");
  return d.get();
}

void TraceReader::Impl::read_rows(int layer, Tensor t, int64_t t0, int64_t n, void* buf) const {
  const hid_t d = dataset(layer, t);
  if (t0 < 0 || n < 0 || t0 > meta.num_tokens - n)
    fail_at(dataset_name(layer, t), "rows [" + std::to_string(t0) + ", " + std::to_string(t0 + n) +
                                        ") are outside [0, T = " +
                                        std::to_string(meta.num_tokens) + ")");
  if (n == 0) return;
  h5::silence_errors();
#ifndef H5_HAVE_THREADSAFE
  std::lock_guard<std::mutex> lock(mu);
#endif
  h5::Id fsp = h5::space_id(H5Dget_space(d));
  const hsize_t start[3] = {static_cast<hsize_t>(t0), 0, 0};
  const hsize_t count[3] = {static_cast<hsize_t>(n), static_cast<hsize_t>(meta.heads(t)),
                            static_cast<hsize_t>(meta.head_dim)};
  h5::Id msp = h5::space_id(H5Screate_simple(3, count, nullptr));
  if (!fsp.valid() || !msp.valid() ||
      H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dread(d, mem_type, msp, fsp, H5P_DEFAULT, buf) < 0)
    fail_at(dataset_name(layer, t), "read of rows [" + std::to_string(t0) + ", " +
                                        std::to_string(t0 + n) + ") failed (" + h5::last_error() +
                                        ")");
}

TraceReader::TraceReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->open_and_check();
}
TraceReader::~TraceReader() = default;
TraceReader::TraceReader(TraceReader&&) noexcept = default;
TraceReader& TraceReader::operator=(TraceReader&&) noexcept = default;

const TraceMeta& TraceReader::meta() const { return impl_->meta; }
const std::string& TraceReader::path() const { return impl_->path; }
int64_t TraceReader::chunk_tokens() const { return impl_->chunk; }
std::string TraceReader::layout_description() const { return impl_->layout; }

void TraceReader::read_tokens(int64_t t0, int64_t n, std::vector<int32_t>& out) const {
  const int64_t T = impl_->meta.num_tokens;
  if (t0 < 0 || n < 0 || t0 > T - n)
    impl_->fail_at("/tokens", "rows [" + std::to_string(t0) + ", " + std::to_string(t0 + n) +
                                  ") are outside [0, T = " + std::to_string(T) + ")");
  out.resize(static_cast<size_t>(n));
  if (n == 0) return;
  h5::silence_errors();
#ifndef H5_HAVE_THREADSAFE
  std::lock_guard<std::mutex> lock(impl_->mu);
#endif
  h5::Id fsp = h5::space_id(H5Dget_space(impl_->tokens));
  const hsize_t start[1] = {static_cast<hsize_t>(t0)}, count[1] = {static_cast<hsize_t>(n)};
  h5::Id msp = h5::space_id(H5Screate_simple(1, count, nullptr));
  if (H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dread(impl_->tokens, H5T_NATIVE_INT32, msp, fsp, H5P_DEFAULT, out.data()) < 0)
    impl_->fail_at("/tokens", "read failed (" + h5::last_error() + ")");
}

std::vector<int32_t> TraceReader::tokens() const {
  std::vector<int32_t> out;
  read_tokens(0, impl_->meta.num_tokens, out);
  return out;
}

void TraceReader::read_bits(int layer, Tensor which, int64_t t0, int64_t n,
                            std::vector<uint32_t>& out) const {
  const int64_t count = n > 0 ? n * impl_->meta.row_elems(which) : 0;
  impl_->dataset(layer, which);  // validates layer and tensor before resizing
  out.resize(static_cast<size_t>(count));
  impl_->read_rows(layer, which, t0, n, out.data());
  if (impl_->meta.dtype == DType::f32 || count == 0) return;
  // 16-bit elements landed in the first half of the buffer: widen in place,
  // from the back (element i's bytes 2i..2i+1 are read before out[i] is written).
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(out.data());
  for (int64_t i = count - 1; i >= 0; --i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    out[static_cast<size_t>(i)] = h;
  }
}

void TraceReader::read_float(int layer, Tensor which, int64_t t0, int64_t n,
                             std::vector<float>& out) const {
  const int64_t count = n > 0 ? n * impl_->meta.row_elems(which) : 0;
  impl_->dataset(layer, which);
  out.resize(static_cast<size_t>(count));
  impl_->read_rows(layer, which, t0, n, out.data());
  const DType dt = impl_->meta.dtype;
  if (dt == DType::f32 || count == 0) return;
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(out.data());
  for (int64_t i = count - 1; i >= 0; --i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    out[static_cast<size_t>(i)] = decode_bits(dt, h);
  }
}

// ---------------------------------------------------------------------------
// Writer

struct TraceWriter::Impl {
  std::string path, tmp;
  TraceMeta meta;
  int64_t chunk = 0;
  h5::Id file, tokens;
  std::vector<std::array<h5::Id, kNumTensors>> ds;
  std::vector<std::array<Coverage, kNumTensors>> cov;
  Coverage tok_cov;
  h5::Id mem_type;
  std::vector<uint16_t> buf16;
  bool closed = false;

  [[noreturn]] void fail_at(const std::string& what, const std::string& problem) const {
    fail(path, what, problem);
  }
  hid_t dataset(int layer, Tensor t) const {
    if (layer < 0 || layer >= meta.num_layers)
      fail_at(TraceReader::dataset_name(layer, t),
              "no such layer (num_layers = " + std::to_string(meta.num_layers) + ")");
    const int ti = static_cast<int>(t);
    if (ti < 0 || ti >= kNumTensors) fail_at("/layers/" + std::to_string(layer), "bad tensor index");
    const h5::Id& d = ds[static_cast<size_t>(layer)][static_cast<size_t>(ti)];
    if (!d.valid())
      fail_at(TraceReader::dataset_name(layer, t),
              "this trace has no such tensor (TraceMeta::has_k_pre_rope is false)");
    return d.get();
  }
  void check_open() const {
    if (closed || !file.valid()) fail_at("file", "writer is already closed");
  }
  void write(int layer, Tensor t, int64_t t0, int64_t n, const void* data) {
    check_open();
    const hid_t d = dataset(layer, t);
    if (t0 < 0 || n < 0 || t0 > meta.num_tokens - n)
      fail_at(TraceReader::dataset_name(layer, t),
              "rows [" + std::to_string(t0) + ", " + std::to_string(t0 + n) +
                  ") are outside [0, T = " + std::to_string(meta.num_tokens) + ")");
    if (n == 0) return;
    h5::Id fsp = h5::space_id(H5Dget_space(d));
    const hsize_t start[3] = {static_cast<hsize_t>(t0), 0, 0};
    const hsize_t count[3] = {static_cast<hsize_t>(n), static_cast<hsize_t>(meta.heads(t)),
                              static_cast<hsize_t>(meta.head_dim)};
    h5::Id msp = h5::space_id(H5Screate_simple(3, count, nullptr));
    if (H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dwrite(d, mem_type, msp, fsp, H5P_DEFAULT, data) < 0)
      fail_at(TraceReader::dataset_name(layer, t), "write failed (" + h5::last_error() + ")");
    cov[static_cast<size_t>(layer)][static_cast<size_t>(t)].add(t0, t0 + n);
  }
  void discard() {
    tokens.reset();
    ds.clear();
    file.reset();
    std::error_code ec;
    if (!tmp.empty()) fs::remove(tmp, ec);
  }
};

TraceWriter::TraceWriter(const std::string& path, const TraceMeta& meta_in, int64_t chunk_tokens,
                         int gzip_level)
    : impl_(std::make_unique<Impl>()) {
  h5::silence_errors();
  Impl& w = *impl_;
  w.path = path;
  w.meta = meta_in;
  check_meta(w.meta, path);
  if (gzip_level < 0 || gzip_level > 9)
    w.fail_at("gzip level", std::to_string(gzip_level) + " is outside 0..9");
  if (w.meta.created.empty()) w.meta.created = iso_time_now();
  const TraceMeta& m = w.meta;
  w.chunk = std::clamp<int64_t>(chunk_tokens, 1, m.num_tokens);
  w.tmp = path + ".tmp";
  w.file = h5::file_id(H5Fcreate(w.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  if (!w.file.valid()) fail(w.tmp, "file", "cannot be created (" + h5::last_error() + ")");
  try {
    const hid_t root = w.file.get();
    h5::write_attr_i32(root, "kvsim_trace_version", m.version);
    h5::write_attr_i32(root, "num_layers", m.num_layers);
    h5::write_attr_i32(root, "num_q_heads", m.num_q_heads);
    h5::write_attr_i32(root, "num_kv_heads", m.num_kv_heads);
    h5::write_attr_i32(root, "head_dim", m.head_dim);
    h5::write_attr_i64(root, "num_tokens", m.num_tokens);
    h5::write_attr_i64(root, "prefill_len", m.prefill_len);
    h5::write_attr_f64(root, "rope_theta", m.rope_theta);
    h5::write_attr_string(root, "rope_scaling_type", m.rope_scaling_type);
    h5::write_attr_f64(root, "rope_scaling_factor", m.rope_scaling_factor);
    if (m.rope_scaling_type == "llama3") {
      h5::write_attr_f64(root, "rope_low_freq_factor", m.rope_low_freq_factor);
      h5::write_attr_f64(root, "rope_high_freq_factor", m.rope_high_freq_factor);
      h5::write_attr_i64(root, "rope_original_max_position", m.rope_original_max_position);
    }
    h5::write_attr_string(root, "dtype", dtype_name(m.dtype));
    h5::write_attr_string(root, "model", m.model);
    h5::write_attr_string(root, "source", m.source);
    h5::write_attr_string(root, "tool_revision", m.tool_revision);
    h5::write_attr_string(root, "created", m.created);
    h5::write_attr_i64(root, "seed", m.seed);
    for (const auto& [name, value] : m.extra) h5::write_attr_string(root, name.c_str(), value);

    // /tokens int32 [T], contiguous.
    {
      const hsize_t dims[1] = {static_cast<hsize_t>(m.num_tokens)};
      h5::Id sp = h5::space_id(H5Screate_simple(1, dims, nullptr));
      w.tokens = h5::dataset_id(
          H5Dcreate2(root, "tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      if (!w.tokens.valid()) w.fail_at("/tokens", "cannot be created (" + h5::last_error() + ")");
    }
    h5::Id layers = h5::group_id(H5Gcreate2(root, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (!layers.valid()) w.fail_at("/layers", "cannot be created (" + h5::last_error() + ")");
    h5::Id ftype = h5::make_file_type(m.dtype);
    w.mem_type = h5::make_mem_type(m.dtype);
    w.ds.resize(static_cast<size_t>(m.num_layers));
    w.cov.resize(static_cast<size_t>(m.num_layers));
    for (int l = 0; l < m.num_layers; ++l) {
      const std::string lname = std::to_string(l);
      h5::Id g = h5::group_id(
          H5Gcreate2(layers, lname.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      if (!g.valid()) w.fail_at("/layers/" + lname, "cannot be created (" + h5::last_error() + ")");
      for (Tensor t : kAllTensors) {
        if (t == Tensor::k_pre_rope && !m.has_k_pre_rope) continue;
        const hsize_t dims[3] = {static_cast<hsize_t>(m.num_tokens),
                                 static_cast<hsize_t>(m.heads(t)),
                                 static_cast<hsize_t>(m.head_dim)};
        const hsize_t cdims[3] = {static_cast<hsize_t>(w.chunk), dims[1], dims[2]};
        h5::Id sp = h5::space_id(H5Screate_simple(3, dims, nullptr));
        h5::Id dcpl = h5::plist_id(H5Pcreate(H5P_DATASET_CREATE));
        H5Pset_chunk(dcpl, 3, cdims);
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);  // close() checks every row was written
        if (gzip_level > 0) {
          H5Pset_shuffle(dcpl);
          H5Pset_deflate(dcpl, static_cast<unsigned>(gzip_level));
        }
        h5::Id d = h5::dataset_id(
            H5Dcreate2(g, tensor_name(t), ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
        if (!d.valid())
          w.fail_at(TraceReader::dataset_name(l, t), "cannot be created (" + h5::last_error() + ")");
        h5::write_attr_string(d, "dtype", dtype_name(m.dtype));
        w.ds[static_cast<size_t>(l)][static_cast<size_t>(t)] = std::move(d);
      }
    }
  } catch (const TraceError&) {
    w.discard();
    throw;
  } catch (const std::exception& e) {
    w.discard();
    fail(path, "file", e.what());
  }
}

TraceWriter::~TraceWriter() {
  if (impl_ && !impl_->closed) impl_->discard();
}
TraceWriter::TraceWriter(TraceWriter&&) noexcept = default;
TraceWriter& TraceWriter::operator=(TraceWriter&& o) noexcept {
  if (this != &o) {
    if (impl_ && !impl_->closed) impl_->discard();
    impl_ = std::move(o.impl_);
  }
  return *this;
}

const std::string& TraceWriter::path() const { return impl_->path; }

void TraceWriter::write_tokens(const std::vector<int32_t>& ids) {
  if (static_cast<int64_t>(ids.size()) != impl_->meta.num_tokens)
    impl_->fail_at("/tokens", std::to_string(ids.size()) + " ids given, T = " +
                                  std::to_string(impl_->meta.num_tokens));
  write_tokens(0, impl_->meta.num_tokens, ids.data());
}

void TraceWriter::write_tokens(int64_t t0, int64_t n, const int32_t* ids) {
  Impl& w = *impl_;
  w.check_open();
  if (t0 < 0 || n < 0 || t0 > w.meta.num_tokens - n)
    w.fail_at("/tokens", "rows [" + std::to_string(t0) + ", " + std::to_string(t0 + n) +
                             ") are outside [0, T = " + std::to_string(w.meta.num_tokens) + ")");
  if (n == 0) return;
  h5::Id fsp = h5::space_id(H5Dget_space(w.tokens));
  const hsize_t start[1] = {static_cast<hsize_t>(t0)}, count[1] = {static_cast<hsize_t>(n)};
  h5::Id msp = h5::space_id(H5Screate_simple(1, count, nullptr));
  if (H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dwrite(w.tokens, H5T_NATIVE_INT32, msp, fsp, H5P_DEFAULT, ids) < 0)
    w.fail_at("/tokens", "write failed (" + h5::last_error() + ")");
  w.tok_cov.add(t0, t0 + n);
}

void TraceWriter::write_rows(int layer, Tensor which, int64_t t0, int64_t n, const float* data) {
  Impl& w = *impl_;
  const DType dt = w.meta.dtype;
  if (dt == DType::f32 || n <= 0) {
    w.write(layer, which, t0, n, data);
    return;
  }
  w.dataset(layer, which);  // validate before converting
  const size_t count = static_cast<size_t>(n * w.meta.row_elems(which));
  w.buf16.resize(count);
  if (dt == DType::f16)
    for (size_t i = 0; i < count; ++i) w.buf16[i] = float_to_f16_bits(data[i]);
  else
    for (size_t i = 0; i < count; ++i) w.buf16[i] = float_to_bf16_bits(data[i]);
  w.write(layer, which, t0, n, w.buf16.data());
}

void TraceWriter::write_bits(int layer, Tensor which, int64_t t0, int64_t n, const uint32_t* bits) {
  Impl& w = *impl_;
  if (w.meta.dtype == DType::f32 || n <= 0) {
    w.write(layer, which, t0, n, bits);
    return;
  }
  w.dataset(layer, which);
  const size_t count = static_cast<size_t>(n * w.meta.row_elems(which));
  w.buf16.resize(count);
  for (size_t i = 0; i < count; ++i) w.buf16[i] = static_cast<uint16_t>(bits[i]);
  w.write(layer, which, t0, n, w.buf16.data());
}

void TraceWriter::set_attribute(const std::string& name, const std::string& value) {
  impl_->check_open();
  if (schema_attrs().count(name))
    impl_->fail_at("attribute " + name, "extra attribute collides with a schema attribute");
  try {
    h5::write_attr_string(impl_->file, name.c_str(), value);
  } catch (const std::exception& e) {
    impl_->fail_at("attribute " + name, e.what());
  }
}
void TraceWriter::set_attribute(const std::string& name, double value) {
  impl_->check_open();
  if (schema_attrs().count(name))
    impl_->fail_at("attribute " + name, "extra attribute collides with a schema attribute");
  try {
    h5::write_attr_f64(impl_->file, name.c_str(), value);
  } catch (const std::exception& e) {
    impl_->fail_at("attribute " + name, e.what());
  }
}
void TraceWriter::set_attribute(const std::string& name, int64_t value) {
  impl_->check_open();
  if (schema_attrs().count(name))
    impl_->fail_at("attribute " + name, "extra attribute collides with a schema attribute");
  try {
    h5::write_attr_i64(impl_->file, name.c_str(), value);
  } catch (const std::exception& e) {
    impl_->fail_at("attribute " + name, e.what());
  }
}

void TraceWriter::close() {
  Impl& w = *impl_;
  w.check_open();
  const int64_t T = w.meta.num_tokens;
  auto gap_text = [](std::pair<int64_t, int64_t> g) {
    return "rows [" + std::to_string(g.first) + ", " + std::to_string(g.second) +
           ") were never written";
  };
  if (auto g = w.tok_cov.first_gap(T); g.first < T) w.fail_at("/tokens", gap_text(g));
  for (int l = 0; l < w.meta.num_layers; ++l)
    for (Tensor t : kAllTensors) {
      if (t == Tensor::k_pre_rope && !w.meta.has_k_pre_rope) continue;
      if (auto g = w.cov[static_cast<size_t>(l)][static_cast<size_t>(t)].first_gap(T); g.first < T)
        w.fail_at(TraceReader::dataset_name(l, t), gap_text(g));
    }
  bool ok = w.tokens.close();
  for (auto& layer : w.ds)
    for (auto& d : layer) ok = d.close() && ok;
  w.ds.clear();
  w.mem_type.reset();
  if (!ok || H5Fflush(w.file, H5F_SCOPE_GLOBAL) < 0 || !w.file.close())
    w.fail_at("file", "flush or close failed (" + h5::last_error() + ")");
  std::error_code ec;
  fs::rename(w.tmp, w.path, ec);
  if (ec) w.fail_at("file", "cannot rename " + w.tmp + " to it: " + ec.message());
  w.closed = true;
}

// ---------------------------------------------------------------------------

std::string format_info(const TraceReader& r) {
  const TraceMeta& m = r.meta();
  std::ostringstream o;
  auto row = [&](const char* key, const std::string& value) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%-16s", key);
    o << buf << value << "\n";
  };
  std::error_code ec;
  const auto bytes = fs::file_size(r.path(), ec);
  row("file", r.path() + (ec ? "" : "  (" + h5::format_double(std::round(bytes / 1048576.0 * 100) / 100) + " MiB)"));
  row("schema", "kvsim trace v" + std::to_string(m.version));
  row("geometry", std::to_string(m.num_layers) + " layers, " + std::to_string(m.num_q_heads) +
                      " query heads, " + std::to_string(m.num_kv_heads) + " KV heads (GQA group " +
                      std::to_string(m.num_q_heads / m.num_kv_heads) + "), head dim " +
                      std::to_string(m.head_dim));
  row("tokens", std::to_string(m.num_tokens) + " (prefill " + std::to_string(m.prefill_len) +
                    ", decode " + std::to_string(m.num_tokens - m.prefill_len) + ")");
  row("dtype", dtype_name(m.dtype));
  row("tensors", std::string("q [T, ") + std::to_string(m.num_q_heads) + ", " +
                     std::to_string(m.head_dim) + "], k, v" +
                     (m.has_k_pre_rope ? ", k_pre_rope" : "") + " [T, " +
                     std::to_string(m.num_kv_heads) + ", " + std::to_string(m.head_dim) + "]");
  row("storage", r.layout_description() + ", " + std::to_string(r.chunk_tokens()) +
                     " tokens per chunk");
  std::string rope = "theta " + h5::format_double(m.rope_theta) + ", scaling " + m.rope_scaling_type;
  if (m.rope_scaling_type != "none") rope += " factor " + h5::format_double(m.rope_scaling_factor);
  if (m.rope_scaling_type == "llama3")
    rope += ", low_freq_factor " + h5::format_double(m.rope_low_freq_factor) +
            ", high_freq_factor " + h5::format_double(m.rope_high_freq_factor) +
            ", original_max_position " + std::to_string(m.rope_original_max_position);
  row("rope", rope);
  row("model", m.model);
  row("source", m.source);
  row("tool_revision", m.tool_revision);
  row("created", m.created);
  row("seed", std::to_string(m.seed));
  if (!m.extra.empty()) {
    o << "extra attributes:\n";
    size_t w = 0;
    for (const auto& kv : m.extra) w = std::max(w, kv.first.size());
    for (const auto& [k, v] : m.extra) o << "  " << k << std::string(w - k.size() + 2, ' ') << v << "\n";
  }
  return o.str();
}

}  // namespace kvsim::traces

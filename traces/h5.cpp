// Internal HDF5 helpers of the trace library (see h5.hpp).
#include "traces/h5.hpp"

#include <cinttypes>
#include <cstdio>
#include <stdexcept>
#include <cstdlib>

namespace kvsim::traces::h5 {

void silence_errors() {
  // A thread-safe HDF5 keeps the error-stack settings per thread.
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

namespace {
herr_t innermost_cb(unsigned, const H5E_error2_t* e, void* data) {
  if (e && e->desc) *static_cast<std::string*>(data) = e->desc;
  return 0;
}
}  // namespace

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, innermost_cb, &msg);
  H5Eclear2(H5E_DEFAULT);
  for (char& c : msg)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  if (msg.size() > 240) msg = msg.substr(0, 240) + "...";
  return msg;
}

namespace {
Id build_float_type(DType t, bool native_order) {
  const DTypeTraits& tr = dtype_traits(t);
  Id ty = type_id(H5Tcopy(H5T_IEEE_F32LE));
  if (t != DType::f32) {
    // The order of these calls is h5py's (h5t.pyx): fields, then size, then bias.
    H5Tset_fields(ty, tr.sign_pos, tr.exp_pos, tr.exp_size, tr.mant_pos, tr.mant_size);
    H5Tset_size(ty, static_cast<size_t>(tr.bytes));
    H5Tset_ebias(ty, static_cast<size_t>(tr.exp_bias));
  }
  if (native_order) H5Tset_order(ty, H5Tget_order(H5T_NATIVE_FLOAT));
  return ty;
}
}  // namespace

Id make_file_type(DType t) { return build_float_type(t, false); }
Id make_mem_type(DType t) { return build_float_type(t, true); }

bool classify_float_type(hid_t type, DType& out) {
  if (H5Tget_class(type) != H5T_FLOAT) return false;
  const size_t size = H5Tget_size(type);
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  const size_t ebias = H5Tget_ebias(type);
  for (DType t : {DType::f16, DType::bf16, DType::f32}) {
    const DTypeTraits& tr = dtype_traits(t);
    if (size == static_cast<size_t>(tr.bytes) && spos == static_cast<size_t>(tr.sign_pos) &&
        epos == static_cast<size_t>(tr.exp_pos) && esize == static_cast<size_t>(tr.exp_size) &&
        mpos == static_cast<size_t>(tr.mant_pos) && msize == static_cast<size_t>(tr.mant_size) &&
        ebias == static_cast<size_t>(tr.exp_bias) && H5Tget_offset(type) == 0 &&
        H5Tget_norm(type) == H5T_NORM_IMPLIED) {
      out = t;
      return true;
    }
  }
  return false;
}

std::string describe_type(hid_t type) {
  const size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return std::string(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") +
             std::to_string(size * 8);
    case H5T_FLOAT: {
      DType t;
      if (classify_float_type(type, t)) return dtype_name(t);
      return "float" + std::to_string(size * 8) + (size == 8 ? "" : " (non-IEEE layout)");
    }
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length sequence";
    case H5T_OPAQUE: return "opaque";
    case H5T_REFERENCE: return "reference";
    case H5T_BITFIELD: return "bitfield";
    default: return "unknown type";
  }
}

AttrKind attr_kind(hid_t attr) {
  Id ty = type_id(H5Aget_type(attr));
  if (!ty.valid()) return AttrKind::other;
  switch (H5Tget_class(ty)) {
    case H5T_INTEGER: return AttrKind::integer;
    case H5T_FLOAT: return AttrKind::real;
    case H5T_STRING: return AttrKind::string;
    default: return AttrKind::other;
  }
}

namespace {
Id scalar_space() { return space_id(H5Screate(H5S_SCALAR)); }

void write_attr_raw(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  Id sp = scalar_space();
  Id a = attr_id(H5Acreate2(obj, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT));
  if (!a.valid() || H5Awrite(a, mem_type, v) < 0)
    throw std::runtime_error(std::string("cannot write attribute ") + name + ": " + last_error());
}

// Opens a scalar (or one-element) attribute; problem set on failure.
Id open_scalar_attr(hid_t obj, const char* name, AttrRead& r) {
  const htri_t ex = H5Aexists(obj, name);
  if (ex <= 0) {
    r.problem = ex == 0 ? "missing" : "cannot be read (" + last_error() + ")";
    return Id();
  }
  Id a = attr_id(H5Aopen(obj, name, H5P_DEFAULT));
  if (!a.valid()) {
    r.problem = "cannot be opened (" + last_error() + ")";
    return Id();
  }
  Id sp = space_id(H5Aget_space(a));
  const H5S_class_t cls = H5Sget_simple_extent_type(sp);
  if (cls != H5S_SCALAR && !(cls == H5S_SIMPLE && H5Sget_simple_extent_npoints(sp) == 1)) {
    r.problem = "wrong shape: expected a scalar";
    return Id();
  }
  return a;
}
}  // namespace

void write_attr_string(hid_t obj, const char* name, const std::string& value) {
  Id ty = type_id(H5Tcopy(H5T_C_S1));
  H5Tset_size(ty, H5T_VARIABLE);
  H5Tset_cset(ty, H5T_CSET_UTF8);
  const char* p = value.c_str();
  write_attr_raw(obj, name, ty, ty, &p);
}
void write_attr_i32(hid_t obj, const char* name, int32_t value) {
  write_attr_raw(obj, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &value);
}
void write_attr_i64(hid_t obj, const char* name, int64_t value) {
  write_attr_raw(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}
void write_attr_f64(hid_t obj, const char* name, double value) {
  write_attr_raw(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

AttrRead read_attr_i64(hid_t obj, const char* name, int64_t& out) {
  AttrRead r;
  Id a = open_scalar_attr(obj, name, r);
  if (!a.valid()) return r;
  if (attr_kind(a) != AttrKind::integer) {
    Id ty = type_id(H5Aget_type(a));
    r.problem = "wrong type: expected an integer, found " + describe_type(ty);
    return r;
  }
  if (H5Aread(a, H5T_NATIVE_INT64, &out) < 0) {
    r.problem = "cannot be read (" + last_error() + ")";
    return r;
  }
  r.ok = true;
  return r;
}

AttrRead read_attr_f64(hid_t obj, const char* name, double& out) {
  AttrRead r;
  Id a = open_scalar_attr(obj, name, r);
  if (!a.valid()) return r;
  const AttrKind k = attr_kind(a);
  if (k != AttrKind::real && k != AttrKind::integer) {
    Id ty = type_id(H5Aget_type(a));
    r.problem = "wrong type: expected a float, found " + describe_type(ty);
    return r;
  }
  if (H5Aread(a, H5T_NATIVE_DOUBLE, &out) < 0) {
    r.problem = "cannot be read (" + last_error() + ")";
    return r;
  }
  r.ok = true;
  return r;
}

AttrRead read_attr_string(hid_t obj, const char* name, std::string& out) {
  AttrRead r;
  Id a = open_scalar_attr(obj, name, r);
  if (!a.valid()) return r;
  Id ty = type_id(H5Aget_type(a));
  if (H5Tget_class(ty) != H5T_STRING) {
    r.problem = "wrong type: expected a string, found " + describe_type(ty);
    return r;
  }
  if (H5Tis_variable_str(ty) > 0) {
    Id mem = type_id(H5Tcopy(H5T_C_S1));
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(ty));
    char* p = nullptr;
    if (H5Aread(a, mem, &p) < 0) {
      r.problem = "cannot be read (" + last_error() + ")";
      return r;
    }
    out = p ? p : "";
    if (p) H5free_memory(p);
  } else {
    const size_t n = H5Tget_size(ty);
    std::string buf(n, '\0');
    Id mem = type_id(H5Tcopy(ty));
    if (H5Aread(a, mem, buf.data()) < 0) {
      r.problem = "cannot be read (" + last_error() + ")";
      return r;
    }
    const size_t end = buf.find('\0');
    if (end != std::string::npos) buf.resize(end);
    while (!buf.empty() && buf.back() == ' ') buf.pop_back();  // H5T_STR_SPACEPAD
    out = buf;
  }
  r.ok = true;
  return r;
}

namespace {
herr_t collect_names(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}
}  // namespace

std::string format_double(double v) {
  char buf[64];
  for (int prec = 15; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::vector<std::pair<std::string, std::string>> all_attrs_as_text(hid_t obj) {
  std::vector<std::string> names;
  hsize_t idx = 0;
  H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_names, &names);
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& n : names) {
    std::string text;
    Id a = attr_id(H5Aopen(obj, n.c_str(), H5P_DEFAULT));
    const AttrKind k = a.valid() ? attr_kind(a) : AttrKind::other;
    a.reset();
    if (k == AttrKind::string) {
      if (!read_attr_string(obj, n.c_str(), text).ok) text = "(unreadable string)";
    } else if (k == AttrKind::integer) {
      int64_t v = 0;
      text = read_attr_i64(obj, n.c_str(), v).ok ? std::to_string(v) : "(non-scalar integer)";
    } else if (k == AttrKind::real) {
      double v = 0;
      if (read_attr_f64(obj, n.c_str(), v).ok) {
        text = format_double(v);
      } else {
        text = "(non-scalar float)";
      }
    } else {
      text = "(unsupported attribute type)";
    }
    out.emplace_back(n, text);
  }
  H5Eclear2(H5E_DEFAULT);
  return out;
}

}  // namespace kvsim::traces::h5

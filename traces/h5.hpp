// Internal helpers of the trace library over the HDF5 C API: owned handles,
// the HDF5 error stack as one line, the trace element types and typed
// attribute access. Not part of the public API (tests may use it to build
// bad files).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "traces/dtype.hpp"

namespace kvsim::traces::h5 {

// An owned hid_t, closed with the matching H5*close.
class Id {
 public:
  Id() = default;
  Id(hid_t id, herr_t (*closer)(hid_t)) : id_(id), close_(closer) {}
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Id& operator=(Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() { reset(); }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes now and reports whether the close succeeded.
  bool close() {
    herr_t r = 0;
    if (id_ >= 0 && close_) r = close_(id_);
    id_ = H5I_INVALID_HID;
    return r >= 0;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  operator hid_t() const { return id_; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

inline Id file_id(hid_t h) { return Id(h, H5Fclose); }
inline Id group_id(hid_t h) { return Id(h, H5Gclose); }
inline Id dataset_id(hid_t h) { return Id(h, H5Dclose); }
inline Id space_id(hid_t h) { return Id(h, H5Sclose); }
inline Id type_id(hid_t h) { return Id(h, H5Tclose); }
inline Id attr_id(hid_t h) { return Id(h, H5Aclose); }
inline Id plist_id(hid_t h) { return Id(h, H5Pclose); }

// Turns off HDF5's own printing of its error stack (for the calling thread;
// cheap after the first call).
void silence_errors();

// The innermost message of HDF5's current error stack, on one line (empty if
// none); clears the stack.
std::string last_error();

// The file type of a trace element: f32 = H5T_IEEE_F32LE; f16 and bf16 are
// 2-byte little-endian float types built from it (h5py reads f16 as float16).
Id make_file_type(DType t);
// The same layout in the machine's byte order, for H5Dread/H5Dwrite.
Id make_mem_type(DType t);
// Classifies a dataset's element type; false if it is none of the three.
bool classify_float_type(hid_t type, DType& out);
// A short description of any HDF5 type ("int32", "float64", "string", ...).
std::string describe_type(hid_t type);

// Attribute kinds as the schema uses them.
enum class AttrKind { integer, real, string, other };
AttrKind attr_kind(hid_t attr);

void write_attr_string(hid_t obj, const char* name, const std::string& value);
void write_attr_i32(hid_t obj, const char* name, int32_t value);
void write_attr_i64(hid_t obj, const char* name, int64_t value);
void write_attr_f64(hid_t obj, const char* name, double value);

// Result of reading an attribute: ok, or a problem text ("missing", "wrong
// type: expected an integer, found string", ...).
struct AttrRead {
  bool ok = false;
  std::string problem;
};
AttrRead read_attr_i64(hid_t obj, const char* name, int64_t& out);     // any integer type
AttrRead read_attr_f64(hid_t obj, const char* name, double& out);      // float or integer
AttrRead read_attr_string(hid_t obj, const char* name, std::string& out);  // fixed or variable
// Shortest "%g" text that reads back as the same double.
std::string format_double(double v);
// Every attribute of obj as (name, text), sorted by name; numbers as text.
std::vector<std::pair<std::string, std::string>> all_attrs_as_text(hid_t obj);

}  // namespace kvsim::traces::h5

// A minimal JSON reader for the files a Hugging Face checkpoint carries
// (config.json, model.safetensors.index.json, the safetensors header).
// RFC 8259 values: null, true/false, numbers (kept as double and as their
// text, so 64-bit integers such as data offsets stay exact), strings (with
// \uXXXX escapes and surrogate pairs, produced as UTF-8), arrays, objects
// (members in file order; a repeated key: the last one wins on lookup).
// Errors throw JsonError("<what>: <problem> at line L column C").
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kvsim::model {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_number() const { return kind_ == Kind::number; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }

  // Typed access; throws JsonError naming the expected kind.
  bool as_bool() const;
  double as_double() const;
  // The number as an exact integer (its text must be an integer literal, or a
  // double with an integral value below 2^53).
  int64_t as_int() const;
  const std::string& as_string() const;
  const std::vector<Json>& items() const;                               // array
  const std::vector<std::pair<std::string, Json>>& members() const;     // object

  // Object member, or nullptr if absent (or if this is not an object).
  const Json* find(const std::string& key) const;
  // Array size or member count (0 for scalars).
  size_t size() const;

  // Parses one JSON text (surrounding whitespace allowed, nothing else).
  // `what` names the source in error messages.
  static Json parse(const std::string& text, const std::string& what = "json");

 private:
  friend class JsonParser;
  Kind kind_ = Kind::null;
  bool b_ = false;
  double num_ = 0;
  std::string str_;  // string value, or the number's literal text
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
};

// Reads a whole file into a string; throws JsonError("<path>: cannot read").
std::string read_text_file(const std::string& path);

}  // namespace kvsim::model

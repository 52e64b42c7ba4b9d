// The minimal JSON reader (see json.hpp).
#include "traces/model/json.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kvsim::model {

namespace {
const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::null: return "null";
    case Json::Kind::boolean: return "boolean";
    case Json::Kind::number: return "number";
    case Json::Kind::string: return "string";
    case Json::Kind::array: return "array";
    case Json::Kind::object: return "object";
  }
  return "?";
}
[[noreturn]] void type_error(Json::Kind have, const char* want) {
  throw JsonError(std::string("json: expected ") + want + ", found " + kind_name(have));
}
}  // namespace

bool Json::as_bool() const {
  if (kind_ != Kind::boolean) type_error(kind_, "boolean");
  return b_;
}
double Json::as_double() const {
  if (kind_ != Kind::number) type_error(kind_, "number");
  return num_;
}
int64_t Json::as_int() const {
  if (kind_ != Kind::number) type_error(kind_, "number");
  bool integral_text = !str_.empty();
  for (size_t i = 0; i < str_.size(); ++i)
    if (!(std::isdigit(static_cast<unsigned char>(str_[i])) || (i == 0 && str_[i] == '-'))) integral_text = false;
  if (integral_text) {
    errno = 0;
    const long long v = std::strtoll(str_.c_str(), nullptr, 10);
    if (errno == ERANGE) throw JsonError("json: integer " + str_ + " out of range");
    return v;
  }
  if (std::floor(num_) != num_ || std::fabs(num_) > 9007199254740992.0)
    throw JsonError("json: expected an integer, found " + str_);
  return static_cast<int64_t>(num_);
}
const std::string& Json::as_string() const {
  if (kind_ != Kind::string) type_error(kind_, "string");
  return str_;
}
const std::vector<Json>& Json::items() const {
  if (kind_ != Kind::array) type_error(kind_, "array");
  return arr_;
}
const std::vector<std::pair<std::string, Json>>& Json::members() const {
  if (kind_ != Kind::object) type_error(kind_, "object");
  return obj_;
}
const Json* Json::find(const std::string& key) const {
  if (kind_ != Kind::object) return nullptr;
  const Json* hit = nullptr;
  for (const auto& [k, v] : obj_)
    if (k == key) hit = &v;
  return hit;
}
size_t Json::size() const {
  if (kind_ == Kind::array) return arr_.size();
  if (kind_ == Kind::object) return obj_.size();
  return 0;
}

class JsonParser {
 public:
  JsonParser(const std::string& s, const std::string& what) : s_(s), what_(what) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (i_ != s_.size()) fail("unexpected text after the value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 256;

  [[noreturn]] void fail(const std::string& problem) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < i_ && k < s_.size(); ++k) {
      if (s_[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw JsonError(what_ + ": " + problem + " at line " + std::to_string(line) + " column " + std::to_string(col));
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect_word(const char* w) {
    for (const char* p = w; *p; ++p)
      if (!eat(*p)) fail(std::string("invalid literal (expected '") + w + "')");
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    if (i_ >= s_.size()) fail("unexpected end of text");
    Json v;
    const char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.kind_ = Json::Kind::object;
      skip_ws();
      if (eat('}')) return v;
      for (;;) {
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a member name");
        std::string key = parse_string();
        skip_ws();
        if (!eat(':')) fail("expected ':'");
        skip_ws();
        Json m = parse_value(depth + 1);
        v.obj_.emplace_back(std::move(key), std::move(m));
        skip_ws();
        if (eat(',')) continue;
        if (eat('}')) break;
        fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      ++i_;
      v.kind_ = Json::Kind::array;
      skip_ws();
      if (eat(']')) return v;
      for (;;) {
        skip_ws();
        v.arr_.push_back(parse_value(depth + 1));
        skip_ws();
        if (eat(',')) continue;
        if (eat(']')) break;
        fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.kind_ = Json::Kind::string;
      v.str_ = parse_string();
    } else if (c == 't') {
      expect_word("true");
      v.kind_ = Json::Kind::boolean;
      v.b_ = true;
    } else if (c == 'f') {
      expect_word("false");
      v.kind_ = Json::Kind::boolean;
    } else if (c == 'n') {
      expect_word("null");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      parse_number(v);
    } else if (c == 'N' || c == 'I') {
      // Python's json module writes NaN / Infinity; accept them as numbers.
      if (s_.compare(i_, 3, "NaN") == 0) {
        i_ += 3;
        v.kind_ = Json::Kind::number;
        v.num_ = std::nan("");
        v.str_ = "NaN";
      } else {
        expect_word("Infinity");
        v.kind_ = Json::Kind::number;
        v.num_ = HUGE_VAL;
        v.str_ = "Infinity";
      }
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }

  void parse_number(Json& v) {
    const size_t start = i_;
    eat('-');
    if (eat('0')) {
    } else if (i_ < s_.size() && s_[i_] >= '1' && s_[i_] <= '9') {
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    } else if (s_.compare(i_, 8, "Infinity") == 0) {
      i_ += 8;
      v.kind_ = Json::Kind::number;
      v.num_ = -HUGE_VAL;
      v.str_ = "-Infinity";
      return;
    } else {
      fail("invalid number");
    }
    if (eat('.')) {
      if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) fail("invalid number");
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (!eat('+')) eat('-');
      if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) fail("invalid number");
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    v.kind_ = Json::Kind::number;
    v.str_ = s_.substr(start, i_ - start);
    v.num_ = std::strtod(v.str_.c_str(), nullptr);
  }

  unsigned parse_hex4() {
    if (i_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = s_[i_++];
      u <<= 4;
      if (h >= '0' && h <= '9') u |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f') u |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') u |= static_cast<unsigned>(h - 'A' + 10);
      else fail("invalid \\u escape");
    }
    return u;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated string");
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            if (!(eat('\\') && eat('u'))) fail("unpaired surrogate in \\u escape");
            const unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("invalid low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("unpaired low surrogate in \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default: fail(std::string("invalid escape '\\") + e + "'");
      }
    }
    return out;
  }

  const std::string& s_;
  std::string what_;
  size_t i_ = 0;
};

Json Json::parse(const std::string& text, const std::string& what) { return JsonParser(text, what).parse_document(); }

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw JsonError(path + ": cannot read");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace kvsim::model

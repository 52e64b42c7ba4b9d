#include "analysis/report_png.hpp"

#include <zlib.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <unordered_set>
#include <vector>

namespace kvsim::analysis {
namespace {
std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}
PngInfo fail(PngInfo i, const std::string& why) {
  i.ok = false;
  i.error = why;
  return i;
}
}  // namespace

PngInfo inspect_png(const std::string& path) {
  PngInfo info;
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(info, "cannot open");
  const std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), {});
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() < 8 + 25 || std::memcmp(b.data(), sig, 8) != 0) return fail(info, "no PNG signature");
  if (be32(&b[8]) != 13 || std::memcmp(&b[12], "IHDR", 4) != 0) return fail(info, "first chunk is not IHDR");
  info.width = be32(&b[16]);
  info.height = be32(&b[20]);
  info.bit_depth = b[24];
  info.color_type = b[25];
  const int interlace = b[28];
  if (info.width == 0 || info.height == 0 || info.width > 20000 || info.height > 20000)
    return fail(info, "implausible size");
  int channels = 0;
  switch (info.color_type) {
    case 0: channels = 1; break;
    case 2: channels = 3; break;
    case 3: channels = 1; break;
    case 4: channels = 2; break;
    case 6: channels = 4; break;
    default: return fail(info, "unknown colour type");
  }
  if (info.bit_depth != 8 || interlace != 0) return fail(info, "only 8-bit non-interlaced PNGs are inspected");
  std::vector<unsigned char> idat;
  bool iend = false;
  for (size_t p = 8; p + 12 <= b.size();) {
    const std::uint32_t len = be32(&b[p]);
    if (p + 12 + static_cast<size_t>(len) > b.size()) return fail(info, "truncated chunk");
    const char* type = reinterpret_cast<const char*>(&b[p + 4]);
    if (std::memcmp(type, "IDAT", 4) == 0) idat.insert(idat.end(), &b[p + 8], &b[p + 8] + len);
    if (std::memcmp(type, "IEND", 4) == 0) iend = true;
    p += 12 + static_cast<size_t>(len);
  }
  if (!iend) return fail(info, "no IEND chunk (truncated)");
  const size_t stride = static_cast<size_t>(info.width) * static_cast<size_t>(channels);
  std::vector<unsigned char> raw((stride + 1) * info.height);
  uLongf raw_len = static_cast<uLongf>(raw.size());
  if (uncompress(raw.data(), &raw_len, idat.data(), static_cast<uLong>(idat.size())) != Z_OK ||
      raw_len != raw.size())
    return fail(info, "IDAT does not inflate to the image size");
  // Undo the per-scanline filters (PNG spec section 9) in place.
  std::vector<unsigned char> img(stride * info.height);
  const size_t bpp = static_cast<size_t>(channels);
  for (size_t y = 0; y < info.height; ++y) {
    const unsigned char f = raw[y * (stride + 1)];
    const unsigned char* src = &raw[y * (stride + 1) + 1];
    unsigned char* cur = &img[y * stride];
    const unsigned char* prev = y ? &img[(y - 1) * stride] : nullptr;
    for (size_t x = 0; x < stride; ++x) {
      const int a = x >= bpp ? cur[x - bpp] : 0, up = prev ? prev[x] : 0, c = (prev && x >= bpp) ? prev[x - bpp] : 0;
      int v = src[x];
      switch (f) {
        case 0: break;
        case 1: v += a; break;
        case 2: v += up; break;
        case 3: v += (a + up) / 2; break;
        case 4: {
          const int p = a + up - c, pa = std::abs(p - a), pb = std::abs(p - up), pc = std::abs(p - c);
          v += (pa <= pb && pa <= pc) ? a : (pb <= pc ? up : c);
          break;
        }
        default: return fail(info, "bad scanline filter");
      }
      cur[x] = static_cast<unsigned char>(v);
    }
  }
  std::unordered_set<std::uint32_t> colors;
  std::int64_t differ = 0;
  std::uint32_t bg = 0;
  for (size_t i = 0; i < static_cast<size_t>(info.width) * info.height; ++i) {
    std::uint32_t px = 0;
    for (int c = 0; c < channels; ++c) px = (px << 8) | img[i * bpp + static_cast<size_t>(c)];
    if (i == 0) bg = px;
    differ += px != bg;
    colors.insert(px);
  }
  info.distinct_colors = static_cast<std::int64_t>(colors.size());
  info.non_background = static_cast<double>(differ) / (static_cast<double>(info.width) * info.height);
  info.ok = true;
  return info;
}

}  // namespace kvsim::analysis

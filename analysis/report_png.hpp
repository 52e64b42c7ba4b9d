// A small PNG inspector (zlib only): checks the signature, reads IHDR, inflates
// the IDAT stream, undoes the scanline filters and counts the distinct pixel
// values. `kvsim report` runs it on every plot it writes, so a report never
// links a blank or broken image; the tests use it too.
#pragma once
#include <cstdint>
#include <string>

namespace kvsim::analysis {

struct PngInfo {
  bool ok = false;
  std::string error;          // why !ok
  std::uint32_t width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  std::int64_t distinct_colors = 0;   // distinct pixel values (all channels together)
  double non_background = 0;          // fraction of pixels that differ from the top-left pixel
};

// Supports 8-bit, non-interlaced grey, grey+alpha, RGB, RGBA and palette PNGs
// (what cairo and gd write); anything else is reported as !ok with a reason.
PngInfo inspect_png(const std::string& path);

}  // namespace kvsim::analysis

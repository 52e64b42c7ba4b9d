// Plots for `kvsim report`: gnuplot run as a child process on a generated
// script, once per figure, writing NAME.png (pngcairo) and NAME.svg (svg)
// into the report folder. The script and its data files stay in src/ so a
// figure can be restyled and re-rendered by hand (cd DIR && gnuplot src/NAME.gp).
#pragma once
#include <string>
#include <vector>

namespace kvsim::analysis::plot {

struct Renderer {
  std::string program = "gnuplot";
  std::string dir;  // the report folder; gnuplot runs there, paths are relative to it
  bool svg = true;
};

// Writes src/NAME.gp (the body drawn once per terminal, after `reset`) and
// runs it; then checks NAME.png with inspect_png (valid, not blank). Throws
// std::runtime_error naming the figure and gnuplot's first error line.
void render(const Renderer& r, const std::string& name, int width, int height, const std::string& body);

// Gnuplot string literal (double quotes, backslash-escaped).
std::string quote(const std::string& s);

// A fixed qualitative palette (colour-blind aware order); wraps around.
std::string color(size_t i);

}  // namespace kvsim::analysis::plot

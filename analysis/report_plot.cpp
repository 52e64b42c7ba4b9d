#include "analysis/report_plot.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "analysis/report_png.hpp"

namespace kvsim::analysis::plot {
namespace fs = std::filesystem;

std::string quote(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

std::string color(size_t i) {
  static const char* k[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00",
                            "#56B4E9", "#7F3C8D", "#000000", "#A6761D", "#666666"};
  return k[i % (sizeof k / sizeof k[0])];
}

namespace {
// Runs `program script` in `dir`, stdout and stderr to `log`; returns the exit status.
int run_in(const std::string& program, const std::string& script, const std::string& dir, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("cannot start gnuplot (fork failed)");
  if (pid == 0) {
    if (::chdir(dir.c_str()) != 0) ::_exit(126);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int nul = ::open("/dev/null", O_RDONLY);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    if (nul >= 0) ::dup2(nul, 0);
    ::execlp(program.c_str(), program.c_str(), script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

std::string first_error_line(const std::string& log) {
  std::ifstream in(log);
  std::string line, first;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (first.empty()) first = line;
    if (line.find("rror") != std::string::npos) return line;
  }
  return first;
}
}  // namespace

void render(const Renderer& r, const std::string& name, int width, int height, const std::string& body) {
  fs::create_directories(fs::path(r.dir) / "src");
  const std::string script = "src/" + name + ".gp", log = "src/" + name + ".log";
  {
    std::ofstream gp(fs::path(r.dir) / script);
    gp << "# kvsim report figure " << name << "; re-render with: cd <report dir> && gnuplot " << script << "\n"
       << "set encoding utf8\n"
       << "set terminal pngcairo size " << width << "," << height
       << " font \"DejaVu Sans,11\" noenhanced linewidth 1.4\n"
       << "set output " << quote(name + ".png") << "\nreset\n" << body << "\nunset output\n";
    if (r.svg)
      gp << "set terminal svg size " << width << "," << height
         << " font \"DejaVu Sans,11\" noenhanced linewidth 1.4 background rgb 'white'\n"
         << "set output " << quote(name + ".svg") << "\nreset\n" << body << "\nunset output\n";
    if (!gp) throw std::runtime_error("cannot write " + script);
  }
  const int rc = run_in(r.program, script, r.dir, (fs::path(r.dir) / log).string());
  if (rc == 127)
    throw std::runtime_error("cannot run '" + r.program +
                             "' (install gnuplot: Debian package gnuplot-nox; or use --no-plots)");
  if (rc != 0)
    throw std::runtime_error("gnuplot failed on figure " + name + " (exit " + std::to_string(rc) +
                             "): " + first_error_line((fs::path(r.dir) / log).string()));
  std::error_code ec;
  if (fs::exists(fs::path(r.dir) / log, ec) && fs::file_size(fs::path(r.dir) / log, ec) == 0)
    fs::remove(fs::path(r.dir) / log, ec);  // keep gnuplot's log only when it said something
  const PngInfo png = inspect_png((fs::path(r.dir) / (name + ".png")).string());
  if (!png.ok) throw std::runtime_error("figure " + name + ".png is not a valid PNG: " + png.error);
  if (png.distinct_colors < 3 || png.non_background < 0.002)
    throw std::runtime_error("figure " + name + ".png is blank");
  if (r.svg && !fs::exists(fs::path(r.dir) / (name + ".svg")))
    throw std::runtime_error("figure " + name + ".svg was not written");
}

}  // namespace kvsim::analysis::plot

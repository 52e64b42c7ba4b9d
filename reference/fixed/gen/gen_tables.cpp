// kvsim_gen_tables: generates reference/fixed/tables.inc, the constants and
// tables of the fixed-point core (exp2, log2, ln, and the pinned Paley
// Hadamard matrices of orders 12, 20, 28).
//
// Every real constant is computed in cpp_bin_float_100 (about 330 bits) and
// rounded once, half to even, to its integer format; every rational constant
// is rounded exactly with cpp_int. The Hadamard matrices are verified
// (H H^T = n I) before they are printed; the program fails otherwise.
//
// Usage: kvsim_gen_tables [output path]   (stdout when no path is given)
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/cpp_int.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace mp = boost::multiprecision;
using F = mp::cpp_bin_float_100;
using mp::cpp_int;

namespace {

[[noreturn]] void fail(const std::string& msg) {
  std::cerr << "kvsim_gen_tables: " << msg << "\n";
  std::exit(1);
}

// Round half to even of a real value.
cpp_int rne(const F& v) {
  const F fl = floor(v);
  cpp_int r = fl.convert_to<cpp_int>();
  const F d = v - fl;
  if (d > F(0.5) || (d == F(0.5) && (r & 1) != 0)) ++r;
  return r;
}
// Round half to even of the exact rational n/d, d > 0.
cpp_int rne_rat(const cpp_int& n, const cpp_int& d) {
  cpp_int q, r;
  mp::divide_qr(n, d, q, r);
  if (r < 0) { q -= 1; r += d; }  // floor division
  const cpp_int twice = 2 * r;
  if (twice > d || (twice == d && (q & 1) != 0)) ++q;
  return q;
}
F pow2(int k) { return ldexp(F(1), k); }
cpp_int ipow2(int k) { return cpp_int(1) << k; }

std::string hex_u64(const cpp_int& v) {
  if (v < 0 || v >= ipow2(64)) fail("value does not fit u64");
  char buf[40];
  std::snprintf(buf, sizeof buf, "0x%016llXull", v.convert_to<unsigned long long>());
  return buf;
}
std::string dec_i64(const cpp_int& v) {
  if (v < -(ipow2(63) - 1) || v >= ipow2(63)) fail("value does not fit i64");
  char buf[48];
  std::snprintf(buf, sizeof buf, "%lldLL", v.convert_to<long long>());
  return buf;
}

struct Out {
  std::ostringstream s;
  void line(const std::string& t = "") { s << t << "\n"; }
  void scalar(const std::string& name, const std::string& value, const std::string& what) {
    s << "// " << what << "\n#define " << name << " " << value << "\n";
  }
  void table(const std::string& name, const std::vector<std::string>& values, int per_line,
             const std::string& what) {
    s << "// " << what << "\n#define " << name << " { \\\n";
    for (size_t i = 0; i < values.size(); ++i) {
      if (i % per_line == 0) s << "  ";
      s << values[i];
      if (i + 1 < values.size()) s << ",";
      if (i % per_line == static_cast<size_t>(per_line - 1) || i + 1 == values.size()) s << " \\\n";
      else s << " ";
    }
    s << "}\n";
  }
};

// ---- Paley Hadamard matrices ----
using Mat = std::vector<std::vector<int>>;

int legendre(int a, int q) {
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  for (int x = 1; x < q; ++x)
    if ((x * x) % q == a) return 1;
  return -1;
}
// Jacobsthal matrix Q[a][b] = chi(a - b), a, b in GF(q) = 0..q-1 in natural order.
Mat jacobsthal(int q) {
  Mat Q(q, std::vector<int>(q));
  for (int a = 0; a < q; ++a)
    for (int b = 0; b < q; ++b) Q[a][b] = legendre(a - b, q);
  return Q;
}
// Paley construction I, q = 3 mod 4: H = I + S, S = [[0, 1^T], [-1, Q]], order q+1.
Mat paley1(int q) {
  const Mat Q = jacobsthal(q);
  const int n = q + 1;
  Mat H(n, std::vector<int>(n));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      int s;
      if (i == 0 && j == 0) s = 0;
      else if (i == 0) s = 1;
      else if (j == 0) s = -1;
      else s = Q[i - 1][j - 1];
      H[i][j] = s + (i == j ? 1 : 0);
    }
  return H;
}
// Paley construction II, q = 1 mod 4: S = [[0, 1^T], [1, Q]] (symmetric), order
// 2(q+1): each 0 of S becomes [[1,-1],[-1,-1]], each +-1 becomes +-[[1,1],[1,-1]].
Mat paley2(int q) {
  const Mat Q = jacobsthal(q);
  const int m = q + 1, n = 2 * m;
  Mat H(n, std::vector<int>(n));
  for (int A = 0; A < m; ++A)
    for (int B = 0; B < m; ++B) {
      int s;
      if (A == 0 && B == 0) s = 0;
      else if (A == 0 || B == 0) s = 1;
      else s = Q[A - 1][B - 1];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          int e;
          if (s == 0) e = (a == 0 && b == 0) ? 1 : -1;
          else e = s * ((a == 1 && b == 1) ? -1 : 1);
          H[2 * A + a][2 * B + b] = e;
        }
    }
  return H;
}
void verify_hadamard(const Mat& H, const std::string& name) {
  const int n = static_cast<int>(H.size());
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      if (H[i][j] != 1 && H[i][j] != -1) fail(name + ": entry not +-1");
      int dot = 0;
      for (int k = 0; k < n; ++k) dot += H[i][k] * H[j][k];
      if (dot != (i == j ? n : 0)) fail(name + ": H H^T != n I");
    }
}
bool symmetric(const Mat& H) {
  for (size_t i = 0; i < H.size(); ++i)
    for (size_t j = 0; j < H.size(); ++j)
      if (H[i][j] != H[j][i]) return false;
  return true;
}
std::vector<std::string> row_masks(const Mat& H) {
  std::vector<std::string> v;
  for (const auto& row : H) {
    unsigned mask = 0;
    for (size_t j = 0; j < row.size(); ++j)
      if (row[j] < 0) mask |= 1u << j;
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%08Xu", mask);
    v.push_back(buf);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) fail("usage: kvsim_gen_tables [output path]");
  const F ln2 = log(F(2));
  const F log2e = 1 / ln2;
  Out o;
  o.line("// reference/fixed/tables.inc: constants and tables of the fixed-point core.");
  o.line("// GENERATED by kvsim_gen_tables (reference/fixed/gen/gen_tables.cpp); do not edit.");
  o.line("// Reals are computed in cpp_bin_float_100 and rounded once, half to even.");
  o.line("// Q.f means value = integer * 2^-f.");
  o.line("#ifndef KVSIM_FX_TABLES_INC");
  o.line("#define KVSIM_FX_TABLES_INC");
  o.line();

  // ---- constants ----
  o.scalar("KVSIM_FX_LN2_Q64", hex_u64(rne(ln2 * pow2(64))), "ln(2) in Q.64, u64");
  o.scalar("KVSIM_FX_LN2_Q63", hex_u64(rne(ln2 * pow2(63))), "ln(2) in Q.63, u64");
  o.scalar("KVSIM_FX_LOG2E_Q62", dec_i64(rne(log2e * pow2(62))), "log2(e) in Q.62, i64");
  {
    // log2(e) = (HI + LO * 2^-64) * 2^-63, HI = floor(log2e * 2^63), LO = RNE of the rest.
    const F t = log2e * pow2(63);
    const cpp_int hi = floor(t).convert_to<cpp_int>();
    const cpp_int lo = rne((t - F(hi)) * pow2(64));
    o.scalar("KVSIM_FX_LOG2E_HI_Q63", hex_u64(hi), "floor(log2(e) * 2^63), u64");
    o.scalar("KVSIM_FX_LOG2E_LO_Q127", hex_u64(lo),
             "RNE((log2(e) * 2^63 - HI) * 2^64), u64: log2(e) = HI*2^-63 + LO*2^-127");
  }
  o.line();

  // ---- exp2 of a fraction f in [0,1), f = i/2^8 + j/2^16 + r/2^64 (r < 2^48) ----
  {
    std::vector<std::string> t1, t2;
    for (int i = 0; i < 256; ++i) t1.push_back(hex_u64(rne((exp(F(i) / 256 * ln2) - 1) * pow2(64))));
    for (int j = 0; j < 256; ++j)
      t2.push_back(hex_u64(rne((exp(F(j) / 65536 * ln2) - 1) * pow2(64))));
    o.table("KVSIM_FX_EXP2_T1_Q64", t1, 4, "2^(i/2^8) - 1 in Q.64, u64, i = 0..255");
    o.table("KVSIM_FX_EXP2_T2_Q64", t2, 4, "2^(j/2^16) - 1 in Q.64, u64, j = 0..255");
    std::vector<std::string> c;
    F fact = 1, p = 1;
    for (int k = 1; k <= 3; ++k) {
      fact *= k;
      p *= ln2;
      c.push_back(hex_u64(rne(p / fact * pow2(64))));
    }
    o.table("KVSIM_FX_EXP2_POLY_Q64", c, 4,
            "ln(2)^k / k! in Q.64, u64, k = 1..3: 2^u - 1 = sum c_k u^k, u < 2^-16");
  }
  o.line();

  // ---- log2 of a mantissa m in [1,2): m = (1 + i/2^8 + ...), R_i ~ 1/(1 + (i+1/2)/2^8) ----
  {
    std::vector<std::string> r, l;
    for (int i = 0; i < 256; ++i) {
      const cpp_int ri = rne_rat(ipow2(64) * 512, cpp_int(512 + 2 * i + 1));
      r.push_back(hex_u64(ri));
      const F rv = F(ri) / pow2(64);
      l.push_back(hex_u64(rne(-log(rv) / ln2 * pow2(64))));
    }
    o.table("KVSIM_FX_LOG2_R_Q64", r, 4, "R_i = RNE(2^64 * 512 / (513 + 2i)), Q.64, u64, i = 0..255");
    o.table("KVSIM_FX_LOG2_L_Q64", l, 4, "-log2(R_i * 2^-64) in Q.64, u64, i = 0..255");
    std::vector<std::string> d;
    for (int k = 1; k <= 6; ++k) {
      const F v = F(k % 2 == 1 ? 1 : -1) / (F(k) * ln2);
      d.push_back(dec_i64(rne(v * pow2(62))));
    }
    o.table("KVSIM_FX_LOG2_POLY_Q62", d, 3,
            "(-1)^(k+1) / (k ln 2) in Q.62, i64, k = 1..6: log2(1+z) = sum d_k z^k");
  }
  o.line();

  // ---- pinned Hadamard matrices (bit j of row i set <=> H[i][j] = -1) ----
  {
    const Mat h12 = paley1(11), h20 = paley1(19), h28 = paley2(13);
    verify_hadamard(h12, "H12");
    verify_hadamard(h20, "H20");
    verify_hadamard(h28, "H28");
    if (symmetric(h12) || symmetric(h20) || !symmetric(h28)) fail("unexpected symmetry");
    o.table("KVSIM_FX_HADAMARD12", row_masks(h12), 4,
            "H12: Paley I, q = 11 (not symmetric; H + H^T = 2I). Row masks, bit j <=> -1");
    o.table("KVSIM_FX_HADAMARD20", row_masks(h20), 4,
            "H20: Paley I, q = 19 (not symmetric; H + H^T = 2I). Row masks, bit j <=> -1");
    o.table("KVSIM_FX_HADAMARD28", row_masks(h28), 4,
            "H28: Paley II, q = 13 (symmetric). Row masks, bit j <=> -1");
  }
  o.line();
  o.line("#endif  // KVSIM_FX_TABLES_INC");

  const std::string text = o.s.str();
  if (argc == 2) {
    std::ofstream f(argv[1], std::ios::binary);
    if (!f) fail(std::string("cannot open ") + argv[1]);
    f << text;
    if (!f) fail(std::string("cannot write ") + argv[1]);
  } else {
    std::cout << text;
  }
  return 0;
}

// Shared by the CPU kernels of involution_cpu.cpp and kernel_generator_cpu.cpp.
#pragma once

#include <cstdint>

namespace bivol {

constexpr int64_t V = 8;  // output columns per register block (one AVX2 / half an AVX-512 vector of floats)

inline int64_t round_up(int64_t n) { return (n + V - 1) / V * V; }
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }  // b > 0

}  // namespace bivol

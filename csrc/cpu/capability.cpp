// Which copy of the vectorized CPU kernels runs (see kernels.h), and the ganfast_cpu:: ops that
// report and change it:
//   ganfast_cpu::capabilities() -> str[]   those this build has and this CPU supports, best last
//   ganfast_cpu::capability() -> str       the one in use
//   ganfast_cpu::set_capability(str)       switch (tests run the kernel tests on every path)
//   ganfast_cpu::intra_op_parallel() -> bool  whether at::parallel_for in this build uses threads
//   ganfast_cpu::nontemporal_min_bytes() -> int, set_nontemporal_min_bytes(int)  the size from
//       which outputs go around the caches (kernels.h; tests set 0 to run every path on small shapes)
// At load the best supported one is chosen, lowered to GANFAST_CPU_CAPABILITY when that is set
// (default|avx2|avx512, as PyTorch's ATEN_CPU_CAPABILITY). The check is cpuid, through GCC/Clang's
// __builtin_cpu_supports: the same ISA extensions the copies were compiled with (setup.py).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "kernels.h"

namespace ganfast {
namespace {

const char* const kNames[] = {"default", "avx2", "avx512"};

bool cpu_supports(CpuCapability c) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  switch (c) {
    case CpuCapability::Default: return true;
    case CpuCapability::Avx2:
#ifdef GANFAST_HAVE_AVX2
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case CpuCapability::Avx512:
#ifdef GANFAST_HAVE_AVX512
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
#else
      return false;
#endif
  }
  return false;
#else
  return c == CpuCapability::Default;
#endif
}

CpuCapability best_supported(CpuCapability at_most) {
  for (int c = int(at_most); c > 0; --c)
    if (cpu_supports(CpuCapability(c))) return CpuCapability(c);
  return CpuCapability::Default;
}

int parse(const std::string& name) {
  for (int c = 0; c < 3; ++c)
    if (name == kNames[c]) return c;
  return -1;
}

CpuCapability initial_capability() {
  const char* env = std::getenv("GANFAST_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best_supported(CpuCapability::Avx512);
  const int wanted = parse(env);
  if (wanted < 0) {
    LOG(WARNING) << "ganfast: GANFAST_CPU_CAPABILITY=" << env
                 << " is not one of default, avx2, avx512; using the best this CPU supports";
    return best_supported(CpuCapability::Avx512);
  }
  const CpuCapability got = best_supported(CpuCapability(wanted));
  if (int(got) != wanted)
    LOG(WARNING) << "ganfast: GANFAST_CPU_CAPABILITY=" << env << " is not supported here; using " << kNames[int(got)];
  return got;
}

std::atomic<int>& active() {
  static std::atomic<int> capability{int(initial_capability())};
  return capability;
}

std::vector<std::string> capabilities_op() {
  std::vector<std::string> out;
  for (int c = 0; c < 3; ++c)
    if (cpu_supports(CpuCapability(c))) out.emplace_back(kNames[c]);
  return out;
}

std::string capability_op() { return kNames[active().load()]; }

void set_capability_op(std::string name) {
  const int c = parse(name);
  TORCH_CHECK(c >= 0, "ganfast_cpu::set_capability: unknown capability '", name,
              "'; choose from default, avx2, avx512");
  TORCH_CHECK(cpu_supports(CpuCapability(c)), "ganfast_cpu::set_capability: '", name,
              "' is not available (this build or this CPU lacks it)");
  active().store(c);
}

// With ATen's OpenMP backend, at::parallel_for is a header template around `#pragma omp parallel`:
// compiled without -fopenmp (setup.py's openmp_flags) it silently runs the whole range on one thread.
bool intra_op_parallel_op() {
#ifdef INTRA_OP_PARALLEL
  return true;
#else
  return false;
#endif
}

// The largest unified cache CPU 0 has, in bytes, from Linux's sysfs (0 when not found). sysconf's
// _SC_LEVEL3_CACHE_SIZE is no substitute: glibc reports the whole package's L3 there (256 MiB on the
// EPYC whose cores share 16 MiB).
int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream type_file(dir + "type"), size_file(dir + "size");
    std::string type, size;
    if (!(type_file >> type) || !(size_file >> size)) break;
    if (type != "Unified" || size.empty()) continue;
    int64_t bytes = 0;
    try {
      bytes = std::stoll(size);
    } catch (const std::exception&) {
      continue;
    }
    const char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    if (unit == 'M') bytes <<= 20;
    best = std::max(best, bytes);
  }
  return best;
}

std::atomic<int64_t>& nontemporal_from() {
  static std::atomic<int64_t> bytes{[] {
    const int64_t cache = last_level_cache_bytes();
    return cache > 0 ? cache / 2 : int64_t(16) << 20;
  }()};
  return bytes;
}

int64_t nontemporal_min_bytes_op() { return nontemporal_from().load(); }

void set_nontemporal_min_bytes_op(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "ganfast_cpu::set_nontemporal_min_bytes: bytes must be >= 0, got ", bytes);
  nontemporal_from().store(bytes);
}

}  // namespace

int64_t nontemporal_min_bytes() { return nontemporal_from().load(std::memory_order_relaxed); }

CpuCapability cpu_capability() { return CpuCapability(active().load(std::memory_order_relaxed)); }

TORCH_LIBRARY(ganfast_cpu, m) {
  m.def("capabilities() -> str[]", &capabilities_op);
  m.def("capability() -> str", &capability_op);
  m.def("set_capability(str name) -> ()", &set_capability_op);
  m.def("intra_op_parallel() -> bool", &intra_op_parallel_op);
  m.def("nontemporal_min_bytes() -> int", &nontemporal_min_bytes_op);
  m.def("set_nontemporal_min_bytes(int bytes) -> ()", &set_nontemporal_min_bytes_op);
}

}  // namespace ganfast

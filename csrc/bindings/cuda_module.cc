// pybind11 glue for pyserve._cuda: batched KV swap / block copy and stream-ordering helpers.
//
// Everything crosses the boundary as plain integers: device and host addresses (e.g. a torch
// tensor's data_ptr()), stream handles (e.g. torch.cuda.Stream.cuda_stream; 0 = the legacy
// default stream). No libtorch. The GIL is released around every CUDA call.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "block_copy.h"
#include "kv_swap.h"

namespace py = pybind11;
using pyserve::cuda::KvSwapper;
using pyserve::cuda::StreamFence;

namespace {

cudaStream_t AsStream(uint64_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Returns `pairs` as a C-contiguous int32 [n, 2] array, or throws ValueError naming the problem.
py::array_t<int32_t, py::array::c_style> AsPairs(const py::array& pairs, const char* name) {
  if (!pairs.dtype().is(py::dtype::of<int32_t>())) {
    throw std::invalid_argument(std::string(name) + " must be an int32 array, got dtype " +
                                std::string(py::str(pairs.dtype())));
  }
  const bool empty = pairs.size() == 0;
  if (!empty && (pairs.ndim() != 2 || pairs.shape(1) != 2)) {
    throw std::invalid_argument(std::string(name) + " must have shape [n, 2]");
  }
  return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(pairs);
}

// Runs one KvSwapper method on validated pairs with the GIL released.
template <void (KvSwapper::*Method)(const int32_t*, int64_t, cudaStream_t)>
void CallWithPairs(KvSwapper& self, const py::array& pairs, uint64_t stream, const char* name) {
  const auto arr = AsPairs(pairs, name);
  const int32_t* data = arr.size() == 0 ? nullptr : arr.data();
  const int64_t n = arr.size() / 2;
  py::gil_scoped_release release;
  (self.*Method)(data, n, AsStream(stream));
}

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // NOTE: no driver / no device is not an error here: report 0 devices.
    return 0;
  }
  return count;
}

int RuntimeVersion() {
  int v = 0;
  pyserve::cuda::CheckCuda(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

int DriverVersion() {
  int v = 0;
  pyserve::cuda::CheckCuda(cudaDriverGetVersion(&v), "cudaDriverGetVersion");
  return v;
}

void BindSwapper(py::module_& m) {
  py::class_<KvSwapper>(m, "KvSwapper",
                        "Moves KV blocks of every layer in one kernel launch per call.")
      .def(py::init<const std::vector<uint64_t>&, const std::vector<uint64_t>&, int64_t, int64_t,
                    int64_t, int>(),
           py::arg("gpu_bases"), py::arg("cpu_bases"), py::arg("block_bytes"),
           py::arg("num_gpu_blocks"), py::arg("num_cpu_blocks"), py::arg("device"),
           py::call_guard<py::gil_scoped_release>(),
           "Per-layer base addresses of the GPU caches and of the pinned CPU pool (may be "
           "empty); bytes of one block of one layer; block counts; CUDA device ordinal.")
      .def(
          "swap_out",
          [](KvSwapper& s, const py::array& pairs, uint64_t stream) {
            CallWithPairs<&KvSwapper::SwapOut>(s, pairs, stream, "swap_out pairs");
          },
          py::arg("pairs"), py::arg("stream") = 0,
          "Copies (gpu_block, cpu_block) pairs GPU -> CPU on `stream` (asynchronous).")
      .def(
          "swap_in",
          [](KvSwapper& s, const py::array& pairs, uint64_t stream) {
            CallWithPairs<&KvSwapper::SwapIn>(s, pairs, stream, "swap_in pairs");
          },
          py::arg("pairs"), py::arg("stream") = 0,
          "Copies (cpu_block, gpu_block) pairs CPU -> GPU on `stream` (asynchronous).")
      .def(
          "copy",
          [](KvSwapper& s, const py::array& pairs, uint64_t stream) {
            CallWithPairs<&KvSwapper::Copy>(s, pairs, stream, "copy pairs");
          },
          py::arg("pairs"), py::arg("stream") = 0,
          "Copies (src_gpu_block, dst_gpu_block) pairs on the GPU (copy-on-write).")
      .def(
          "swap_out_per_block",
          [](KvSwapper& s, const py::array& pairs, uint64_t stream) {
            CallWithPairs<&KvSwapper::SwapOutPerBlock>(s, pairs, stream, "swap_out pairs");
          },
          py::arg("pairs"), py::arg("stream") = 0,
          "Baseline: one cudaMemcpyAsync per block per layer, GPU -> CPU.")
      .def(
          "swap_in_per_block",
          [](KvSwapper& s, const py::array& pairs, uint64_t stream) {
            CallWithPairs<&KvSwapper::SwapInPerBlock>(s, pairs, stream, "swap_in pairs");
          },
          py::arg("pairs"), py::arg("stream") = 0,
          "Baseline: one cudaMemcpyAsync per block per layer, CPU -> GPU.")
      .def_property_readonly("num_layers", &KvSwapper::num_layers)
      .def_property_readonly("block_bytes", &KvSwapper::block_bytes)
      .def_property_readonly("num_gpu_blocks", &KvSwapper::num_gpu_blocks)
      .def_property_readonly("num_cpu_blocks", &KvSwapper::num_cpu_blocks)
      .def_property_readonly("device", &KvSwapper::device);
}

void BindFence(py::module_& m) {
  const auto release = py::call_guard<py::gil_scoped_release>();
  py::class_<StreamFence>(m, "StreamFence", "One CUDA event used to order two streams.")
      .def(py::init<>(), release)
      .def(
          "record", [](StreamFence& f, uint64_t s) { f.Record(AsStream(s)); }, py::arg("stream"),
          release, "Marks the point reached by the work queued so far on `stream`.")
      .def(
          "wait", [](StreamFence& f, uint64_t s) { f.Wait(AsStream(s)); }, py::arg("stream"),
          release, "Makes `stream`'s later work wait (on the GPU) for the recorded point.")
      .def("synchronize", &StreamFence::Synchronize, release,
           "Blocks the host until the recorded point is reached.")
      .def("query", &StreamFence::Query, release, "True when the recorded point was reached.");
  m.def(
      "stream_wait_stream",
      [](uint64_t waiting, uint64_t signalling, StreamFence& fence) {
        pyserve::cuda::StreamWaitStream(AsStream(waiting), AsStream(signalling), fence);
      },
      py::arg("waiting"), py::arg("signalling"), py::arg("fence"), release,
      "Makes `waiting` wait for all work queued so far on `signalling`, using `fence`.");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyserve CUDA kernels: batched KV swap, block copy, stream ordering";
  m.attr("MAX_PAIRS_PER_LAUNCH") = pyserve::cuda::kMaxPairsPerLaunch;
  BindSwapper(m);
  BindFence(m);
  m.def("device_count", &DeviceCount, py::call_guard<py::gil_scoped_release>(),
        "Number of CUDA devices (0 when no driver or device).");
  m.def("runtime_version", &RuntimeVersion, "CUDA runtime version, e.g. 13000.");
  m.def("driver_version", &DriverVersion, "CUDA driver version (0 when no driver).");
}

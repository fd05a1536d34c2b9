// pybind11 glue for the CPU paged-attention kernels (csrc/kernels): pyserve._core.attention.
// Conversions and buffer checks only: the kernels validate indices themselves. Takes numpy
// arrays (torch: tensor.numpy(); bfloat16 as tensor.view(torch.int16).numpy()), never copies
// them, and releases the GIL while the kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "paged_attention.h"

namespace py = pybind11;
using pyserve::kernels::KvDtype;

namespace {

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// float32 → kF32; 2-byte integers (bfloat16 bit patterns) → kBF16.
KvDtype dtype_of(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) return KvDtype::kF32;
  if ((dt.kind() == 'i' || dt.kind() == 'u') && dt.itemsize() == 2) return KvDtype::kBF16;
  throw py::type_error(std::string(name) +
                       " must be float32 or bfloat16 bits (int16/uint16), got " +
                       std::string(py::str(dt)));
}

void check_array(const py::array& a, const char* name, py::ssize_t ndim, bool writeable = false) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) +
                          " dimensions, got shape " + shape_of(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writeable && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
}

template <typename T>
const T* index_array(const py::array& a, const char* name, py::ssize_t size) {
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().itemsize() != sizeof(T))
    throw py::type_error(std::string(name) + " must be " + (sizeof(T) == 4 ? "int32" : "int64") +
                         ", got " + std::string(py::str(a.dtype())));
  check_array(a, name, 1);
  if (size >= 0 && a.shape(0) != size)
    throw py::value_error(std::string(name) + " must have " + std::to_string(size) +
                          " entries, got " + std::to_string(a.shape(0)));
  return static_cast<const T*>(a.data());
}

void check_same_dtype(const py::array& a, const char* name, KvDtype want) {
  if (dtype_of(a, name) != want || a.dtype().itemsize() != (want == KvDtype::kF32 ? 4 : 2))
    throw py::type_error(std::string(name) + " has dtype " + std::string(py::str(a.dtype())) +
                         ", not the dtype of the other buffers");
}

void check_cache(const py::array& kv, KvDtype dtype, py::ssize_t heads_kv, py::ssize_t dim) {
  check_array(kv, "kv_cache", 5);
  check_same_dtype(kv, "kv_cache", dtype);
  if (kv.shape(1) != 2 || (heads_kv >= 0 && kv.shape(3) != heads_kv) || kv.shape(4) != dim)
    throw py::value_error("kv_cache must be [num_blocks, 2, block_size, " +
                          (heads_kv >= 0 ? std::to_string(heads_kv) : std::string("H_kv")) + ", " +
                          std::to_string(dim) + "], got " + shape_of(kv));
}

void paged_attention(const py::array& q, const py::array& kv, py::array& out,
                     const py::array& qo_indptr, const py::array& kv_indptr,
                     const py::array& kv_indices, const py::array& seq_lens, float scale,
                     int num_threads) {
  const KvDtype dtype = dtype_of(q, "q");
  check_array(q, "q", 3);
  check_array(out, "out", 3, true);
  check_same_dtype(out, "out", dtype);
  if (shape_of(out) != shape_of(q))
    throw py::value_error("out shape " + shape_of(out) + " != q shape " + shape_of(q));
  check_cache(kv, dtype, -1, q.shape(2));
  if (qo_indptr.ndim() != 1 || qo_indptr.shape(0) < 1)
    throw py::value_error("qo_indptr must be 1-d with num_seqs + 1 >= 1 entries");
  pyserve::kernels::PagedAttentionArgs a;
  a.num_seqs = qo_indptr.shape(0) - 1;
  a.qo_indptr = index_array<int32_t>(qo_indptr, "qo_indptr", -1);
  a.kv_indptr = index_array<int32_t>(kv_indptr, "kv_indptr", a.num_seqs + 1);
  a.seq_lens = index_array<int32_t>(seq_lens, "seq_lens", a.num_seqs);
  a.kv_indices = index_array<int32_t>(kv_indices, "kv_indices", -1);
  a.num_indices = kv_indices.shape(0);
  a.q = q.data();
  a.kv = kv.data();
  a.out = out.mutable_data();
  a.num_tokens = q.shape(0);
  a.num_q_heads = int32_t(q.shape(1));
  a.head_dim = int32_t(q.shape(2));
  a.num_blocks = kv.shape(0);
  a.block_size = int32_t(kv.shape(2));
  a.num_kv_heads = int32_t(kv.shape(3));
  a.scale = scale;
  a.dtype = dtype;
  py::gil_scoped_release release;
  pyserve::kernels::paged_attention(a, num_threads);
}

void write_kv(py::array& kv, const py::array& k, const py::array& v,
              const py::array& slot_mapping) {
  const KvDtype dtype = dtype_of(k, "k");
  check_array(k, "k", 3);
  check_array(v, "v", 3);
  check_same_dtype(v, "v", dtype);
  if (shape_of(v) != shape_of(k))
    throw py::value_error("v shape " + shape_of(v) + " != k shape " + shape_of(k));
  check_cache(kv, dtype, k.shape(1), k.shape(2));
  if (!kv.writeable()) throw py::value_error("kv_cache is read-only");
  pyserve::kernels::WriteKvArgs a;
  a.slot_mapping = index_array<int64_t>(slot_mapping, "slot_mapping", k.shape(0));
  a.kv = kv.mutable_data();
  a.k = k.data();
  a.v = v.data();
  a.num_tokens = k.shape(0);
  a.num_blocks = kv.shape(0);
  a.block_size = int32_t(kv.shape(2));
  a.num_kv_heads = int32_t(k.shape(1));
  a.head_dim = int32_t(k.shape(2));
  a.dtype = dtype;
  py::gil_scoped_release release;
  pyserve::kernels::write_kv(a);
}

}  // namespace

void bind_attention(py::module_& parent) {
  py::module_ m = parent.def_submodule("attention", "CPU paged attention kernels (csrc/kernels)");
  m.def("paged_attention", &paged_attention, py::arg("q"), py::arg("kv_cache"), py::arg("out"),
        py::arg("qo_indptr"), py::arg("kv_indptr"), py::arg("kv_indices"), py::arg("seq_lens"),
        py::arg("scale"), py::arg("num_threads") = 1,
        "Causal paged attention of one layer into `out` (see csrc/kernels/paged_attention.h).");
  m.def("write_kv", &write_kv, py::arg("kv_cache"), py::arg("k"), py::arg("v"),
        py::arg("slot_mapping"), "Writes k/v rows into the cache at slot_mapping.");
  m.def("isa", &pyserve::kernels::current_isa, "Vector ISA in use: avx512, avx2 or generic.");
  m.def(
      "set_isa", [](const std::string& name) { pyserve::kernels::set_isa(name.c_str()); },
      py::arg("name"), "Forces auto, generic, avx2 or avx512 (ValueError if unsupported).");
}

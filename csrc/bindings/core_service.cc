// pybind11 glue for the gittins size distribution (pyserve._core.ServiceDistribution) and the
// program table's instance of it (ProgramTable.service). Conversions only.
#include <pybind11/pybind11.h>

#include <memory>

#include "pyserve/program_table.h"
#include "pyserve/service_distribution.h"

namespace py = pybind11;
using namespace pyserve;

void bind_service(py::module_& m) {
  py::class_<ServiceDistribution>(m, "ServiceDistribution")
      .def(py::init<double>(), py::arg("half_life") = 500.0)
      .def("observe", &ServiceDistribution::observe, py::arg("klass"), py::arg("size"),
           py::arg("weight") = 1.0,
           "Record a completed program's size (seconds); klass < 0: pooled")
      .def("rank", &ServiceDistribution::rank, py::arg("klass"), py::arg("attained"),
           "Gittins rank (1 / index, seconds; lower runs earlier) of attained service")
      .def("count", &ServiceDistribution::count, py::arg("klass"))
      .def_property_readonly("version", &ServiceDistribution::version)
      .def_property_readonly_static("bins", [](py::object) { return ServiceHistogram::kBins; })
      .def_static("edge", &ServiceHistogram::edge, py::arg("k"))
      .def_static("bin_of", &ServiceHistogram::bin_of, py::arg("size"));
  auto table = py::reinterpret_borrow<py::class_<ProgramTable, std::shared_ptr<ProgramTable>>>(
      m.attr("ProgramTable"));
  table.def_property_readonly(
      "service", [](ProgramTable& t) -> ServiceDistribution& { return t.service(); },
      py::return_value_policy::reference_internal);
}

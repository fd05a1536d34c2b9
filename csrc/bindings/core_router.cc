// pybind11 glue for the program-aware load balancer (pyserve._core.LoadBalancer). Conversions
// only; the decision logic lives in csrc/core/load_balancer.cc.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "pyserve/load_balancer.h"

namespace py = pybind11;
using namespace pyserve;

namespace {

py::dict engine_dict(const LoadBalancer& lb, int e) {
  const EngineLoad& s = lb.engine(e);
  py::dict d;
  d["alive"] = s.alive;
  d["calls"] = s.calls;
  d["queued"] = s.queued;
  d["queued_blocks"] = s.queued_blocks;
  d["free_blocks"] = s.free_blocks;
  d["total_blocks"] = s.total_blocks;
  d["routed"] = s.routed;
  d["load"] = lb.load(e);
  return d;
}

}  // namespace

void bind_router(py::module_& m) {
  py::class_<RouterConfig>(m, "RouterConfig")
      .def(py::init<>())
      .def_readwrite("policy", &RouterConfig::policy)
      .def_readwrite("load_signal", &RouterConfig::load_signal)
      .def_readwrite("short_call_tokens", &RouterConfig::short_call_tokens)
      .def_readwrite("block_size", &RouterConfig::block_size)
      .def("validate", &RouterConfig::validate);

  py::class_<LoadBalancer>(m, "LoadBalancer")
      .def(py::init<const RouterConfig&, int, std::shared_ptr<ProgramTable>>(), py::arg("config"),
           py::arg("num_engines"), py::arg("programs") = nullptr)
      .def("route", &LoadBalancer::route, py::arg("call_id"), py::arg("program_id"),
           py::arg("prompt_tokens"))
      .def("started", &LoadBalancer::started, py::arg("call_id"))
      .def("finished", &LoadBalancer::finished, py::arg("call_id"))
      .def("report", &LoadBalancer::report, py::arg("engine"), py::arg("free_blocks"),
           py::arg("total_blocks"))
      .def("mark_dead", &LoadBalancer::mark_dead, py::arg("engine"))
      .def("forget_program", &LoadBalancer::forget_program, py::arg("program_id"))
      .def("collect", &LoadBalancer::collect)
      .def_property_readonly("num_engines", &LoadBalancer::num_engines)
      .def_property_readonly("num_alive", &LoadBalancer::num_alive)
      .def_property_readonly("num_calls", &LoadBalancer::num_calls)
      .def_property_readonly("num_sticky", &LoadBalancer::num_sticky)
      .def("alive", [](const LoadBalancer& lb, int e) { return lb.engine(e).alive; })
      .def("engine", &engine_dict, py::arg("engine"))
      .def("engine_of", &LoadBalancer::engine_of, py::arg("call_id"))
      .def("sticky_engine", &LoadBalancer::sticky_engine, py::arg("program_id"))
      .def("load", &LoadBalancer::load, py::arg("engine"))
      .def("check", &LoadBalancer::check);

  m.def("sync_program", &sync_program, py::arg("table"), py::arg("program_id"),
        py::arg("service"), py::arg("critical") = 0.0, py::arg("wait") = 0.0,
        py::arg("now") = 0.0);
  m.def("route_policy_names", &route_policy_names);
  // Accounting of a global table whose calls run in other processes (Ray replicas).
  m.def(
      "program_call_arrived",
      [](ProgramTable& t, const std::string& id, double now) {
        if (id.empty()) throw std::invalid_argument("program id must not be empty");
        t.call_arrived(id, now);
      },
      py::arg("table"), py::arg("program_id"), py::arg("now") = 0.0);
  m.def(
      "program_call_finished",
      [](ProgramTable& t, const std::string& id, double service, double wait, double now) {
        if (!(service >= 0.0) || !(wait >= 0.0))
          throw std::invalid_argument("call service and wait must be >= 0");
        t.call_finished(id, service, wait, now);
      },
      py::arg("table"), py::arg("program_id"), py::arg("service"), py::arg("wait") = 0.0,
      py::arg("now") = 0.0);
}

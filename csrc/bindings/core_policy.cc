// pybind11 glue for ProgramPolicy (pyserve._core.ProgramPolicy): the native policies and program
// table for a host scheduler that owns the KV cache. Conversions only; logic in
// csrc/core/program_policy.cc.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pyserve/program_policy.h"

namespace py = pybind11;
using namespace pyserve;

namespace {

void arrive(ProgramPolicy& p, const std::string& request_id, const std::string& program_id,
            double priority, double arrival_time, double ltr_score, double remaining_hint,
            double program_remaining_hint) {
  RequestSpec spec;
  spec.request_id = request_id;
  spec.program_id = program_id;
  spec.priority = priority;
  spec.arrival_time = arrival_time;
  spec.ltr_score = ltr_score;
  spec.remaining_hint = remaining_hint;
  spec.program_remaining_hint = program_remaining_hint;
  p.arrive(std::move(spec));
}

py::dict call_info(const ProgramPolicy& p, const std::string& id) {
  const Request& r = p.request(id);
  py::dict d;
  d["request_id"] = r.spec.request_id;
  d["status"] = status_name(r.status);
  d["primary"] = p.policy().primary(r);
  d["queue"] = r.queue;
  d["service"] = r.service;
  d["queue_service"] = r.queue_service;
  d["total_wait"] = r.total_wait;
  d["snapshot"] = r.snapshot;
  d["num_preemptions"] = r.num_preemptions;
  d["program_id"] = r.spec.program_id;
  return d;
}

}  // namespace

void bind_program_policy(py::module_& m) {
  py::class_<ProgramPolicy>(m, "ProgramPolicy",
                            "The native policy hooks and program table without an allocator.")
      .def(py::init<const SchedulerConfig&, std::shared_ptr<ProgramTable>>(), py::arg("config"),
           py::arg("programs") = nullptr)
      .def("arrive", &arrive, py::arg("request_id"), py::arg("program_id") = "",
           py::arg("priority") = 0.0, py::arg("arrival_time") = 0.0, py::arg("ltr_score") = 0.0,
           py::arg("remaining_hint") = -1.0, py::arg("program_remaining_hint") = -1.0)
      .def("started", &ProgramPolicy::started, py::arg("request_id"))
      .def("preempted", &ProgramPolicy::preempted, py::arg("request_id"))
      .def("begin_step", &ProgramPolicy::begin_step)
      .def("charge", &ProgramPolicy::charge, py::arg("ran"), py::arg("step_seconds"))
      .def("finish", &ProgramPolicy::finish, py::arg("request_id"))
      .def("primary", &ProgramPolicy::primary, py::arg("request_id"))
      .def("preempt_class", &ProgramPolicy::preempt_class, py::arg("request_id"))
      .def("info", &call_info, py::arg("request_id"))
      .def("__contains__", &ProgramPolicy::contains)
      .def("__len__", &ProgramPolicy::size)
      .def("advance_clock", &ProgramPolicy::advance_clock, py::arg("t"))
      .def_property_readonly("now", &ProgramPolicy::now)
      .def_property_readonly("step", &ProgramPolicy::step)
      .def_property_readonly("programs", &ProgramPolicy::program_table)
      .def_property_readonly("policy_name",
                             [](const ProgramPolicy& p) { return p.policy().name(); })
      .def_property_readonly("num_queues",
                             [](const ProgramPolicy& p) { return p.config().num_queues; });
}

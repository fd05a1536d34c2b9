"""Simulator pieces: cost model and presets, program traces, workload generators, calibration."""

from pyserve.sim.calibrate import CalibrationResult, fit_preset, load_step_log
from pyserve.sim.cost_model import CostModel, CostParams, HardwareSpec, ModelSpec, Preset
from pyserve.sim.presets import get_preset, load_preset, preset_names, save_preset
from pyserve.sim.trace import Call, Program, ProgramTokens, load_trace, write_trace
from pyserve.sim.workloads import WORKLOADS, generate, trace_stats

__all__ = [
    "WORKLOADS",
    "CalibrationResult",
    "Call",
    "CostModel",
    "CostParams",
    "HardwareSpec",
    "ModelSpec",
    "Preset",
    "Program",
    "ProgramTokens",
    "fit_preset",
    "generate",
    "get_preset",
    "load_preset",
    "load_step_log",
    "load_trace",
    "preset_names",
    "save_preset",
    "trace_stats",
    "write_trace",
]

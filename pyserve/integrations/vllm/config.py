"""The plugin's settings, read from vLLM's ``--additional-config '{"pyserve": {...}}'``.

Every key is either honoured or rejected with a ValueError that names it. Defaults are the native
engine's (csrc/include/pyserve/config.h), except ``policy`` which defaults to ``atlas``.
"""

from __future__ import annotations

from typing import Any

from pyserve import _core

# Policies whose key is an integer queue index: they map onto vLLM's integer request priority.
POLICIES = ("atlas", "plas", "mlfq")

# key -> (type, check, what the check means)
_FIELDS: dict[str, tuple[type, Any, str]] = {
    "policy": (str, lambda v: v in POLICIES, f"one of {', '.join(POLICIES)}"),
    "num_queues": (int, lambda v: 1 <= v <= 64, "an integer in [1, 64]"),
    "quantum_base": (float, lambda v: v > 0, "a number > 0 (seconds of service)"),
    "quantum_growth": (float, lambda v: v >= 1, "a number >= 1"),
    "starvation_beta": (float, lambda v: True, "a number (<= 0 disables anti-starvation)"),
    "program_ttl_s": (float, lambda v: v > 0, "a number > 0 (seconds)"),
    "max_preemptions_per_step": (int, lambda v: v >= 0, "an integer >= 0"),
    "min_steps_between_preemptions": (int, lambda v: v >= 0, "an integer >= 0"),
}


def _coerce(key: str, value: Any) -> Any:
    typ, ok, what = _FIELDS[key]
    if isinstance(value, bool) or not isinstance(value, (str,) if typ is str else (int, float)):
        raise ValueError(f"additional_config.pyserve.{key} must be {what}, got {value!r}")
    if typ is int and value != int(value):
        raise ValueError(f"additional_config.pyserve.{key} must be {what}, got {value!r}")
    value = typ(value)
    if not ok(value):
        raise ValueError(f"additional_config.pyserve.{key} must be {what}, got {value!r}")
    return value


def policy_config(additional_config: Any) -> _core.SchedulerConfig:
    """The native SchedulerConfig holding the policy fields of ``additional_config["pyserve"]``.

    Raises ValueError for an unknown key or a bad value (naming it) and TypeError when the
    section is not a JSON object.
    """
    section = {}
    if isinstance(additional_config, dict):
        section = additional_config.get("pyserve", {})
    if not isinstance(section, dict):
        raise TypeError(f"additional_config.pyserve must be a JSON object, got {section!r}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"additional_config.pyserve: unknown key(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(_FIELDS)}"
        )
    cfg = _core.SchedulerConfig()
    cfg.policy = "atlas"
    for key, value in section.items():
        setattr(cfg, key, _coerce(key, value))
    cfg.validate()
    return cfg

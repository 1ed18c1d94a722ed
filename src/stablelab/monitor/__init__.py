"""Monitor and guard: cheap stability signals inside any training loop, detectors that turn them
into events, and a guard that answers events with interventions (see docs/monitor.md)."""

from stablelab.monitor.attention import register_attention, register_attention_adapter
from stablelab.monitor.core import Monitor, find_logits_module
from stablelab.monitor.detectors import (DETECTORS, Detector, build_detectors, default_settings,
                                         register_detector)
from stablelab.monitor.events import Event, TrainingStopped
from stablelab.monitor.guard import INTERVENTIONS, Policy, Snapshot
from stablelab.monitor.incidents import Incident, IncidentTracker
from stablelab.monitor.log_folder import LogFolder
from stablelab.monitor.settings import MonitorSettings, OpposingCheck, SharpnessCheck
from stablelab.monitor.signal_registry import SIGNALS, Column, Signal, StepRecord, register_signal
from stablelab.monitor.sinks import ConsoleSink, MLflowSink, Sink, TensorBoardSink, WandbSink

__all__ = [
    "Monitor", "Incident", "IncidentTracker", "Event", "TrainingStopped", "Policy", "Snapshot", "DETECTORS", "INTERVENTIONS",
    "Detector", "build_detectors", "default_settings", "register_detector", "register_attention",
    "register_attention_adapter", "find_logits_module", "Sink", "LogFolder", "ConsoleSink",
    "TensorBoardSink", "WandbSink", "MLflowSink", "MonitorSettings", "SharpnessCheck", "OpposingCheck",
    "SIGNALS", "Signal", "Column", "StepRecord", "register_signal",
]

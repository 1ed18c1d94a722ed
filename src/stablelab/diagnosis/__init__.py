"""`stablelab diagnose PATH`: verdicts on the training logs a user already has (TensorBoard, a
Lightning CSVLogger metrics.csv, a Hugging Face trainer_state.json, an MLflow file-store run, a W&B
CSV/JSONL export). The logs are read into stablelab's signals (`stablelab.logs`), the monitor's
detectors run over the logged rows (`diagnosis.detect`), and each run gets the incidents, a verdict
and the same offline page as `stablelab report`.

    from stablelab import diagnose
    d = diagnose("lightning_logs/version_0")      # one run (a folder of several: .runs)
    d.verdict, d.incidents, d.signals_found, d.to_html("out")"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from stablelab.diagnosis.detect import Detection, detect
from stablelab.logs import LoggedRun, find_runs, parse_mapping, read_log

# how to log what a detector needs, per missing signal
HOW_TO_LOG = {
    "grad_norm": "log the global gradient norm (the value clip_grad_norm_ returns; HF Trainer logs grad_norm "
                 "by default; Lightning: self.log('grad_norm', ...))",
    "lr": "log the learning rate (Lightning: LearningRateMonitor; HF Trainer logs learning_rate)",
    "update_ratio_max": "attach stablelab.monitor.Monitor to log the update-to-weight ratio",
    "attn_logit_max": "attach stablelab.monitor.Monitor to log attention logits",
}


@dataclass
class Diagnosis:
    """One run's diagnosis: its `verdict` (one line), `incidents` (the monitor's incident fields),
    `signals_found` / `signals_missing`, `log_interval` (median steps between logged losses)."""

    run: LoggedRun
    detection: Detection
    notes: list[str] = field(default_factory=list)

    @property
    def incidents(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self.detection.incidents if i.severity != "info"]

    @property
    def signals_found(self) -> dict[str, str]:
        return {k: v for k, v in self.run.mapped.items() if k != "step"}

    @property
    def signals_missing(self) -> list[str]:
        return [s for s in ("loss", "grad_norm", "lr") if s not in self.run.series]

    @property
    def log_interval(self) -> int | None:
        return self.run.interval()

    @property
    def verdict(self) -> str:
        incidents = self.incidents
        if not incidents:
            return (f"nothing wrong found in {self.steps_logged()} logged steps "
                    f"(detectors on: {', '.join(self.detection.detectors_on)})")
        first = incidents[0]
        kinds = sorted({i["kind"] for i in incidents})
        return (f"{len(incidents)} incident(s) ({', '.join(kinds)}); first: {first['kind']} at step "
                f"{first['start']}: {first['first_message']}")

    def steps_logged(self) -> int:
        return len(self.run.series["loss"][0])

    def summary(self) -> dict[str, Any]:
        return {"source": str(self.run.source.path), "format": self.run.source.format, "verdict": self.verdict,
                "incidents": self.incidents, "signals_found": self.signals_found,
                "signals_missing": self.signals_missing, "log_interval": self.log_interval,
                "steps_logged": self.steps_logged(), "per_tensor_norms": sorted(self.run.tensors),
                "detectors_on": self.detection.detectors_on,
                "detectors_off": self.detection.detectors_off, "notes": self.notes}

    def to_html(self, out: str | Path) -> Path:
        from stablelab.diagnosis.page import write_page

        return write_page(self, Path(out))


@dataclass
class Diagnoses:
    """Several runs found under one path, diagnosed one by one."""

    runs: list[Diagnosis]

    def __iter__(self):
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)


def notes_for(run: LoggedRun) -> list[str]:
    notes = []
    for signal in ("grad_norm", "lr"):
        if signal not in run.series:
            notes.append(f"no {signal} logged: " + ("gradient detectors off; " if signal == "grad_norm" else "")
                         + HOW_TO_LOG[signal])
    if run.tensors:
        notes.append(f"per-tensor gradient norms of {len(run.tensors)} tensors logged: the monitor's per-tensor rules "
                     "(every tensor's norm at once, the per-tensor spike ratio) run on them")
    elif "grad_norm" in run.series:
        notes.append("no per-tensor gradient norms: the 'every tensor grew at once' reading is off (Lightning: "
                     "self.log_dict(lightning.pytorch.utilities.grad_norm(self, norm_type=2)) logs them)")
    if run.source.format == "hf":
        notes.append("the HF Trainer logs the mean loss over each logging interval: a one-step spike shows "
                     "divided by the interval; its logging_nan_inf_filter (on by default) leaves NaN losses out "
                     "of that mean (an interval of NaN losses logs 0.0), so NaNs show only in grad_norm")
    interval = run.interval()
    if interval and interval > 1:
        notes.append(f"logged every {interval} steps: the detectors see one value in {interval}; their warm-ups "
                     "span the same steps as live, their windows at least 32 logged values, their thresholds "
                     "are those calibrated for this interval, and a fault between two logged steps is not seen")
    return notes


def diagnose_run(run: LoggedRun, progress=None) -> Diagnosis:
    return Diagnosis(run, detect(run.series, progress=progress, interval=run.interval(), tensors=run.tensors),
                     notes_for(run))


def diagnose(path: str | Path, format: str | None = None, mapping: Sequence[str] | dict | None = None,
             progress=None) -> "Diagnosis | Diagnoses":
    """Diagnose the log(s) at `path`: one Diagnosis for one run, Diagnoses for a folder of several.
    mapping: {column: signal} or ["column=signal", ...] for columns the alias table does not know."""
    mapped = mapping if isinstance(mapping, dict) else parse_mapping(mapping)
    sources = find_runs(path, format)
    results = [diagnose_run(read_log(source, mapped), progress) for source in sources]
    return results[0] if len(results) == 1 else Diagnoses(results)


__all__ = ["Diagnosis", "Diagnoses", "diagnose", "diagnose_run"]

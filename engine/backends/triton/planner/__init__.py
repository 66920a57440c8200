"""The triton engine's planner, split by job:

- :mod:`.plan`: layer list -> :class:`Plan` (storage per value, in-place concats, merged 1x1
  heads, in-place residuals, one arena), the passes run in the order of ``_Planner.PASSES``;
- :mod:`.dependencies`: what each step reads and writes, the dependency DAG, its ancestor
  sets, and when each value is complete (shared by arena packing and the streams);
- :mod:`.streams`: the stream per launch and the event joins (:func:`plan_streams`);
- :mod:`.explain`: the printable plan (:func:`explain_plan`).
"""
from .dependencies import step_dependencies
from .explain import explain_plan
from .plan import ALIGN, FLOAT_DTYPES, MAX_HEADS, Buffer, Plan, Step, Value, build_plan
from .streams import MAX_STREAMS, Schedule, plan_streams

__all__ = ["ALIGN", "FLOAT_DTYPES", "MAX_HEADS", "MAX_STREAMS", "Buffer", "Plan", "Schedule", "Step", "Value",
           "build_plan", "explain_plan", "plan_streams", "step_dependencies"]

"""Schedules: loop transforms on tensor programs and per-target default rules.

from llm_deploy.compiler.schedule import transforms as tr
f = tr.split(f, "i", 8, tail="loop"); f = tr.parallel(f, "i_o"); f = tr.vectorize(f, "i_i")

schedule_cpu(f)            # the default CPU schedule of one PrimFunc, chosen by analysis
default_schedule(mod)      # the pass: every PrimFunc of a module (passes/schedule.py)
"""

from llm_deploy.compiler.schedule.analysis import FuncInfo, Nest, classify
from llm_deploy.compiler.schedule.ir import ScheduleError, unique_names
from llm_deploy.compiler.schedule.rules_cpu import CPUTarget, schedule_cpu

__all__ = ["CPUTarget", "FuncInfo", "Nest", "ScheduleError", "classify", "schedule_cpu", "unique_names"]

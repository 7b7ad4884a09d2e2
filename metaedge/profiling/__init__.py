"""Latency profiling of a bundle on the device: every stage, every backend, the conditions, and comparisons.

from metaedge.profiling import ProfileConfig, run_profile, write_report, compare_files
doc = run_profile(ProfileConfig(bundle="bundle/", checkpoint="runs/x"))   # JSON-ready dict
write_report(doc, "report/")                                              # report.md + PNG plots
"""

from metaedge.profiling.compare import compare_files, compare_profiles, load_profile
from metaedge.profiling.config import BACKEND_KINDS, ProfileConfig, ProfileError, parse_counts
from metaedge.profiling.profiler import run_profile
from metaedge.profiling.report import write_report
from metaedge.profiling.schema import SCHEMA_PATH, SCHEMA_VERSION, dumps, validate
from metaedge.profiling.stages import STAGES
from metaedge.profiling.table import print_comparison, print_profile

__all__ = [
    "BACKEND_KINDS", "SCHEMA_PATH", "SCHEMA_VERSION", "STAGES", "ProfileConfig", "ProfileError", "compare_files",
    "compare_profiles", "dumps", "load_profile", "parse_counts", "print_comparison", "print_profile", "run_profile",
    "validate", "write_report",
]  # fmt: skip

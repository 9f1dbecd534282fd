"""Test support shipped with the package: scripted faults at the server's send path.

`faults` holds the plan (`FaultPlan`, `Fault`); `seam` the handler that applies
it, which only a test configuration installs (`install_fault_seam`).
"""

from __future__ import annotations

from .faults import Fault, FaultKind, FaultPlan

__all__ = ["Fault", "FaultKind", "FaultPlan"]

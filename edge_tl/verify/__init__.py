"""Verification of every artifact against the original model (light to import)."""

from edge_tl.verify.api import VERIFIED_KINDS, VerifyConfig, VerifyReport, read_deploy_results, verify_run
from edge_tl.verify.metrics import Accuracy, AccuracyAccumulator, Agreement, AgreementAccumulator
from edge_tl.verify.report import VerifyRow, format_table

__all__ = [
    "VERIFIED_KINDS",
    "Accuracy",
    "AccuracyAccumulator",
    "Agreement",
    "AgreementAccumulator",
    "VerifyConfig",
    "VerifyReport",
    "VerifyRow",
    "format_table",
    "read_deploy_results",
    "verify_run",
]

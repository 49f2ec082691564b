"""``vlmtrain eval``: the eval split's token-weighted loss and the character error rate of generated answers."""

from vlmtrain.eval.cer import CerTotals, edit_distance
from vlmtrain.eval.command import EvalReport, run_eval

__all__ = ["CerTotals", "EvalReport", "edit_distance", "run_eval"]

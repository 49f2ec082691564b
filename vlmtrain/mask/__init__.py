"""Loss-mask rules over attributed tokens, the role_boundaries override, and the never-silent checks."""

from vlmtrain.mask.checks import EmptyMaskError, MaskIssues, find_issues, require_trained_tokens
from vlmtrain.mask.rules import MODES, TRAIN_ON_EOS, MaskRules, loss_mask

__all__ = ["MODES", "TRAIN_ON_EOS", "EmptyMaskError", "MaskIssues", "MaskRules", "find_issues", "loss_mask",
           "require_trained_tokens"]

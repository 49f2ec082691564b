"""Loss-mask rules over attributed rows, the never-silent checks, and the render -> mask pipeline."""

from vlmtrain.mask.checks import EmptyMaskError, MaskIssues, find_issues, require_trained_tokens
from vlmtrain.mask.pipeline import MaskedRenderer, make_renderer
from vlmtrain.mask.rules import MODES, TRAIN_ON_EOS, MaskRules, loss_mask

__all__ = ["MODES", "TRAIN_ON_EOS", "EmptyMaskError", "MaskIssues", "MaskRules", "MaskedRenderer", "find_issues",
           "loss_mask", "make_renderer", "require_trained_tokens"]

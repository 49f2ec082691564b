"""Test-only: let accelerate enable FSDP on the CPU (gloo), which it refuses outside GPU/accelerator backends.

FSDP2 itself runs on the CPU; accelerate's ``AcceleratorState`` only switches ``distributed_type`` to FSDP for
accelerator backends, so ``training.fsdp`` on the CPU would otherwise be refused (vlmtrain's
``sharding.check_enabled``). tests/test_sharded.py puts this directory on PYTHONPATH of its torchrun children
and sets ``VLMTRAIN_TEST_FSDP_ON_CPU=1``; nothing else ever imports it. It flips exactly that one switch.
``VLMTRAIN_TEST_NO_LM_HEAD_FIX=1`` also turns vlmtrain's FSDP2 lm_head fix off, to show the bug it fixes.
"""

import os

if os.environ.get("VLMTRAIN_TEST_FSDP_ON_CPU") == "1" and "LOCAL_RANK" in os.environ:
    import accelerate.state
    from accelerate.utils import DistributedType

    _init = accelerate.state.AcceleratorState.__init__

    def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):  # type: ignore[no-untyped-def]
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # Every later AcceleratorState() re-reads PartialState's type: keep the two in step.
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if os.environ.get("VLMTRAIN_TEST_NO_LM_HEAD_FIX") == "1" and "LOCAL_RANK" in os.environ:
    import vlmtrain.train.sharding

    vlmtrain.train.sharding.unshard_output_embeddings = lambda model: None

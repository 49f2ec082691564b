"""Checks of what a config needs from this machine, run by ``validate_for_fit`` before any model loads.

Loading a config stays cheap (``inspect-mask`` never imports torch); only these fit-time checks do, lazily.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vlmtrain.config.errors import ConfigError


def check_adapter_runtime(adapter_cfg: Any) -> None:
    """``adapter.type: qlora`` loads the model in 4 bit through bitsandbytes, which needs a CUDA GPU."""
    if adapter_cfg.type != "qlora":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "adapter.type: qlora needs bitsandbytes, which is not installed; "
            "pip install 'vlmtrain[gpu]' (or bitsandbytes), or set adapter.type: lora"
        )
    import torch  # lazily: seconds to import

    if not torch.cuda.is_available():
        raise ConfigError(
            "adapter.type: qlora needs a CUDA GPU and none is available here; "
            "run on a machine with a CUDA GPU, or set adapter.type: lora"
        )

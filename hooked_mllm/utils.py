"""TransformerLens' ``utils`` names typed from habit: ``from hooked_mllm import utils``.

Examples:
    >>> from hooked_mllm import utils
    >>> utils.get_act_name("resid_post", 3)
    'blocks.3.hook_resid_post'
"""

from __future__ import annotations

from .hook_points import act_name as get_act_name

__all__ = ["get_act_name"]

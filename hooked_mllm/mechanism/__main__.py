"""``python -m hooked_mllm.mechanism``: the pointing game on a toy checkpoint (hooked_mllm.toy.pointing)."""

from ..toy.pointing import main

raise SystemExit(main())

"""``python -m hooked_mllm.mechanism``: the pointing game on a toy checkpoint (see :func:`.pointing.main`)."""

from .pointing import main

raise SystemExit(main())

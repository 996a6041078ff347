"""The pointing game lives in :mod:`hooked_mllm.toy.pointing` (it knows the toy world); importable here."""

from ..toy.pointing import METHODS as METHODS
from ..toy.pointing import PointingResult as PointingResult
from ..toy.pointing import asked_object as asked_object
from ..toy.pointing import main as main
from ..toy.pointing import pointing_game as pointing_game

"""Composable hook functions and position selectors (see :mod:`.functions`)."""

from .. import positions as positions
from .functions import Ablate as Ablate
from .functions import CacheTo as CacheTo
from .functions import HookFunction as HookFunction
from .functions import PatchFrom as PatchFrom
from .functions import PatchSubspace as PatchSubspace
from .functions import ProjectOut as ProjectOut
from .functions import ScaleComponent as ScaleComponent
from .functions import SetComponent as SetComponent
from .functions import Steer as Steer
from .functions import compose as compose
from .functions import hooks_for as hooks_for
from .functions import over as over

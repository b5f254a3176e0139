"""pycaffe's solver classes: ``netforge.SGDSolver("solver.prototxt")``, ``AdamSolver``, ...

Each runs the file with its own update rule whatever ``type`` the file names, as pycaffe's
classes do (``get_solver`` goes by the file's type).
"""

from __future__ import annotations

from netforge.train.solver import Solver


class SGDSolver(Solver):
    forced_type = "SGD"


class NesterovSolver(Solver):
    forced_type = "Nesterov"


class AdaGradSolver(Solver):
    forced_type = "AdaGrad"


class RMSPropSolver(Solver):
    forced_type = "RMSProp"


class AdaDeltaSolver(Solver):
    forced_type = "AdaDelta"


class AdamSolver(Solver):
    forced_type = "Adam"

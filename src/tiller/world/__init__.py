"""The embedded default world: a fictional corpus, prompt families, a gold judge and simulated labelers.

Training stages never import this package; they read the files :func:`build_world` writes. Only evaluation
and ``tiller label --labeler world`` use the judge and the labelers.
"""

from tiller.world.build import World, build_world, load_world, measure_agreement
from tiller.world.config import FAMILIES, WorldConfig
from tiller.world.judge import GoldJudge
from tiller.world.labelers import LabelerPool

__all__ = ["FAMILIES", "GoldJudge", "LabelerPool", "World", "WorldConfig", "build_world", "load_world",
           "measure_agreement"]

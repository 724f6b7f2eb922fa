"""Inference sides q(z | x) (installed as ``pyrovae.guides``)."""

from pyrovae.guides.base import AmortizedGuide
from pyrovae.guides.delta import DeltaGuide
from pyrovae.guides.normal import NormalGuide

__all__ = ["AmortizedGuide", "NormalGuide", "DeltaGuide"]

"""Inference sides q(z | x) (installed as ``pyrovae.guides``)."""

from pyrovae.guides.base import AmortizedGuide
from pyrovae.guides.delta import DeltaGuide
from pyrovae.guides.flow import FlowGuide
from pyrovae.guides.gmvae import GMVAEGuide
from pyrovae.guides.normal import NormalGuide
from pyrovae.guides.spherical import PowerSphericalGuide, VMFGuide

__all__ = ["AmortizedGuide", "DeltaGuide", "FlowGuide", "GMVAEGuide", "NormalGuide", "PowerSphericalGuide", "VMFGuide"]

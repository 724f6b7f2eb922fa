"""Encoder and decoder trunks that models and guides compose.

Every trunk maps ``(..., in_features) -> (..., out_features)`` over any number of leading batch
dimensions, so that the same network serves a data batch, a batch of vectorised ELBO particles and a
batch of importance samples.
"""

from pyrovae.nn.conv import ConvDecoder, ConvEncoder
from pyrovae.nn.mlp import MLP, make_activation
from pyrovae.nn.registration import (
    forget_pyro_attributes,
    module_named,
    name_module,
    pyro_name,
    register_module,
    take_loaded,
    unregister_module,
)

__all__ = [
    "MLP", "ConvEncoder", "ConvDecoder", "forget_pyro_attributes", "make_activation", "module_named", "name_module",
    "pyro_name", "register_module", "take_loaded", "unregister_module",
]

"""Special functions in torch for the hyperspherical and count distributions."""

from pyrovae.ops.bessel import attach_bessel_terms, bessel_iv_ratio, bessel_terms, log_bessel_iv, log_bessel_ive
from pyrovae.ops.gamma import (
    digamma_difference,
    digamma_ratio_excess,
    log_gamma_difference,
    log_gamma_ratio,
    trigamma_difference,
)
from pyrovae.ops.log1p import log1p_minus_fraction
from pyrovae.ops.radial import log_radial_integral

__all__ = ["attach_bessel_terms", "bessel_iv_ratio", "bessel_terms", "digamma_difference", "digamma_ratio_excess",
           "log1p_minus_fraction", "log_bessel_iv", "log_bessel_ive", "log_gamma_difference", "log_gamma_ratio",
           "log_radial_integral", "trigamma_difference"]

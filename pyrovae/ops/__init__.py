"""Special functions in torch for the hyperspherical distributions."""

from pyrovae.ops.bessel import bessel_iv_ratio, bessel_terms, log_bessel_iv, log_bessel_ive

__all__ = ["bessel_iv_ratio", "bessel_terms", "log_bessel_iv", "log_bessel_ive"]

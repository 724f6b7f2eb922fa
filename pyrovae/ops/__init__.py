"""Special functions in torch for the hyperspherical distributions."""

from pyrovae.ops.bessel import attach_bessel_terms, bessel_iv_ratio, bessel_terms, log_bessel_iv, log_bessel_ive

__all__ = ["attach_bessel_terms", "bessel_iv_ratio", "bessel_terms", "log_bessel_iv", "log_bessel_ive"]

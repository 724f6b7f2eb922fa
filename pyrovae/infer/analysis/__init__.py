"""What is done with a trained model/guide pair.

- :mod:`~pyrovae.infer.analysis.encoding`: q(z | x) of a batch, its location, and a whole data set encoded batch
  by batch (:func:`encode_data`, :func:`locate`, :func:`latent_location`);
- :mod:`~pyrovae.infer.analysis.latent`: reconstruction and interpolation in the latent space
  (:func:`reconstruct`, :func:`interpolate`, :func:`interpolation_path`);
- :mod:`~pyrovae.infer.analysis.expression`: normalised and differential expression of count models, marker
  genes and transferred labels (:func:`normalized_expression`, :func:`differential_expression`, :func:`markers`,
  :func:`predict_labels`).
"""

from pyrovae.infer.analysis.encoding import encode_data, latent_location, locate
from pyrovae.infer.analysis.expression import differential_expression, markers, normalized_expression, predict_labels
from pyrovae.infer.analysis.latent import interpolate, interpolation_path, reconstruct

__all__ = [
    "differential_expression",
    "encode_data",
    "interpolate",
    "interpolation_path",
    "latent_location",
    "locate",
    "markers",
    "normalized_expression",
    "predict_labels",
    "reconstruct",
]

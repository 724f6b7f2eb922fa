"""Latent location, reconstruction and interpolation for every latent family."""

import pytest
import torch
from pyrovae.guides import DeltaGuide, FlowGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import SVAE, VAE

from pyrovae.distributions import VonMisesFisher
from pyrovae.infer import encode_data, interpolate, interpolation_path, latent_location, locate, reconstruct


def test_latent_location_is_the_mean_direction_on_the_sphere_and_the_mean_elsewhere():
    loc = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    q = VonMisesFisher(loc, torch.full((5,), 3.0))
    assert torch.equal(latent_location(q), loc)
    assert (q.mean.norm(dim=-1) < 1).all()  # the mean lies inside the ball: not a latent point
    x = torch.rand(6, 12).round()
    for guide in (VMFGuide(12, 4, (8,)), PowerSphericalGuide(12, 4, (8,))):
        torch.testing.assert_close(locate(guide, x).norm(dim=-1), torch.ones(6))
        torch.testing.assert_close(encode_data(guide, x), locate(guide, x))
    normal = NormalGuide(12, 3, (8,))
    torch.testing.assert_close(locate(normal, x), normal.encode(x).mean)
    delta = DeltaGuide(12, 3, (8,))
    torch.testing.assert_close(locate(delta, x), delta.encoder(x))
    mixture = GMVAEGuide(12, 3, (8,), num_components=4)
    assert locate(mixture, x).shape == (6, 3)


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_follows_the_geometry_and_ends_at_the_reconstructions(spherical):
    torch.manual_seed(0)
    x = torch.rand(2, 12).round()
    if spherical:
        model, guide = SVAE(12, 3, (8,)), VMFGuide(12, 3, (8,))
    else:
        model, guide = VAE(12, 3, (8,)), NormalGuide(12, 3, (8,))
    path, decoded = interpolate(model, guide, x[0], x[1], steps=7)
    assert path.shape == (7, 3) and decoded.shape == (7, 12)
    torch.testing.assert_close(decoded[[0, -1]], reconstruct(model, guide, x))
    steps = (path[1:] - path[:-1]).norm(dim=-1)
    torch.testing.assert_close(steps, steps.mean().expand(6), rtol=1e-4, atol=1e-6)  # constant speed
    if spherical:
        torch.testing.assert_close(path.norm(dim=-1), torch.ones(7))
        angle = torch.arccos((path[0] * path[-1]).sum().clamp(-1, 1))
        torch.testing.assert_close(steps.sum(), 2 * 6 * torch.sin(angle / 12))  # chords of the great circle


def test_flow_guide_location_is_the_base_mean_through_the_flows():
    """A flow's mean has no closed form: its location is the base mean pushed through the flows, and the latent
    tools (locate, reconstruct, encode_data) work with a FlowGuide."""
    torch.manual_seed(0)
    guide = FlowGuide(5, 3, hidden=(8,))
    x = torch.randn(4, 5)
    location = locate(guide, x)
    q = guide.encode(x)
    expected = q.base_dist.mean
    for transform in q.transforms:
        expected = transform(expected)
    assert location.shape == (4, 3) and torch.allclose(location, expected)
    model = VAE(5, 3, hidden=(8,), likelihood="gaussian")
    assert reconstruct(model, guide, x).shape == (4, 5)
    assert encode_data(guide, x).shape == (4, 3)


def test_interpolation_refuses_batched_ends_zero_directions_and_short_paths():
    torch.manual_seed(0)
    x = torch.rand(4, 12).round()
    model, guide = SVAE(12, 3, (8,)), VMFGuide(12, 3, (8,))
    with pytest.raises(ValueError, match=r"one path.*\(D,\) vector.*x_start is \(2, 12\)"):
        interpolate(model, guide, x[:2], x[2:])
    with pytest.raises(ValueError, match="one shape"):
        interpolate(model, guide, x[0], x[1, :6])
    with pytest.raises(ValueError, match="steps"):
        interpolate(model, guide, x[0], x[1], steps=1)
    end = torch.nn.functional.normalize(torch.randn(3), dim=0)
    with pytest.raises(ValueError, match="start point.*zero vector"):
        interpolation_path(torch.zeros(3), end, 5, spherical=True)
    with pytest.raises(ValueError, match="end point.*zero vector"):
        interpolation_path(torch.stack([end, end]), torch.stack([end, torch.zeros(3)]), 5, spherical=True)
    line = interpolation_path(torch.zeros(3), end, 5, spherical=False)  # a straight line may start at 0
    torch.testing.assert_close(line[2], end / 2)
    many = interpolation_path(locate(guide, x[:2]), locate(guide, x[2:]), 5, spherical=True)  # the batched way
    assert many.shape == (5, 2, 3) and torch.allclose(many.norm(dim=-1), torch.ones(5, 2))

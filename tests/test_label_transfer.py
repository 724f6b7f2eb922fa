"""Label transfer with the semi-supervised GMVAE (Kingma et al. 2014, M2): the labelled bound, the classification
term, and transferred labels on simulated cell types."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from pyrovae.guides import GMVAEGuide
from pyrovae.models import GMVAE

from pyrovae.data import CountData
from pyrovae.infer import log_likelihood, predict_labels, train


def typed_cells(n=600, genes=40, types=3, seed=0):
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, types, n)
    profile = 0.8 * rng.normal(0, 1, (types, genes))
    counts = rng.poisson(np.exp(1.0 + profile[kind]))
    counts[:, 0] += 1
    obs = pd.DataFrame({"cell_type": [f"type{k}" for k in kind]}, index=[f"c{i}" for i in range(n)])
    return CountData(counts, obs, label_key="cell_type")


def pair(genes=40, types=3, alpha=0.0, seed=0):
    torch.manual_seed(seed)
    return (GMVAE(genes, 3, types, (16,), "nb"),
            GMVAEGuide(genes, 3, (16,), num_components=types, input_transform="log1p", classification_weight=alpha))


def test_the_labelled_elbo_is_the_bound_on_log_p_of_x_and_its_label():
    """TraceEnum_ELBO on labelled data against a direct Monte Carlo estimate of
    E_q(z|x,y)[log p(x | z) + log p(z | y) + log p(y) - log q(z | x, y)] at the known labels y."""
    data = typed_cells(n=8).with_labels()
    model, guide = pair()
    x, cat, cont, y = data.batch(torch.arange(8))
    elbo = TraceEnum_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        pyro.set_rng_seed(1)
        loss = elbo.loss(model, guide, x, cat, cont, y)
        q = guide.latent_posterior(guide.features(x), y)
        z = q.sample((4000,))
        terms = (model.decode(z, x.sum(-1)).log_prob(x) + model.component(y).log_prob(z)
                 + model.component_prior().log_prob(y) - q.log_prob(z)).sum(-1)
    assert abs(-loss - float(terms.mean())) < 4 * float(terms.std()) / np.sqrt(4000) + 1e-3


def test_the_classification_term_adds_alpha_log_q_of_the_label_on_labelled_data_only():
    data = typed_cells(n=10)
    known = np.arange(10) < 6
    args = data.with_labels(known).batch(torch.arange(10))
    x, y = args[0], args[3]
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = {}
    for alpha in (0.0, 2.5):
        model, guide = pair(alpha=alpha)
        pyro.set_rng_seed(0)
        losses[alpha] = float(elbo.loss(model, guide, *args))
    log_q = guide.component_posterior(x).logits.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None]).squeeze(-1)
    expected = -2.5 * float(log_q[torch.as_tensor(known)].sum())
    assert losses[2.5] - losses[0.0] == pytest.approx(expected, rel=1e-4)


def test_labels_hidden_for_half_the_cells_are_transferred():
    data = typed_cells()
    rng = np.random.default_rng(1)
    known = rng.random(len(data)) < 0.5
    model, guide = pair(alpha=10.0)
    pyro.set_rng_seed(0)
    train(model, guide, data.with_labels(known), epochs=12, batch_size=64, progress=False, seed=0)
    predicted = predict_labels(guide, data)
    truth = data.obs["cell_type"].to_numpy()
    accuracy = (predicted["label"].astype(str).to_numpy()[~known] == truth[~known]).mean()
    assert accuracy > 0.95
    assert np.allclose(predicted[data.label_names].sum(1), 1.0)
    # held-out log p(x) sums y out whether or not the batches carry labels
    with pytest.warns(UserWarning, match="k-hat"):
        plain = log_likelihood(model, guide, data, num_samples=16).mean
    with pytest.warns(UserWarning, match="k-hat"):
        labelled = log_likelihood(model, guide, data.with_labels(known), num_samples=16).mean
    assert abs(plain - labelled) < 0.5


def test_bad_labels_are_refused():
    data = typed_cells(n=6)
    model, guide = pair()
    x, cat, cont, y = data.with_labels().batch(torch.arange(6))
    with pytest.raises(ValueError, match=r"-1..2"):
        guide(x, cat, cont, y + 5)
    with pytest.raises(ValueError, match="no label column"):
        data.with_covariates().without_covariates().__class__(data.counts).with_labels()


def test_cells_without_a_label_can_be_the_hidden_ones():
    data = typed_cells(n=30)
    data.obs.loc[data.obs.index[:5], "cell_type"] = None
    known = np.arange(30) >= 5
    y = data.with_labels(known).y
    assert (y[:5] == -1).all() and (y[5:] >= 0).all()
    assert (data.with_labels().y[:5] == -1).all()  # by default the unlabelled cells are the unknown ones
    with pytest.raises(ValueError, match="in known= have no label"):
        data.with_labels(np.ones(30, bool))
    with pytest.raises(ValueError, match="in known= have no label"):
        data.with_labels(np.arange(3))  # indices of cells without a label


def test_known_cells_as_a_zero_one_integer_array_are_refused_not_read_as_indices():
    """An int 0/1 array read as indices would label cells 0 and 1 only; it is refused, and the boolean mask it
    stands for labels exactly the cells it marks."""
    data = typed_cells(n=30)
    marks = (np.arange(30) % 3 == 0).astype(np.int64)
    with pytest.raises(ValueError, match="zeros and ones.*boolean mask"):
        data.with_labels(marks)
    y = data.with_labels(marks.astype(bool)).y.numpy()
    np.testing.assert_array_equal(y >= 0, marks.astype(bool))
    np.testing.assert_array_equal(y[marks.astype(bool)], data.labels.numpy()[marks.astype(bool)])
    with pytest.raises(ValueError, match=r"outside 0..29 \(e.g. \[30\]\)"):
        data.with_labels([0, 30])


def test_a_gmvae_with_another_number_of_components_than_labels_is_named():
    data = typed_cells(n=30, types=3)
    torch.manual_seed(0)
    guide = GMVAEGuide(40, 3, (16,), num_components=4, input_transform="log1p")
    with pytest.raises(ValueError, match=r"carries 3 labels .* but the GMVAE has 4 components.*num_components="):
        predict_labels(guide, data)
    with pytest.raises(ValueError, match="but the GMVAE has 4 components"):
        data.with_labels().check_components(guide.num_components)
    _, matching = pair(types=3)
    frame = predict_labels(matching, data)
    assert list(frame.columns[2:]) == data.label_names
    np.testing.assert_allclose(frame[data.label_names].sum(1), 1.0, rtol=1e-6)
    # a query labelled with another set of types: the guide's labels are named, not the query's
    query = data.subset(np.arange(10))
    query.obs["cell_type"] = np.where(np.arange(10) % 2 == 0, "NK", "pDC")
    query = CountData(query.counts, query.obs, label_key="cell_type")
    named = predict_labels(matching, query, label_names=data.label_names)
    assert list(named.columns[2:]) == data.label_names
    np.testing.assert_allclose(named[data.label_names].to_numpy(), frame[data.label_names].to_numpy()[:10], rtol=1e-5)
    with pytest.raises(ValueError, match="label_names has 2 labels, but the guide has 3 components"):
        predict_labels(matching, query, label_names=["NK", "pDC"])


def test_train_refuses_a_gmvae_with_more_components_than_the_labels():
    # four components for three labels used to train in silence, the fourth component never labelled
    data = typed_cells(n=30, types=3).with_labels()
    torch.manual_seed(0)
    model, guide = GMVAE(40, 3, 4, (16,), "nb"), GMVAEGuide(40, 3, (16,), num_components=4, input_transform="log1p")
    with pytest.raises(ValueError, match=r"carries 3 labels .* but the GMVAE has 4 components"):
        train(model, guide, data, epochs=1, progress=False)
    unlabelled = typed_cells(n=30, types=3)  # clustering without labels takes any number of components
    train(model, guide, unlabelled, epochs=1, batch_size=10, progress=False)


def test_labelled_data_given_to_a_pair_without_labels_is_named():
    # a VAE with a NormalGuide on data.with_labels() used to fail deep in torch: forward() takes 2 to 4 arguments
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    data = typed_cells(n=30, types=3).with_labels()
    model, guide = VAE(40, 3, (16,), "nb"), NormalGuide(40, 3, (16,), input_transform="log1p")
    with pytest.raises(TypeError, match=r"NormalGuide was given labels y .* GMVAE and a GMVAEGuide"):
        train(model, guide, data, epochs=1, progress=False)


def test_the_default_classification_weight_grows_with_the_features():
    """Half the number of features by default (the ELBO it is weighed against grows with them); given, as given."""
    for genes in (40, 2000):
        assert GMVAEGuide(genes, 3, (16,), num_components=3).classification_weight == genes / 2
    assert GMVAEGuide(40, 3, (16,), num_components=3, classification_weight=7.0).classification_weight == 7.0

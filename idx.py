from pyrovae import VAE, NormalGuide, load_digits
from pyrovae.infer import log_likelihood, train

train_x, test_x = load_digits(binarize="static")
model = VAE(x_dim=64, z_dim=2, hidden=(32,), likelihood="bernoulli")
guide = NormalGuide(x_dim=64, z_dim=2, hidden=(32,))
train(model, guide, train_x, epochs=20, lr=1e-2)
ll = log_likelihood(model, guide, test_x, num_samples=500)
print(ll.mean, ll.stderr, ll.flagged.sum())   # held-out log p(x), its standard error, the estimates to check

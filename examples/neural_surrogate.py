"""Operator learning: a PCA-Net surrogate of kappa -> u trained on the operator-dataset flow's file.

The data set (flows/datagen.py) holds N pairs (kappa, u) on (sample, node), chunked by
samples, with the mesh alongside. It opens lazily (xarray + dask); the first 80% of the
samples train, the last 20% test. The surrogate: log kappa and u each projected on their
leading principal components (from the training samples), a 2-hidden-layer tanh MLP between
the two sets of coefficients, trained with Adam on the mean squared coefficient error.
It is compared on the test samples with predicting the training mean and with a linear
least-squares map between the same coefficients.

Run: python -m flows.datagen --out data/operator.nc     (1024 samples, 16 x 16 grid, sigma 1)
     python examples/neural_surrogate.py data/operator.nc [steps]   (default 2000)
Without a file it generates the same kind of data in-process (tmcore.methods.batch.diffusion_samples).
"""

import sys
import time

import torch
import xarray as xr
from torch import nn

DATA = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
RANK_IN, RANK_OUT = 24, 16

torch.manual_seed(0)
if DATA is not None:
    dataset = xr.open_dataset(DATA, engine="netcdf4", chunks={})  # lazy: dask arrays in the file's chunks
    n_chunks = len(dataset["kappa"].chunks[0])
    kappa = torch.from_numpy(dataset["kappa"].values)  # reads the chunks
    u = torch.from_numpy(dataset["u"].values)
    source = f"{DATA} ({n_chunks} chunks)"
else:
    from tmcore import Mesh
    from tmcore.methods.batch import diffusion_samples

    kappa, u = diffusion_samples(Mesh.gen_grid((16, 16)), 1024, seed=0, length_scale=0.25, sigma=1.0)
    source = "generated in-process"

n_samples = kappa.shape[0]
n_train = int(0.8 * n_samples)
x, y = torch.log(kappa), u
x_train, x_test, y_train, y_test = x[:n_train], x[n_train:], y[:n_train], y[n_train:]


def principal_components(data: torch.Tensor, rank: int):
    """(mean, basis (n, rank), scale (rank,)) of the rows of data."""
    mean = data.mean(0)
    _, singular, vt = torch.linalg.svd(data - mean, full_matrices=False)
    basis = vt[:rank].T
    scale = singular[:rank] / (data.shape[0] - 1) ** 0.5
    return mean, basis, scale


x_mean, x_basis, x_scale = principal_components(x_train, min(RANK_IN, n_train))
y_mean, y_basis, y_scale = principal_components(y_train, min(RANK_OUT, n_train))


def encode(data, mean, basis, scale):
    return (data - mean) @ basis / scale


def decode(coefficients, mean, basis, scale):
    return (coefficients * scale) @ basis.T + mean


a_train, a_test = encode(x_train, x_mean, x_basis, x_scale), encode(x_test, x_mean, x_basis, x_scale)
c_train = encode(y_train, y_mean, y_basis, y_scale)

net = nn.Sequential(
    nn.Linear(a_train.shape[1], 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, c_train.shape[1])
).double()
optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS, eta_min=1e-5)
losses = []
start = time.perf_counter()
for step in range(STEPS):
    optimizer.zero_grad()
    loss = ((net(a_train) - c_train) ** 2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    losses.append(loss.item())
seconds = time.perf_counter() - start


def relative_error(prediction: torch.Tensor) -> float:
    """Mean over the test samples of |u_pred - u| / |u| (Euclidean norms over the nodes)."""
    return float(((prediction - y_test).norm(dim=1) / y_test.norm(dim=1)).mean())


with torch.no_grad():
    mlp_error = relative_error(decode(net(a_test), y_mean, y_basis, y_scale))
linear_map = torch.linalg.lstsq(torch.cat([a_train, torch.ones(n_train, 1, dtype=a_train.dtype)], 1), c_train).solution
linear_error = relative_error(
    decode(
        torch.cat([a_test, torch.ones(a_test.shape[0], 1, dtype=a_test.dtype)], 1) @ linear_map,
        y_mean,
        y_basis,
        y_scale,
    )
)
mean_error = relative_error(y_mean.expand_as(y_test))
print(f"data: {n_samples} samples x {kappa.shape[1]} nodes, {source}; train {n_train}, test {n_samples - n_train}")
print(
    f"PCA-Net ({x_basis.shape[1]} -> {y_basis.shape[1]} coefficients), {STEPS} Adam steps in {seconds:.1f} s: "
    f"training loss {losses[0]:.3e} -> {losses[-1]:.3e}"
)
print(
    f"relative L2 test error: PCA-Net {mlp_error:.4f}, linear on the same coefficients {linear_error:.4f}, "
    f"training mean {mean_error:.4f}"
)

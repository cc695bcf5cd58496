"""Simulation, fits, Gauss-Newton starts and fine-tuning through the solver on a CUDA
device against the CPU's (skipped where torch sees no CUDA device).

The CPU side is what the CPU runs in use: the native solver for simulation and fits. Fits
are short on purpose (the GPU runs the torch steps eagerly, one kernel per operation, so an
E. coli evaluation costs about as much at batch 8 as at 1024): the trust region on E. coli
is compared after a few iterations, where both sides have taken the same steps."""

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.fit import mle
from mechinfer.learn import losses
from mechinfer.models.design import draw_experiments
from mechinfer.models.simulate import simulate_observed

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_simulation_on_the_gpu_matches_the_native_cpu_solver(name):
    m = mechinfer.get_model(name)
    d = draw_experiments(m, 3, np.arange(256))
    theta, t = torch.from_numpy(d["theta"]), torch.from_numpy(d["t"])
    with torch.no_grad():
        y_cpu, s_cpu = simulate_observed(m, theta, t, backend="native")
        y_gpu, s_gpu = simulate_observed(m, theta.cuda(), t.cuda())
    assert y_gpu.device.type == "cuda"
    np.testing.assert_array_equal(s_gpu.cpu().numpy(), s_cpu.numpy())
    # the same method and step control on both sides: equal to round-off along the same steps
    ok = s_cpu.numpy() == 0
    scale = torch.as_tensor(m.sigma, dtype=y_cpu.dtype)
    err = ((y_gpu.cpu() - y_cpu).abs() / scale)[ok]
    assert float(err.max()) < 1e-6


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_gauss_newton_start_on_the_gpu_matches_the_cpu(name):
    m = mechinfer.get_model(name)
    est = mechinfer.load_estimator(name)
    rows, _ = baseline.load_test_set(name, None, 8)
    t, ch, v = rows["t"], rows["channel"], rows["value"]
    z0 = torch.from_numpy(est.estimate_z(t, ch, v))
    h_cpu = mle.gauss_newton_h0(m, t, ch, v)(z0, torch.arange(8))
    h_gpu = mle.gauss_newton_h0(m, t, ch, v, "cuda")(z0.cuda(), torch.arange(8).cuda())
    assert h_gpu.device.type == "cuda"
    torch.testing.assert_close(h_gpu.cpu(), h_cpu, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "name, method, cases, max_iter",
    [("mmk", "bfgs", 16, mle.MAX_ITER), ("mmk", "trust-region", 16, mle.MAX_ITER), ("ecoli", "trust-region", 8, 4)],
)
def test_fit_on_the_gpu_matches_the_cpu(name, method, cases, max_iter):
    m = mechinfer.get_model(name)
    est = mechinfer.load_estimator(name)
    rows, _ = baseline.load_test_set(name, None, cases)
    t, ch, v = rows["t"], rows["channel"], rows["value"]
    z0 = est.estimate_z(t, ch, v)
    cpu = mle.fit(m, t, ch, v, z0, method=method, max_iter=max_iter)
    gpu = mle.fit(m, t, ch, v, z0, method=method, max_iter=max_iter, device="cuda")
    assert cpu.method == gpu.method == method
    assert np.isfinite(gpu.nll).all()
    # the same optima (or iterates) within the fit tolerance: the two backends agree to
    # round-off per evaluation; BFGS may take a different last step
    np.testing.assert_allclose(gpu.nll, cpu.nll, rtol=1e-3, atol=1e-3)
    assert (gpu.nll <= mle.nll(m, t, ch, v, z0) + 1e-9).all()  # every fit went down from its start


def test_finetuning_step_through_the_solver_on_the_gpu():
    est = mechinfer.load_estimator("ecoli")
    rows, _ = baseline.load_test_set("ecoli", None, 32)
    batch = {
        "t": torch.from_numpy(rows["t"]).float(),
        "channel": torch.from_numpy(rows["channel"]).long(),
        "value": torch.from_numpy(rows["value"]).float(),
    }
    grads = {}
    for device in ("cpu", "cuda"):
        net = est.net.to(device)
        net.zero_grad()
        loss = losses.inference_loss(est.model, net, {k: x.to(device) for k, x in batch.items()}, through="model")
        loss.backward()
        grads[device] = torch.cat([p.grad.flatten().cpu() for p in net.parameters()])
    assert torch.isfinite(grads["cuda"]).all()
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-3, atol=1e-5)

"""Fits, Gauss-Newton starts and fine-tuning through the solver on a CUDA device, with
the same code as on the CPU (skipped where torch sees no CUDA device)."""

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.fit import mle
from mechinfer.learn import losses

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_fit_on_the_gpu_matches_the_cpu(name):
    m = mechinfer.get_model(name)
    est = mechinfer.load_estimator(name)
    rows, _ = baseline.load_test_set(name, None, 16)
    t, ch, v = rows["t"], rows["channel"], rows["value"]
    z0 = est.estimate_z(t, ch, v)
    h_cpu = mle.gauss_newton_h0(m, t, ch, v)(torch.from_numpy(z0), torch.arange(16))
    h_gpu = mle.gauss_newton_h0(m, t, ch, v, "cuda")(torch.from_numpy(z0).cuda(), torch.arange(16).cuda())
    torch.testing.assert_close(h_gpu.cpu(), h_cpu, rtol=1e-6, atol=1e-8)
    cpu = mle.fit(m, t, ch, v, z0)
    gpu = mle.fit(m, t, ch, v, z0, device="cuda")
    assert np.isfinite(gpu.nll).all()
    # the same optima within the fit tolerance (the two backends agree to round-off per
    # evaluation; BFGS may take a different last step)
    np.testing.assert_allclose(gpu.nll, cpu.nll, rtol=1e-3, atol=1e-3)


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
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-3, atol=1e-5)

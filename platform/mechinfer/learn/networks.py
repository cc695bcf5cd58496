"""The two networks of the method (SPEC 4, 6): the proxy, (z, t, channel) -> the model's
noise-free output, and the Deep Set inference network, a set of (t, channel, value)
triplets -> z.

Both are plain ``nn.Module`` built from a JSON-able config dict, so a checkpoint is the
config plus a state dict. Inputs are normalised inside the network from per-channel
value scales stored as buffers, so callers pass values as the losses see them: in the
model's noise space (:func:`mechinfer.models.likelihood.to_noise_space`), which for the
built-in models is their physical units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import NetworkConfig
from ..models.base import Model


def mlp(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.SiLU()]
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)


class TimeChannelEncoding(nn.Module):
    """Features of (t, channel): t / T, optionally with Fourier features, and the channel
    as one-hot or a learned embedding (both tunable)."""

    freqs: torch.Tensor  # registered buffer

    def __init__(
        self,
        T: float,
        n_channels: int,
        time: str = "fourier",
        channel: str = "onehot",
        n_frequencies: int = 8,
        embed_dim: int = 8,
    ):
        super().__init__()
        if time not in ("linear", "fourier") or channel not in ("onehot", "embedding"):
            raise ValueError(f"unknown encoding time={time!r} channel={channel!r}")
        self.T, self.n_channels, self.time, self.channel = T, n_channels, time, channel
        self.register_buffer(
            "freqs", math.pi * torch.arange(1, n_frequencies + 1, dtype=torch.float32), persistent=False
        )
        self.embedding = nn.Embedding(n_channels, embed_dim) if channel == "embedding" else None
        self.n_features = (
            1 + (2 * n_frequencies if time == "fourier" else 0) + (embed_dim if channel == "embedding" else n_channels)
        )

    def forward(self, t: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        s = (t / self.T).unsqueeze(-1)
        parts = [s]
        if self.time == "fourier":
            parts += [torch.sin(s * self.freqs), torch.cos(s * self.freqs)]
        if self.embedding is not None:
            parts.append(self.embedding(channel.long()))
        else:
            parts.append(nn.functional.one_hot(channel.long(), self.n_channels).to(s.dtype))
        return torch.cat(parts, dim=-1)


class ProxyNet(nn.Module):
    """(z (B, P), t (B, N), channel (B, N)) -> predicted noise-free output (B, N) (float64
    through asinh, below).

    The body predicts each value normalised (minus the channel's offset, over its scale)
    and, with ``value_transform`` "asinh" (a PEtab problem's model), through asinh: a
    lin-scale observable over priors of many decades (Fujita's span 16) takes values
    from 1e-20 to 1e30, which no layer outputs and whose squared error overflows; the
    loss (:meth:`normalise`) then compares in that space."""

    scale: torch.Tensor  # registered buffers
    offset: torch.Tensor
    SINH_MAX = 700.0  # sinh(700) ~ 5e303, below float64's largest

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.encoding = TimeChannelEncoding(
            c["T"], c["n_channels"], c.get("time_encoding", "fourier"), c.get("channel_encoding", "onehot")
        )
        self.body = mlp(c["n_parameters"] + self.encoding.n_features, c["width"], c["depth"], c["n_channels"])
        self.register_buffer("scale", torch.tensor(c["value_scale"], dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(c["value_offset"], dtype=torch.float32))
        self.asinh = _value_transform(c) == "asinh"

    def normalise(self, value: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Values (B, N) of the channels where the body predicts them."""
        ch = channel.long()
        v = (value - self.offset[ch]) / self.scale[ch]
        return torch.asinh(v) if self.asinh else v

    def forward(self, z: torch.Tensor, t: torch.Tensor, channel: torch.Tensor, normalised: bool = False):
        """The prediction (B, N); with ``normalised``, the body's, in the space of
        :meth:`normalise` (an argument rather than a method, so a DistributedDataParallel
        wrapper's forward runs for the loss too)."""
        feats = self.encoding(t, channel)
        zz = z.to(feats.dtype).unsqueeze(-2).expand(*t.shape, z.shape[-1])
        out = self.body(torch.cat([zz, feats], dim=-1))  # (B, N, C)
        out = out.gather(-1, channel.long().unsqueeze(-1)).squeeze(-1)
        if normalised:
            return out
        ch = channel.long()
        if self.asinh:  # in float64: the values may pass float32's largest
            wide = torch.sinh(out.double().clamp(-self.SINH_MAX, self.SINH_MAX))
            return wide * self.scale[ch].double() + self.offset[ch].double()
        return out * self.scale[ch] + self.offset[ch]


VALUE_TRANSFORMS = ("linear", "asinh")


def _value_transform(config: dict) -> str:
    name = config.get("value_transform", "linear")
    if name not in VALUE_TRANSFORMS:
        raise ValueError(f"unknown value_transform {name!r}; one of {VALUE_TRANSFORMS}")
    return name


class DeepSet(nn.Module):
    """Deep Set (Zaheer et al., 2017) over triplet-encoded observations (Yalavarthi et
    al., 2022): phi on each (t, channel, value), masked permutation-invariant pooling,
    rho on the pooled vector -> z (B, P). Padded entries (NaN t or value) are ignored."""

    POOLINGS = ("mean", "max", "meanmax")
    # "asinh": scaled values pass through asinh, linear near 0 and logarithmic far out, so
    # that values whose noise scale spans decades (a PEtab problem's estimated sigma) stay
    # in the range the network's layers resolve; "linear" (the built-in models): as they are
    scale: torch.Tensor  # registered buffers
    offset: torch.Tensor

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        if c.get("pooling", "meanmax") not in self.POOLINGS:
            raise ValueError(f"unknown pooling {c.get('pooling')!r}; one of {self.POOLINGS}")
        self.pooling = c.get("pooling", "meanmax")
        self.encoding = TimeChannelEncoding(
            c["T"], c["n_channels"], c.get("time_encoding", "fourier"), c.get("channel_encoding", "onehot")
        )
        self.phi = mlp(self.encoding.n_features + 1, c["width"], c["depth"], c["width"])
        pooled = c["width"] * (2 if self.pooling == "meanmax" else 1) + 1  # + log set size
        self.rho = mlp(pooled, c["width"], c["depth"], c["n_parameters"])
        self.register_buffer("scale", torch.tensor(c["value_scale"], dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(c["value_offset"], dtype=torch.float32))
        self.asinh = _value_transform(c) == "asinh"

    def forward(self, t: torch.Tensor, channel: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        mask = torch.isfinite(t) & torch.isfinite(value)
        ch = torch.where(mask, channel.long(), torch.zeros_like(channel.long()))
        t0 = torch.where(mask, t, torch.zeros_like(t)).float()
        v = torch.where(mask, value, torch.zeros_like(value)).float()
        v = (v - self.offset[ch]) / self.scale[ch]
        if self.asinh:
            v = torch.asinh(v)
        h = self.phi(torch.cat([self.encoding(t0, ch), v.unsqueeze(-1)], dim=-1))  # (B, N, W)
        m = mask.unsqueeze(-1).to(h.dtype)
        n = m.sum(dim=1).clamp(min=1.0)
        parts = []
        if self.pooling in ("mean", "meanmax"):
            parts.append((h * m).sum(dim=1) / n)
        if self.pooling in ("max", "meanmax"):
            parts.append(torch.where(m.bool(), h, torch.full_like(h, -1e4)).max(dim=1).values)
        parts.append(torch.log(n))
        return self.rho(torch.cat(parts, dim=-1))


def default_config(model: Model, kind: str, **overrides) -> dict:
    """A network config for ``model``; value scales default to the noise sigma. The
    networks of a model with an observation model of its own (a PEtab problem's) take
    scaled values through asinh (see :class:`DeepSet`, :class:`ProxyNet`)."""
    config = {
        "kind": kind,
        "model": model.name,
        "T": model.T,
        "n_channels": len(model.channels),
        "n_parameters": model.n_parameters,
        "n_obs": model.n_obs,
        **NetworkConfig().as_dict(),
        "value_scale": model.sigma.tolist(),
        "value_offset": [0.0] * len(model.channels),
    }
    if model.observation is not None:
        config["value_transform"] = "asinh"
    config.update(overrides)
    return config


def build(config: dict) -> nn.Module:
    kinds = {"proxy": ProxyNet, "inference": DeepSet}
    if config.get("kind") not in kinds:
        raise ValueError(f"unknown network kind {config.get('kind')!r}")
    return kinds[config["kind"]](config)

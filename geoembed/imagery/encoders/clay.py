"""Clay v1.5's encoder, reimplemented from its published architecture (Clay-foundation/model,
``claymodel``; the PyPI wheel is broken), with the same parameter names so a Clay checkpoint loads as
it is. Weights come from a local file only; nothing is downloaded.

The encoder is a ViT over 8 x 8 pixel patches whose patch projection is generated from the bands'
wavelengths ("dynamic embedding"): each wavelength is sin-cos encoded, passed with 128 latent tokens
and a bias token through one transformer layer, and turned into that band's projection weights. Patch
tokens get a 2-D sin-cos position encoding scaled by the ground sample distance, concatenated with 8
metadata values (sin/cos of week, hour, latitude, longitude). A class token goes first; 24 pre-norm
blocks and a final norm give (B, 1 + L, 1024); the chip embedding is the class token.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoembed.core.errors import InputError

WAVE_DIM = 128
LATENT_TOKENS = 128
WEIGHT_SCALE = 0.02  # the generated patch-projection weights are scaled by this at run time
META_DIMS = 8  # sin/cos of week, hour, latitude, longitude


class ClayCheckpointError(InputError):
    """A Clay checkpoint is missing, has another checksum than configured, or does not fit the encoder."""


@dataclass(frozen=True)
class ClaySpec:
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: float
    patch_size: int = 8

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)


CLAY_SIZES = {
    "tiny": ClaySpec(192, 6, 4, 48, 2.0),
    "small": ClaySpec(384, 6, 6, 64, 2.0),
    "base": ClaySpec(768, 12, 12, 64, 4.0),
    "large": ClaySpec(1024, 24, 16, 64, 4.0),  # Clay v1.5
}

# Clay's Sentinel-2 L2A normalisation (configs/metadata.yaml): per band mean and std of raw DNs
# (reflectance x 10,000) and central wavelength in micrometres. Clay has no L1C entry: L1C scenes use
# these too, the nearest statistics there are (documented in the README).
CLAY_S2_BANDS = {
    "B02": (0.493, 1105.0, 1809.0),
    "B03": (0.56, 1355.0, 1757.0),
    "B04": (0.665, 1552.0, 1888.0),
    "B05": (0.704, 1887.0, 1870.0),
    "B06": (0.74, 2422.0, 1732.0),
    "B07": (0.783, 2630.0, 1697.0),
    "B08": (0.842, 2743.0, 1742.0),
    "B8A": (0.865, 2785.0, 1648.0),
    "B11": (1.61, 2388.0, 1470.0),
    "B12": (2.19, 1835.0, 1379.0),
}
CLAY_GSD = 10.0


def _sincos_1d(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Clay's wavelength encoding: frequencies 1 / 10000 ** (j / (dim/2 - 1)), sines then cosines."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / (half - 1)))
    angles = values.float()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _position_encoding(grid: int, dim: int, gsd: float) -> torch.Tensor:
    """Clay's 2-D sin-cos position encoding with the GSD (``dim`` channels: sin x, cos x, sin y, cos y).

    The frequencies are reproduced exactly as Clay computes them (the exponent is normalised twice, so
    all frequencies lie between 0.982 and 1 times the GSD): the weights were trained with them."""
    n = dim // 4
    omega = torch.arange(n, dtype=torch.float32) / (n - 1)
    omega = (1.0 / (10000 ** (2 * omega / dim))) * gsd
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                          indexing="ij")
    x = x.flatten()[:, None] * omega[None, :]
    y = y.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class FCBlock(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """Turns encoded wavelengths into patch-projection weights (one kernel per band) and a bias."""

    def __init__(self, embed_dim: int, patch_size: int):
        super().__init__()
        self.weight_tokens = nn.Parameter(torch.zeros(LATENT_TOKENS, WAVE_DIM))
        self.bias_token = nn.Parameter(torch.zeros(1, WAVE_DIM))
        layer = nn.TransformerEncoderLayer(WAVE_DIM, nhead=4, activation="gelu", dropout=0.0, norm_first=False,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(WAVE_DIM, patch_size * patch_size * embed_dim)
        self.fc_bias = nn.Linear(WAVE_DIM, embed_dim)

    def forward(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([self.weight_tokens, waves, self.bias_token], dim=0)
        out = self.encoder(tokens)
        weights = self.fc_weight(out[LATENT_TOKENS:-1] + tokens[LATENT_TOKENS:-1])
        return weights, self.fc_bias(out[-1])


class DynamicEmbedding(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int):
        super().__init__()
        self.embed_dim, self.patch_size = embed_dim, patch_size
        self.weight_generator = WavesTransformer(embed_dim, patch_size)
        self.fclayer = FCBlock(WAVE_DIM)

    def forward(self, pixels: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        encoded = self.fclayer(_sincos_1d(waves, WAVE_DIM).to(pixels.device))
        weights, bias = self.weight_generator(encoded)
        c, p = len(waves), self.patch_size
        kernel = weights.reshape(c, self.embed_dim, p, p).permute(1, 0, 2, 3)
        patches = F.conv2d(pixels, kernel * WEIGHT_SCALE, bias, stride=p)
        return patches.flatten(2).transpose(1, 2)  # (B, L, D), patches row-major


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, spec: ClaySpec):
        super().__init__()
        self.norm = nn.LayerNorm(spec.dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([Attention(spec.dim, spec.heads, spec.dim_head), FeedForward(spec.dim, spec.mlp_dim)])
            for _ in range(spec.depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm(x)


class ClayEncoder(nn.Module):
    """Clay's encoder. ``forward(pixels, time, latlon)`` -> (class embedding (B, D), patch embeddings
    (B, L, D)); ``pixels`` are normalised DNs of the bands whose wavelengths (µm) the encoder was built
    with, ``time`` and ``latlon`` Clay's 4 sin/cos values each (zeros: unknown)."""

    def __init__(self, spec: ClaySpec, waves: list[float], gsd: float = CLAY_GSD):
        super().__init__()
        self.spec = spec
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.patch_embedding = DynamicEmbedding(spec.dim, spec.patch_size)
        self.transformer = Transformer(spec)
        self.register_buffer("waves", torch.tensor(waves, dtype=torch.float32), persistent=False)
        self.gsd = float(gsd)

    def tokens(self, pixels: torch.Tensor, time: torch.Tensor, latlon: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm: (B, 1 + L, D)."""
        patches = self.patch_embedding(pixels, self.waves)
        b, n, d = patches.shape
        grid = pixels.shape[-1] // self.spec.patch_size  # square chips: n = grid^2 (a shape, so ONNX keeps it dynamic)
        position = _position_encoding(grid, d - META_DIMS, self.gsd).to(patches.device, patches.dtype)
        meta = torch.cat([time, latlon], dim=1).to(patches.dtype)
        patches = patches + torch.cat([position.expand(b, n, -1), meta[:, None, :].expand(b, n, -1)], dim=-1)
        return self.transformer(torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1))

    def forward(self, pixels: torch.Tensor, time: torch.Tensor, latlon: torch.Tensor):
        out = self.tokens(pixels, time, latlon)
        return out[:, 0], out[:, 1:]


@dataclass(frozen=True)
class ClayBackboneSpec:
    """What rebuilds a ClayChipBackbone: the Clay size, the bands Clay reads and the bands its input has."""

    size: str
    bands: tuple[str, ...]
    input_bands: tuple[str, ...]

    def to_json(self) -> dict:
        return {"kind": "clay", "size": self.size, "bands": list(self.bands), "input_bands": list(self.input_bands)}


class ClayChipBackbone(nn.Module):
    """Clay's encoder as a classifier backbone over reflectance (B, C, H, W) of ``input_bands``: Clay's bands
    picked out and normalised with Clay's statistics (no data: the band mean), time and place unknown
    (zeros, as one file serves every chip); ``pooled`` is the class token. One module, so the ONNX export
    holds the whole path from reflectance."""

    def __init__(self, encoder: ClayEncoder, spec: ClayBackboneSpec):
        super().__init__()
        missing = [b for b in spec.bands if b not in spec.input_bands]
        if missing:
            raise InputError(f"Clay reads bands {missing} that the chips do not have ({list(spec.input_bands)})")
        self.encoder, self.spec = encoder, spec
        self.register_buffer("band_index", torch.tensor([spec.input_bands.index(b) for b in spec.bands]),
                             persistent=False)
        stats = torch.tensor([CLAY_S2_BANDS[b][1:] for b in spec.bands], dtype=torch.float32)
        self.register_buffer("dn_mean", stats[:, 0].view(1, -1, 1, 1), persistent=False)
        self.register_buffer("dn_std", stats[:, 1].view(1, -1, 1, 1), persistent=False)

    @classmethod
    def untrained(cls, spec: ClayBackboneSpec) -> ClayChipBackbone:
        return cls(ClayEncoder(CLAY_SIZES[spec.size], [CLAY_S2_BANDS[b][0] for b in spec.bands]), spec)

    def pooled(self, reflectance: torch.Tensor) -> torch.Tensor:
        x = reflectance.index_select(1, self.band_index)
        pixels = torch.nan_to_num((x * 10_000.0 - self.dn_mean) / self.dn_std, nan=0.0)
        unknown = pixels.new_zeros((pixels.shape[0], 4))
        return self.encoder(pixels, unknown, unknown)[0]

    @property
    def pooled_dim(self) -> int:
        return self.encoder.spec.dim

    def last_block(self) -> nn.Module:
        """The last transformer block and the final norm."""
        return nn.ModuleList([self.encoder.transformer.layers[-1], self.encoder.transformer.norm])


# ---------------------------------------------------------------------------------------------
# Inputs and checkpoints
# ---------------------------------------------------------------------------------------------


def clay_bands(bands: list[str] | None) -> list[str]:
    chosen = list(bands or CLAY_S2_BANDS)
    unknown = [b for b in chosen if b not in CLAY_S2_BANDS]
    if unknown:
        raise InputError(f"Clay has no Sentinel-2 statistics for bands {unknown}; use bands from {list(CLAY_S2_BANDS)}")
    return chosen


def clay_pixels(reflectance: np.ndarray, bands: list[str]) -> np.ndarray:
    """Clay's input from reflectance (B, C, H, W): DNs (x 10,000) z-scored with Clay's statistics; no
    data (NaN) becomes 0, the band mean."""
    mean = np.array([CLAY_S2_BANDS[b][1] for b in bands], dtype=np.float32)[None, :, None, None]
    std = np.array([CLAY_S2_BANDS[b][2] for b in bands], dtype=np.float32)[None, :, None, None]
    out = (reflectance.astype(np.float32) * 10_000.0 - mean) / std
    return np.nan_to_num(out, nan=0.0)


def clay_time(when: datetime) -> np.ndarray:
    """[sin week, cos week, sin hour, cos hour] (ISO week x 2 pi / 52, UTC hour x 2 pi / 24)."""
    week = when.isocalendar().week * 2 * math.pi / 52
    hour = when.hour * 2 * math.pi / 24
    return np.array([math.sin(week), math.cos(week), math.sin(hour), math.cos(hour)], dtype=np.float32)


def clay_latlon(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(n, 4): [sin lat, cos lat, sin lon, cos lon] of chip centres (latitude first: Clay's order)."""
    lat_r, lon_r = np.radians(lat), np.radians(lon)
    return np.column_stack([np.sin(lat_r), np.cos(lat_r), np.sin(lon_r), np.cos(lon_r)]).astype(np.float32)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


ENCODER_PREFIX = "model.encoder."


def read_clay_state_dict(path: str | Path, sha256: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder weights of a local Clay checkpoint and the file's SHA-256.

    A Lightning ``.ckpt`` keeps its encoder under ``model.encoder.`` (decoder and teacher keys are
    dropped); an encoder-only ``.pt`` or ``.safetensors`` has the keys without the prefix. Lightning
    checkpoints hold pickled objects besides tensors: such a file is only unpickled when its SHA-256 is
    configured and matches (a file someone swapped cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} does not exist (weights are never downloaded: "
                                  "give a local file)")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} has SHA-256 {digest}, not the configured {sha256}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            payload: dict = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from None
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors of many kinds
            if sha256 is None:
                raise ClayCheckpointError(
                    f"Clay checkpoint {str(path)!r} holds more than tensors and cannot be loaded safely; set the "
                    f"encoder's sha256 (this file's is {digest}) to allow it, or convert it to safetensors") from None
            try:
                payload = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc2:  # noqa: BLE001
                raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} cannot be read: {exc2}") from exc
    if not isinstance(payload, dict):
        raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} holds a {type(payload).__name__}, not a state dict")
    state = payload.get("state_dict", payload)
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        state = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, digest


def load_clay_encoder(path: str | Path, size: str, bands: list[str], sha256: str | None = None) -> tuple[ClayEncoder, str]:
    """A Clay encoder of ``size`` with the weights of a local checkpoint, for ``bands``; and the file's
    SHA-256. Keys or shapes that do not match the architecture are refused, naming them."""
    spec = CLAY_SIZES[size]
    model = ClayEncoder(spec, [CLAY_S2_BANDS[b][0] for b in bands])
    state, digest = read_clay_state_dict(path, sha256)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            problems.append(f"{len(wrong)} keys of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                            f"{tuple(expected[k].shape)} for Clay {size})")
        raise ClayCheckpointError(f"Clay checkpoint {str(path)!r} does not fit the {size} encoder: "
                                  + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval(), digest


def save_encoder_checkpoint(model: ClayEncoder, path: str | Path, lightning_layout: bool = True,
                            extra: dict | None = None) -> None:
    """Save weights in Clay's checkpoint key layout (``model.encoder.*`` under ``state_dict``, as a
    Lightning checkpoint has them), e.g. for a small randomly initialised model in tests."""
    state = {(ENCODER_PREFIX if lightning_layout else "") + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, **(extra or {})} if lightning_layout else state, path)


def spec_json(spec: ClaySpec, bands: list[str]) -> dict:
    return {"kind": "clay", **asdict(spec), "bands": bands, "gsd": CLAY_GSD}

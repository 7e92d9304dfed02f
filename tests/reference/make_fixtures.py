"""Write golden fixtures for the Rust tests.

Usage:  ~/.cache/partialconv/venv/bin/python tests/reference/make_fixtures.py [OUTDIR]
        (default OUTDIR: partialconv/tests/fixtures relative to the repo root)

Deterministic (fixed seeds).  Inputs/weights are generated in float32; the
golden outputs are computed in float64 from those float32 values and then cast
to float32.

layer_<name>.safetensors
    tensors : x, mask, weight, [bias], out, out_mask
    metadata: convention (scaled|unscaled), multi_channel (true|false), kernel,
              stride, padding, eps, bias (true|false)
unet_<name>.safetensors
    tensors : every state-dict tensor of PConvUNet except *.mask_conv.weight
              (enc_i.conv.input_conv.weight, dec_1.conv.input_conv.bias,
              enc_i/dec_i.bn.{weight,bias,running_mean,running_var,
              num_batches_tracked (int64, 0-d)}), plus input, mask, output,
              output_mask
    metadata: layer_size, width, input_channels, convention

Before writing, self-tests check the layer against an unfold-based second
implementation, and a second U-Net forward (unfold layers, repeat_interleave
upsampling, hand-written BN) against the module; plus float32 vs float64.
"""

import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pconv_reference as ref  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "partialconv", "tests", "fixtures")
EPS = 1e-8


def rel_err(a, b):
    a = a.double()
    b = b.double()
    den = b.abs().max().item()
    return (a - b).abs().max().item() / (den if den > 0 else 1.0)


# ----------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------

def rand_int(gen, lo, hi):
    """uniform integer in [lo, hi]"""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen).item())


def hole_mask(gen, h, w, min_frac=0.2, max_frac=0.4, border=True):
    """(h, w) float mask, 1 = valid, 0 = hole: rectangles + ellipses, one
    rectangle touching the image border."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    for _ in range(1000):
        # aim somewhere in the lower part of [min_frac, max_frac]
        target = min_frac + 0.6 * (max_frac - min_frac) * torch.rand(1, generator=gen).item()
        hole = torch.zeros(h, w, dtype=torch.bool)
        if border:
            rh, rw = rand_int(gen, max(1, h // 8), max(1, h // 3)), rand_int(gen, max(1, w // 8), max(1, w // 3))
            side = rand_int(gen, 0, 3)
            if side == 0:      # top
                y0, x0 = 0, rand_int(gen, 0, w - rw)
            elif side == 1:    # bottom
                y0, x0 = h - rh, rand_int(gen, 0, w - rw)
            elif side == 2:    # left
                y0, x0 = rand_int(gen, 0, h - rh), 0
            else:              # right
                y0, x0 = rand_int(gen, 0, h - rh), w - rw
            hole[y0:y0 + rh, x0:x0 + rw] = True
        while hole.double().mean().item() < target:
            if rand_int(gen, 0, 1) == 0:
                rh, rw = rand_int(gen, 1, max(1, h // 4)), rand_int(gen, 1, max(1, w // 4))
                y0, x0 = rand_int(gen, 0, h - rh), rand_int(gen, 0, w - rw)
                hole[y0:y0 + rh, x0:x0 + rw] = True
            else:
                cy, cx = rand_int(gen, 0, h - 1), rand_int(gen, 0, w - 1)
                ry, rx = rand_int(gen, 1, max(1, h // 6)), rand_int(gen, 1, max(1, w // 6))
                hole |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        if hole.double().mean().item() <= max_frac:
            return (~hole).float()
    raise RuntimeError("could not make a hole mask")


def layer_mask(gen, kind, n, c, h, w, single):
    """kinds: random, largehole (both: equal across channels), perchannel,
    perchannel_largehole.  Every mask has a hole touching the border."""
    chans = 1 if single else c
    per = kind.startswith("perchannel")
    m = torch.empty(n, chans, h, w)
    for i in range(n):
        shared = hole_mask(gen, h, w, 0.15, 0.4)
        for j in range(chans):
            m[i, j] = hole_mask(gen, h, w, 0.15, 0.4) * shared if per else shared
    if kind.endswith("largehole"):
        # a big central hole on all channels -> some windows are all-hole
        y0, x0 = h // 5, w // 5
        m[:, :, y0:h - h // 5, x0:w - w // 5] = 0.0
    if per and n > 1 and chans > 1:
        m[1, 0] = 0.0                           # one channel completely hole
    if per:
        assert any(not torch.equal(m[i, 0], m[i, j]) for i in range(n) for j in range(1, chans))
    return m


# ----------------------------------------------------------------------------
# second implementation (unfold) for self-tests
# ----------------------------------------------------------------------------

def pconv_unfold(x, mask, weight, bias, stride, padding, convention, multi_channel, eps=EPS):
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    if not multi_channel:
        mask_full = mask.expand(n, c_in, h, w)
    else:
        mask_full = mask
    cols = F.unfold(x * mask_full, (kh, kw), padding=padding, stride=stride)  # n, c_in*k*k, L
    acc = torch.einsum("ok,nkl->nol", weight.reshape(c_out, -1), cols)        # no bias
    if multi_channel:
        msum = F.unfold(mask, (kh, kw), padding=padding, stride=stride).sum(1, keepdim=True)
        win = c_in * kh * kw
    else:
        msum = F.unfold(mask, (kh, kw), padding=padding, stride=stride).sum(1, keepdim=True)
        win = kh * kw
    b = bias.view(1, -1, 1) if bias is not None else torch.zeros(1, c_out, 1, dtype=x.dtype)
    valid = msum > 0
    if convention == ref.SCALED:
        scale = torch.where(valid, win / (msum + eps), torch.zeros_like(msum))
        out = torch.where(valid, acc * scale + b, torch.zeros_like(acc))
        m_out = valid.to(x.dtype).expand(n, c_out if multi_channel else 1, -1)
    else:
        out = torch.where(valid, acc / msum.clamp_min(1) + b, torch.zeros_like(acc))
        m_out = valid.to(x.dtype).expand(n, c_out, -1)
    return out.reshape(n, c_out, ho, wo), m_out.reshape(n, -1, ho, wo)


def unet_second_impl(sd, cfg, x, mask):
    """U-Net forward from a plain state dict (float64), independent of the
    nn.Module code path."""
    L, w, c, conv = cfg["layer_size"], cfg["width"], cfg["input_channels"], cfg["convention"]
    enc_ksp = {1: (7, 2, 3), 2: (5, 2, 2), 3: (5, 2, 2)}

    def block(name, h, m, ksp, bn, act):
        k, s, p = ksp
        wgt = sd[f"{name}.conv.input_conv.weight"]
        assert wgt.shape[-1] == k
        bias = sd.get(f"{name}.conv.input_conv.bias")
        h, m = pconv_unfold(h, m, wgt, bias, s, p, conv, True)
        if bn:
            g, b = sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"]
            mu, var = sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"]
            h = (h - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) \
                * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        if act == "relu":
            h = h.clamp_min(0)
        elif act == "leaky":
            h = torch.where(h >= 0, h, 0.2 * h)
        return h, m

    hs, ms = [x], [mask]
    for i in range(1, L + 1):
        h, m = block(f"enc_{i}", hs[-1], ms[-1], enc_ksp.get(i, (3, 2, 1)), i > 1, "relu")
        hs.append(h)
        ms.append(m)
    h, m = hs[L], ms[L]
    for i in range(L, 0, -1):
        h = h.repeat_interleave(2, 2).repeat_interleave(2, 3)
        m = m.repeat_interleave(2, 2).repeat_interleave(2, 3)
        h = torch.cat([h, hs[i - 1]], 1)
        m = torch.cat([m, ms[i - 1]], 1)
        h, m = block(f"dec_{i}", h, m, (3, 1, 1), i > 1, "leaky" if i > 1 else None)
    return h, m


# ----------------------------------------------------------------------------
# layer fixtures
# ----------------------------------------------------------------------------

# name, convention, multi_channel, N, C_in, C_out, H, W, k, stride, pad, bias, mask kind
LAYER_CASES = [
    ("scaled_mc_perchan_k3s1_bias", "scaled", True, 2, 4, 5, 13, 17, 3, 1, 1, True, "perchannel_largehole"),
    ("scaled_mc_same_k5s2_nobias", "scaled", True, 1, 3, 4, 13, 17, 5, 2, 2, False, "largehole"),
    ("scaled_mc_perchan_k7s2_bias", "scaled", True, 2, 3, 6, 16, 20, 7, 2, 3, True, "perchannel"),
    ("scaled_mc_same_k3s2p0_bias", "scaled", True, 1, 2, 3, 12, 15, 3, 2, 0, True, "random"),
    ("scaled_sc_k3s1_nobias", "scaled", False, 2, 3, 4, 13, 17, 3, 1, 1, False, "largehole"),
    ("scaled_sc_k7s2_bias", "scaled", False, 1, 2, 3, 13, 17, 7, 2, 3, True, "largehole"),
    ("scaled_sc_k5s1_bias", "scaled", False, 1, 3, 2, 11, 9, 5, 1, 2, True, "random"),
    ("unscaled_perchan_k3s1_bias", "unscaled", True, 2, 4, 5, 13, 17, 3, 1, 1, True, "perchannel_largehole"),
    ("unscaled_same_k5s2_nobias", "unscaled", True, 1, 3, 4, 13, 17, 5, 2, 2, False, "largehole"),
    ("unscaled_perchan_k7s2_bias", "unscaled", True, 2, 3, 6, 13, 17, 7, 2, 3, True, "perchannel_largehole"),
    ("unscaled_same_k3s2p0_nobias", "unscaled", True, 2, 2, 3, 12, 15, 3, 2, 0, False, "random"),
    ("unscaled_same_k5s1_bias", "unscaled", True, 1, 3, 4, 13, 17, 5, 1, 2, True, "largehole"),
    ("unscaled_perchan_k3s2_nobias", "unscaled", True, 1, 4, 3, 16, 16, 3, 2, 1, False, "perchannel"),
]


def make_layer_case(case, seed):
    (name, conv, mc, n, ci, co, h, w, k, s, p, has_bias, kind) = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen)
    mask = layer_mask(gen, kind, n, ci, h, w, single=not mc)
    nwin = ci * k * k
    std = (2.0 * nwin) ** 0.5 if conv == ref.UNSCALED else (2.0 / nwin) ** 0.5
    weight = torch.randn(co, ci, k, k, generator=gen) * std
    bias = torch.randn(co, generator=gen) * 0.5 if has_bias else None

    d = lambda t: None if t is None else t.double()  # noqa: E731
    out, out_mask = ref.partial_conv2d(d(x), d(mask), d(weight), d(bias), s, p, conv, mc, EPS)
    # self-test: unfold implementation
    out2, mask2 = pconv_unfold(d(x), d(mask), d(weight), d(bias), s, p, conv, mc, EPS)
    assert out.shape == out2.shape and out_mask.shape == mask2.shape, name
    assert rel_err(out2, out) < 1e-12, (name, rel_err(out2, out))
    assert torch.equal(out_mask, mask2), name
    # float32 path agrees too
    out32, mask32 = ref.partial_conv2d(x, mask, weight, bias, s, p, conv, mc, EPS)
    assert rel_err(out32, out) < 1e-5, (name, rel_err(out32, out))
    assert torch.equal(mask32, out_mask.float()), name
    if kind.endswith("largehole"):
        assert (out_mask == 0).any() and (out_mask == 1).any(), name
    assert (mask == 0).any() and (mask == 1).any()
    exp_ch = co if mc else 1
    assert out_mask.shape == (n, exp_ch, out.shape[2], out.shape[3])

    tensors = {"x": x, "mask": mask, "weight": weight,
               "out": out.float().contiguous(), "out_mask": out_mask.float().contiguous()}
    if bias is not None:
        tensors["bias"] = bias
    meta = {"convention": conv, "multi_channel": str(mc).lower(), "kernel": str(k),
            "stride": str(s), "padding": str(p), "eps": repr(EPS),
            "bias": str(has_bias).lower()}
    return f"layer_{name}", tensors, meta


# ----------------------------------------------------------------------------
# U-Net fixtures
# ----------------------------------------------------------------------------

# name, layer_size, width, input_channels, N, H, W, convention, per-channel mask
UNET_CASES = [
    ("l4_w8_unscaled_b2", 4, 8, 3, 2, 48, 64, "unscaled", False),
    ("l5_w4_scaled", 5, 4, 3, 1, 64, 96, "scaled", False),
    ("l4_w4_scaled_b2", 4, 4, 3, 2, 32, 48, "scaled", False),
]
UNET_PERCHANNEL_CASES = [
    ("unscaled_l4_w4", 4, 4, 3, 1, 32, 48, "unscaled", True),
    ("scaled_l4_w4_b2", 4, 4, 3, 2, 32, 32, "scaled", True),
]


def build_unet(cfg, x, mask, gen):
    torch.manual_seed(0)
    model = ref.PConvUNet(cfg["layer_size"], cfg["input_channels"], cfg["width"], cfg["convention"])
    ref.init_random_(model, gen)
    ref.calibrate_bn_(model, x, mask, gen)
    model.eval()
    return model


def unet_forward64(model, x, mask):
    """Golden forward: float64 copy of the float32 model."""
    import copy
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return m64(x.double(), mask.double())


def make_unet_case(case, seed, prefix):
    (name, L, w, c, n, h, wd, conv, perchan) = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, wd, generator=gen)
    mask = torch.empty(n, c, h, wd)
    for i in range(n):
        shared = hole_mask(gen, h, wd, 0.2, 0.4)
        for j in range(c):
            if perchan:
                mask[i, j] = hole_mask(gen, h, wd, 0.2, 0.4) if j > 0 else shared
            else:
                mask[i, j] = shared
    frac = 1 - mask.mean().item()
    assert 0.2 <= frac <= 0.4, frac
    if perchan:
        assert not torch.equal(mask[:, 0], mask[:, 1])
    cfg = {"layer_size": L, "width": w, "input_channels": c, "convention": conv}
    model = build_unet(cfg, x, mask, gen)
    out, out_mask = unet_forward64(model, x, mask)

    # sanity: float32 forward of the same model
    with torch.no_grad():
        out32, mask32 = model(x, mask)
    e32 = rel_err(out32, out)
    assert e32 < 1e-5, (name, e32)
    assert torch.equal(mask32, out_mask.float())
    # independent second implementation
    sd64 = {k: (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    out2, mask2 = unet_second_impl(sd64, cfg, x.double(), mask.double())
    e2 = rel_err(out2, out)
    assert e2 < 1e-10, (name, e2)
    assert torch.equal(mask2, out_mask)
    assert out.shape == (n, c, h, wd) and out_mask.shape == (n, c, h, wd)
    assert out.abs().max() > 1e-2 and out.abs().max() < 1e3, out.abs().max()

    tensors = ref.fixture_state_dict(model)
    tensors.update({"input": x, "mask": mask, "output": out.float().contiguous(),
                    "output_mask": out_mask.float().contiguous()})
    meta = {k: str(v) for k, v in cfg.items()}
    print(f"  {prefix}{name}: hole {frac:.2f}, f32-vs-f64 rel {e32:.2e}, "
          f"2nd impl rel {e2:.1e}, |out|max {out.abs().max():.3f}")
    return f"{prefix}{name}", tensors, meta


def save_deterministic(tensors, path, meta):
    """safetensors.torch.save_file, then rewrite the JSON header with the
    metadata keys sorted (the library emits them in hash order), so reruns are
    byte-identical.  The header keeps its length (same characters)."""
    import json
    import struct
    save_file(tensors, path, metadata=meta)
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    text += b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    written = []
    for i, case in enumerate(LAYER_CASES):
        written.append(make_layer_case(case, 1000 + i))
    for i, case in enumerate(UNET_CASES):
        written.append(make_unet_case(case, 2000 + i, "unet_"))
    for i, case in enumerate(UNET_PERCHANNEL_CASES):
        written.append(make_unet_case(case, 3000 + i, "unet_perchannel_"))
    total = 0
    for fname, tensors, meta in written:
        path = os.path.join(out_dir, fname + ".safetensors")
        save_deterministic(tensors, path, meta)
        total += os.path.getsize(path)
    print(f"wrote {len(written)} fixtures to {out_dir} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""Independent PyTorch reference for partial convolutions (Liu et al. 2018).

Written from the formulas only (plain ``F.conv2d``); no third-party inpainting
code is copied.  Two conventions are provided:

* ``"scaled"``   -- NVIDIA ``PartialConv2d`` semantics (multi_channel=True or
  False): out = ((conv(X*M, W, b) - b) * ratio + b) * update with
  ratio = C_in*k*k / (sum(M) + eps) * update, update = clamp(sum(M), 0, 1).
  (single-channel: M is (N,1,H,W), window size k*k, update is (N,1,H',W').)
* ``"unscaled"`` -- the naoto0804 re-implementation: out = (conv(X*M, W, b) - b)
  / sum(M) + b, zeroed where sum(M) == 0; new_mask = (sum(M) > 0).

``PConvUNet`` uses the naoto0804 module layout, so its ``state_dict()`` keys are
the checkpoint format (``enc_1.conv.input_conv.weight``,
``enc_2.bn.running_mean``, ``enc_1.conv.mask_conv.weight`` (all ones), ...).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALED = "scaled"
UNSCALED = "unscaled"
CONVENTIONS = (SCALED, UNSCALED)


def partial_conv2d(x, mask, weight, bias=None, stride=1, padding=0,
                   convention=UNSCALED, multi_channel=True, eps=1e-8):
    """Functional partial convolution. Returns (out, out_mask)."""
    c_out, c_in, kh, kw = weight.shape
    assert x.shape[1] == c_in
    if convention == SCALED:
        if multi_channel:
            assert mask.shape == x.shape, (mask.shape, x.shape)
            ones = torch.ones(c_out, c_in, kh, kw, dtype=x.dtype, device=x.device)
            winsize = c_in * kh * kw
        else:
            assert mask.shape[1] == 1 and mask.shape[0] == x.shape[0]
            assert mask.shape[2:] == x.shape[2:]
            ones = torch.ones(1, 1, kh, kw, dtype=x.dtype, device=x.device)
            winsize = kh * kw
        raw = F.conv2d(mask, ones, None, stride, padding)
        ratio = winsize / (raw + eps)
        update = torch.clamp(raw, 0.0, 1.0)
        ratio = ratio * update
        raw_out = F.conv2d(x * mask, weight, bias, stride, padding)
        if bias is not None:
            b = bias.view(1, -1, 1, 1)
            out = ((raw_out - b) * ratio + b) * update
        else:
            out = raw_out * ratio
        return out, update
    elif convention == UNSCALED:
        assert multi_channel, "unscaled convention only has the multi-channel form"
        assert mask.shape == x.shape, (mask.shape, x.shape)
        output = F.conv2d(x * mask, weight, bias, stride, padding)
        ones = torch.ones(c_out, c_in, kh, kw, dtype=x.dtype, device=x.device)
        msum = F.conv2d(mask, ones, None, stride, padding)
        holes = msum == 0
        msum = msum.masked_fill(holes, 1.0)
        b = bias.view(1, -1, 1, 1) if bias is not None else 0.0
        out = (output - b) / msum + b
        out = out.masked_fill(holes, 0.0)
        new_mask = torch.ones_like(out).masked_fill(holes, 0.0)
        return out, new_mask
    raise ValueError(f"unknown convention {convention!r}")


class PartialConv(nn.Module):
    """Module form; parameter names follow naoto0804 (input_conv / mask_conv).

    ``mask_conv.weight`` is all ones and not trainable; the forward pass uses
    an explicit ones kernel (identical values), so it never influences results.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, bias=True, convention=UNSCALED, multi_channel=True,
                 eps=1e-8):
        super().__init__()
        assert convention in CONVENTIONS
        self.convention = convention
        self.multi_channel = multi_channel
        self.eps = eps
        self.stride = stride
        self.padding = padding
        self.input_conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                                    stride, padding, bias=bias)
        m_in, m_out = (in_channels, out_channels) if multi_channel else (1, 1)
        self.mask_conv = nn.Conv2d(m_in, m_out, kernel_size, stride, padding,
                                   bias=False)
        nn.init.constant_(self.mask_conv.weight, 1.0)
        for p in self.mask_conv.parameters():
            p.requires_grad = False

    def forward(self, x, mask):
        return partial_conv2d(x, mask, self.input_conv.weight,
                              self.input_conv.bias, self.stride, self.padding,
                              self.convention, self.multi_channel, self.eps)


class PCBActiv(nn.Module):
    """PartialConv -> (BatchNorm) -> (ReLU | LeakyReLU(0.2) | none)."""

    _SAMPLES = {"down-7": (7, 2, 3), "down-5": (5, 2, 2),
                "down-3": (3, 2, 1), "none-3": (3, 1, 1)}

    def __init__(self, in_ch, out_ch, bn=True, sample="none-3", activ="relu",
                 conv_bias=False, convention=UNSCALED):
        super().__init__()
        k, s, p = self._SAMPLES[sample]
        self.conv = PartialConv(in_ch, out_ch, k, s, p, bias=conv_bias,
                                convention=convention, multi_channel=True)
        if bn:
            self.bn = nn.BatchNorm2d(out_ch)  # eps 1e-5, momentum 0.1
        self.activ = activ

    def forward(self, x, mask):
        h, h_mask = self.conv(x, mask)
        if hasattr(self, "bn"):
            h = self.bn(h)
        if self.activ == "relu":
            h = F.relu(h)
        elif self.activ == "leaky":
            h = F.leaky_relu(h, negative_slope=0.2)
        else:
            assert self.activ is None
        return h, h_mask


class PConvUNet(nn.Module):
    def __init__(self, layer_size=7, input_channels=3, width=64,
                 convention=UNSCALED):
        super().__init__()
        assert layer_size >= 4
        self.layer_size = layer_size
        self.input_channels = input_channels
        self.width = width
        self.convention = convention
        w, c, cv = width, input_channels, convention
        self.enc_1 = PCBActiv(c, w, bn=False, sample="down-7", convention=cv)
        self.enc_2 = PCBActiv(w, 2 * w, sample="down-5", convention=cv)
        self.enc_3 = PCBActiv(2 * w, 4 * w, sample="down-5", convention=cv)
        self.enc_4 = PCBActiv(4 * w, 8 * w, sample="down-3", convention=cv)
        for i in range(4, layer_size):
            setattr(self, f"enc_{i + 1}",
                    PCBActiv(8 * w, 8 * w, sample="down-3", convention=cv))
        for i in range(4, layer_size):
            setattr(self, f"dec_{i + 1}",
                    PCBActiv(8 * w + 8 * w, 8 * w, activ="leaky", convention=cv))
        self.dec_4 = PCBActiv(8 * w + 4 * w, 4 * w, activ="leaky", convention=cv)
        self.dec_3 = PCBActiv(4 * w + 2 * w, 2 * w, activ="leaky", convention=cv)
        self.dec_2 = PCBActiv(2 * w + w, w, activ="leaky", convention=cv)
        self.dec_1 = PCBActiv(w + c, c, bn=False, activ=None, conv_bias=True,
                              convention=cv)

    def forward(self, x, mask):
        h_dict = {"h_0": x}
        m_dict = {"h_0": mask}
        prev = "h_0"
        for i in range(1, self.layer_size + 1):
            key = f"h_{i}"
            h_dict[key], m_dict[key] = getattr(self, f"enc_{i}")(h_dict[prev], m_dict[prev])
            prev = key
        h, h_mask = h_dict[prev], m_dict[prev]
        for i in range(self.layer_size, 0, -1):
            enc_key = f"h_{i - 1}"
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h_mask = F.interpolate(h_mask, scale_factor=2, mode="nearest")
            h = torch.cat([h, h_dict[enc_key]], dim=1)
            h_mask = torch.cat([h_mask, m_dict[enc_key]], dim=1)
            h, h_mask = getattr(self, f"dec_{i}")(h, h_mask)
        return h, h_mask


def fixture_state_dict(model):
    """state_dict without the (all-ones) mask_conv weights, contiguous copies."""
    return {k: v.detach().clone().contiguous()
            for k, v in model.state_dict().items() if ".mask_conv." not in k}


def init_random_(model, gen, fan_scale=True):
    """Random weights scaled per convention so activations stay O(1).

    unscaled divides by sum(M) ~ n = C_in*k*k, so weight std is sqrt(2n);
    scaled behaves like a plain conv, so std is kaiming-like sqrt(2/n).
    Conv biases and BN affine parameters are randomised too.
    """
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, PartialConv):
                w = mod.input_conv.weight
                n = w.shape[1] * w.shape[2] * w.shape[3]
                std = (2.0 * n) ** 0.5 if mod.convention == UNSCALED else (2.0 / n) ** 0.5
                if not fan_scale:
                    std = 1.0
                w.copy_(torch.randn(w.shape, generator=gen) * std)
                if mod.input_conv.bias is not None:
                    b = mod.input_conv.bias
                    b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.2)


def calibrate_bn_(model, x, mask, gen, num_batches=1000):
    """Set BN running stats near the real activation statistics (so outputs stay
    O(1)) but deliberately perturbed, so eval-mode BN is not a no-op."""
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.momentum = 1.0
        model.train()
        model(x, mask)
        model.eval()
        for bn in bns:
            bn.momentum = 0.1
            var = bn.running_var.clamp_min(1e-2)
            bn.running_mean.add_(0.2 * var.sqrt() * torch.randn(var.shape, generator=gen))
            bn.running_var.copy_(var * torch.exp(0.3 * torch.randn(var.shape, generator=gen)))
            bn.num_batches_tracked.fill_(num_batches)

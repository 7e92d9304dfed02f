"""Write PyTorch checkpoints for the Rust .pth importer tests.

Usage:  ~/.cache/partialconv/venv/bin/python tests/reference/make_checkpoints.py OUTDIR

Files written into OUTDIR (deterministic content; each naoto_*.pth is ~73 MB):

naoto_zip.pth      torch.save (zip format) of the dict
                     'n_iter'    : 1234 (int)
                     'model'     : PConvUNet(layer_size=4, input_channels=3,
                                   width=64, unscaled).state_dict(), naoto0804 key
                                   names INCLUDING enc_i/dec_i.conv.mask_conv.weight
                                   (all ones; importers must ignore them) and BN
                                   running stats / num_batches_tracked
                     'optimizer' : Adam state_dict after one step ('state' with
                                   'step' (0-d tensor), 'exp_avg', 'exp_avg_sq';
                                   'param_groups' with tuples/floats/bools/None)
                     'extra'     : non-contiguous / offset views, for stride tests:
                       'extra'['t']          = base.t(), base = arange(15.).reshape(3,5);
                                               shape (5,3), stride (1,5)
                       'extra'['offset']     = base2[1:, 2:], base2 = arange(42.).reshape(6,7);
                                               shape (5,5), stride (7,1), storage offset 9
                       'extra'['shared_w_t'] = model['enc_1.conv.input_conv.weight']
                                               .transpose(0, 1); shape (3,64,7,7), shares
                                               its storage with the model entry
naoto_legacy.pth   the same object saved with _use_new_zipfile_serialization=False
naoto_expected.safetensors
                   input (1,3,64,64) (ImageNet-normalised image), mask (1,3,64,64)
                   (binary, equal across channels, 1 = valid), output, output_mask
                   (model in eval mode, computed in float64 from the saved float32
                   weights, cast to float32), and contiguous copies of the extra
                   views: extra_t, extra_offset, extra_shared_w_t.
                   metadata: layer_size, width, input_channels, convention, n_iter
malicious.pth      zip-format checkpoint {'model': {small tensors}, 'payload': X}
                   where X pickles as GLOBAL 'posix system' (= os.system on Linux)
                   + REDUCE ('echo pwned > /tmp/pwned'), and 'payload2' pickles as
                   GLOBAL '__builtin__ eval' + REDUCE (protocol 2 maps builtins to
                   __builtin__).  A safe loader must refuse both; NEVER load them with
                   weights_only=False.
malicious_legacy.pth  the same in the legacy (non-zip) format.
"""

import copy
import io
import os
import pickletools
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pconv_reference as ref  # noqa: E402

LAYER_SIZE, WIDTH, CHANNELS, CONVENTION, N_ITER = 4, 64, 3, "unscaled", 1234
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class _SystemPayload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned",))


class _EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned > /tmp/pwned')",))


def make_mask(gen, h, w):
    """binary (h, w) mask, 1 = valid; rectangles + an ellipse, one hole touching
    the top border; ~25-35% hole."""
    m = torch.ones(h, w)
    m[0:14, 40:58] = 0.0                                  # touches the border
    m[30:44, 8:30] = 0.0
    yy, xx = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    m[((yy - 46) / 10) ** 2 + ((xx - 46) / 12) ** 2 <= 1.0] = 0.0
    # a little random speckle
    m[torch.rand(h, w, generator=gen) < 0.03] = 0.0
    return m


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(4242)
    torch.manual_seed(4242)

    img = torch.rand(1, 3, 64, 64, generator=gen)
    x = ((img - IMAGENET_MEAN) / IMAGENET_STD).contiguous()
    mask = make_mask(gen, 64, 64).view(1, 1, 64, 64).expand(1, 3, 64, 64).contiguous()
    hole = 1 - mask.mean().item()
    assert 0.2 <= hole <= 0.4, hole

    model = ref.PConvUNet(LAYER_SIZE, CHANNELS, WIDTH, CONVENTION)
    ref.init_random_(model, gen)
    ref.calibrate_bn_(model, x, mask, gen, num_batches=N_ITER)
    model.eval()

    # one Adam step so the optimizer state holds tensors
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    opt.zero_grad()
    o, _ = model(x * mask, mask)
    loss = ((o - x) ** 2).mean()
    loss.backward()
    opt.step()
    model.eval()

    sd = model.state_dict()
    assert any(".mask_conv." in k for k in sd)
    assert all(torch.all(v == 1) for k, v in sd.items() if ".mask_conv." in k)

    base = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    base2 = torch.arange(42, dtype=torch.float32).reshape(6, 7)
    extra = {
        "t": base.t(),
        "offset": base2[1:, 2:],
        "shared_w_t": sd["enc_1.conv.input_conv.weight"].transpose(0, 1),
    }
    assert not extra["t"].is_contiguous() and extra["offset"].storage_offset() == 9
    ckpt = {"n_iter": N_ITER, "model": sd, "optimizer": opt.state_dict(), "extra": extra}
    torch.save(ckpt, os.path.join(out, "naoto_zip.pth"))
    torch.save(ckpt, os.path.join(out, "naoto_legacy.pth"), _use_new_zipfile_serialization=False)

    # expected outputs: float64 forward of the saved float32 weights
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        y, ym = m64(x.double(), mask.double())
        y32, ym32 = model(x, mask)
    err = (y32.double() - y).abs().max().item() / y.abs().max().item()
    assert err < 1e-5, err
    assert torch.equal(ym32, ym.float())
    save_file({"input": x, "mask": mask,
               "output": y.float().contiguous(), "output_mask": ym.float().contiguous(),
               "extra_t": extra["t"].contiguous(),
               "extra_offset": extra["offset"].contiguous(),
               "extra_shared_w_t": extra["shared_w_t"].contiguous()},
              os.path.join(out, "naoto_expected.safetensors"),
              metadata={"layer_size": str(LAYER_SIZE), "width": str(WIDTH),
                        "input_channels": str(CHANNELS), "convention": CONVENTION,
                        "n_iter": str(N_ITER)})

    # round trip through torch's own safe loader
    for name in ("naoto_zip.pth", "naoto_legacy.pth"):
        back = torch.load(os.path.join(out, name), weights_only=True)
        assert back["n_iter"] == N_ITER
        assert torch.equal(back["model"]["dec_1.conv.input_conv.bias"], sd["dec_1.conv.input_conv.bias"])
        assert back["extra"]["t"].stride() == (1, 5)
        assert torch.equal(back["extra"]["shared_w_t"], extra["shared_w_t"])

    # malicious checkpoints
    evil = {"model": {"enc_1.conv.input_conv.weight": torch.zeros(2, 3, 7, 7)},
            "payload": _SystemPayload(), "payload2": _EvalPayload()}
    for name, zipfmt in (("malicious.pth", True), ("malicious_legacy.pth", False)):
        path = os.path.join(out, name)
        torch.save(evil, path, _use_new_zipfile_serialization=zipfmt)
        try:
            torch.load(path, weights_only=True)
        except Exception:
            pass
        else:
            raise AssertionError(f"{name}: weights_only load unexpectedly succeeded")
    # check the opcode stream of the zip variant's data.pkl
    import zipfile
    with zipfile.ZipFile(os.path.join(out, "malicious.pth")) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(io.BytesIO(pkl))]
    assert ("GLOBAL", "posix system") in ops or ("GLOBAL", "os system") in ops, ops
    assert ("GLOBAL", "__builtin__ eval") in ops or ("GLOBAL", "builtins eval") in ops, ops
    assert any(n == "REDUCE" for n, _ in ops)

    print(f"wrote checkpoints to {out} (hole {hole:.2f}, f32-vs-f64 rel {err:.2e})")


if __name__ == "__main__":
    main()

"""Calls every q8 op once on CUDA with small, odd-sized inputs and checks it against
the CPU. Small enough to run under compute-sanitizer (scripts/gpu_check.sh):

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/cuda_smoke.py
"""
import sys

import torch

import q8


def same(a, b, what):
    a, b = a.cpu(), b.cpu()
    if a.dtype.is_floating_point:
        ok = torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    else:
        ok = torch.equal(a, b)
    if not ok:
        print(f"MISMATCH {what}", file=sys.stderr)
    return ok


def close(a, b, what, rtol=1e-4, atol=1e-4):
    ok = torch.allclose(a.cpu().float(), b.cpu().float(), rtol=rtol, atol=atol, equal_nan=True)
    if not ok:
        print(f"MISMATCH {what}: max diff {(a.cpu().float() - b.cpu().float()).abs().max()}", file=sys.stderr)
    return ok


def main():
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    torch.manual_seed(0)
    ok = True
    d = "cuda"
    x = torch.randn(37, 131) * 4
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -float("inf")
    s, z = torch.tensor(0.05), torch.tensor(3, dtype=torch.int32)
    sc, zc = torch.rand(131) * 0.1 + 0.01, torch.randint(-5, 5, (131,), dtype=torch.int32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        ok &= same(q8.fake_quantize_per_tensor(xd.to(d), s.to(d), z.to(d), -128, 127),
                   q8.fake_quantize_per_tensor(xd, s, z, -128, 127), f"fq per tensor {dtype}")
        ok &= same(q8.fake_quantize_per_channel(xd.to(d), sc.to(d), zc.to(d), 1, -128, 127),
                   q8.fake_quantize_per_channel(xd, sc, zc, 1, -128, 127), f"fq per channel {dtype}")
        ok &= same(q8.quantize(xd.to(d), s.to(d), z.to(d), None, -128, 127, torch.int8),
                   q8.quantize(xd, s, z, None, -128, 127, torch.int8), f"quantize {dtype}")
        for a, b in zip(q8.choose_qparams(xd.to(d), 0, 255, False, 1), q8.choose_qparams(xd, 0, 255, False, 1)):
            ok &= same(a, b, f"choose_qparams {dtype}")
    q = torch.randint(-128, 128, (37, 131), dtype=torch.int8)
    ok &= same(q8.dequantize(q.to(d), sc.to(d), zc.to(d), 1), q8.dequantize(q, sc, zc, 1), "dequantize")
    # Gradients: straight-through and learnable scale / zero point.
    for dev in ("cpu", d):
        xs = x.nan_to_num().clone().to(dev).requires_grad_()
        ss = s.clone().to(dev).requires_grad_()
        zs = torch.tensor(2.0, device=dev).requires_grad_()
        q8.fake_quantize_per_tensor(xs, ss, zs, -128, 127).square().sum().backward()
        if dev == "cpu":
            ref = (xs.grad, ss.grad, zs.grad)
        else:
            for a, b, w in zip((xs.grad, ss.grad, zs.grad), ref, ("dx", "dscale", "dzero_point")):
                ok &= close(a, b, f"learnable backward {w}", rtol=1e-4, atol=1e-2)
    # LSQ backward per channel: the "runs" kernel (axis 0) and the "columns" kernel (last axis,
    # channels_last), with an expanded-scalar grad (as from out.sum()).
    for axis, xs in ((0, x.nan_to_num()), (1, x.nan_to_num()),
                     (1, x.nan_to_num()[:36].reshape(4, 9, 131).unsqueeze(-1)
                      .contiguous(memory_format=torch.channels_last).squeeze(-1))):
        c = xs.shape[axis]
        sp, zp = torch.rand(c) * 0.1 + 0.01, torch.randn(c)
        for g in (torch.randn(xs.shape), torch.ones(()).expand(xs.shape)):
            r_cpu = torch.ops.q8._fake_quantize_learnable_backward(g, xs, sp, zp, axis, -128, 127)
            r_gpu = torch.ops.q8._fake_quantize_learnable_backward(g.to(d), xs.to(d), sp.to(d), zp.to(d), axis,
                                                                  -128, 127)
            ok &= same(r_gpu[0], r_cpu[0], f"learnable backward per channel dx axis={axis}")
            ok &= close(r_gpu[1], r_cpu[1], f"learnable backward per channel dscale axis={axis}", atol=1e-2)
            ok &= close(r_gpu[2], r_cpu[2], f"learnable backward per channel dzero_point axis={axis}", atol=1e-2)
    # Observer + fake quantization (state updated in place on both devices).
    for axis in (None, 1):
        c = 1 if axis is None else 131
        states = {}
        for dev in ("cpu", d):
            st = [torch.full((c,), float("inf"), device=dev), torch.full((c,), -float("inf"), device=dev),
                  torch.ones(c, device=dev), torch.zeros(c, dtype=torch.int32, device=dev)]
            on = torch.tensor(1, device=dev)
            outs = [q8.observe_fake_quantize(x.to(dev) * (1 + step), on, on, *st, 0.01, 0, 255, axis)
                    for step in range(3)]
            states[dev] = (outs[-1], st)
        (o_cpu, s_cpu), (o_gpu, s_gpu) = states["cpu"], states[d]
        ok &= same(o_gpu[0], o_cpu[0], f"observe_fake_quantize out axis={axis}")
        ok &= same(o_gpu[1], o_cpu[1], f"observe_fake_quantize mask axis={axis}")
        for a, b, w in zip(s_gpu, s_cpu, ("running_min", "running_max", "scale", "zero_point")):
            ok &= same(a, b, f"observe_fake_quantize {w} axis={axis}")
    # Histogram observer (state updated in place on both devices) and its qparams.
    for bins in (100, 2048, 9000):
        hs = {}
        for dev in ("cpu", d):
            st = [torch.zeros(bins, dtype=torch.float64, device=dev), torch.full((1,), float("inf"), device=dev),
                  torch.full((1,), -float("inf"), device=dev)]
            on = torch.tensor(1, device=dev)
            for step in range(3):
                q8.histogram_observe(x.to(dev) * (1 + step) - step, on, *st)
            q8.histogram_observe(x.to(dev).relu(), on, *st)  # a hot bin: half the values are 0
            q8.histogram_observe(x.to(dev).half(), on, *st, torch.tensor([-60.0, 70.0], device=dev))
            qp = [q8.histogram_qparams(*st, p, qmin, qmax, sym) for p, qmin, qmax, sym in
                  ((100.0, 0, 255, False), (99.9, 0, 255, False), (99.0, -128, 127, True))]
            hs[dev] = (st, qp)
        for a, b, w in zip(hs[d][0], hs["cpu"][0], ("histogram", "hist_min", "hist_max")):
            ok &= same(a, b, f"histogram_observe {w} bins={bins}")
        for i, (a, b) in enumerate(zip(hs[d][1], hs["cpu"][1])):
            ok &= same(a[0], b[0], f"histogram_qparams scale #{i} bins={bins}")
            ok &= same(a[1], b[1], f"histogram_qparams zero_point #{i} bins={bins}")
    # Int8 linear.
    w = torch.randn(70, 131)
    w8, ws = q8.quantize_weight(w)
    w8d, wsd = q8.quantize_weight(w.to(d))
    ok &= same(w8d, w8, "quantize_weight codes") & same(wsd, ws, "quantize_weight scales")
    packed, packed_d = q8.pack_weight(w8), q8.pack_weight(w8d)
    ok &= same(q8.unpack_weight(packed_d, 70, 131), w8, "unpack_weight")
    bias = torch.randn(70)
    # N = 70 (5 blocks of 16 columns) and M <= 16: the small-M kernels split K on any GPU with 10+ SMs.
    w_long = torch.randn(70, 3000)
    w8l, wsl = q8.quantize_weight(w_long)
    pl, pld = q8.pack_weight(w8l), q8.pack_weight(w8l.to(d))
    for m in (1, 16):
        xm = torch.randn(m, 3000)
        ok &= same(q8.linear(xm.to(d), pld, wsl.to(d), bias.to(d)), q8.linear(xm, pl, wsl, bias),
                   f"linear dyn split-K M={m}")
        ok &= close(q8.linear(xm.to(d), pld, wsl.to(d), bias.to(d), "weight_only"),
                    q8.linear(xm, pl, wsl, bias, "weight_only"), f"linear weight_only split-K M={m}", atol=1e-3)
        ok &= close(q8.linear(xm.to(d).half(), pld, wsl.to(d), bias.to(d), "weight_only"),
                    q8.linear(xm.half(), pl, wsl, bias, "weight_only"), f"linear weight_only fp16 split-K M={m}",
                    rtol=2e-2, atol=5e-2)
        a = torch.randint(0, 256, (m, 3000), dtype=torch.uint8)
        ok &= same(q8.int8_mm(a.to(d), pld, 70), q8.int8_mm(a, pl, 70), f"int8_mm split-K M={m}")
    for m in (1, 5, 16, 17, 40):
        xm = torch.randn(m, 131) * 2
        ok &= same(q8.linear(xm.to(d), packed_d, wsd, bias.to(d)), q8.linear(xm, packed, ws, bias), f"linear dyn M={m}")
        ok &= same(q8.linear(xm.to(d), packed_d, wsd, bias.to(d), "static", s.to(d), torch.tensor(128, device=d)),
                   q8.linear(xm, packed, ws, bias, "static", s, torch.tensor(128)), f"linear static M={m}")
        ok &= close(q8.linear(xm.to(d), packed_d, wsd, bias.to(d), "weight_only"),
                    q8.linear(xm, packed, ws, bias, "weight_only"), f"linear weight_only M={m}")
        a = torch.randint(0, 256, (m, 131), dtype=torch.uint8)
        zp = torch.randint(0, 256, (m,), dtype=torch.int32)
        ok &= same(q8.int8_mm(a.to(d), packed_d, 70, zp.to(d)), q8.int8_mm(a, packed, 70, zp), f"int8_mm M={m}")
    # Int8 conv2d: every path (cuBLASLt, dp4a int32 / int64, depthwise) and the fused epilogue.
    conv, pack_conv, unpack_conv = torch.ops.q8.conv2d, torch.ops.q8.pack_conv_weight, torch.ops.q8.unpack_conv_weight
    cases = [  # N, C, H, W, OC, kernel, stride, padding, groups
        (2, 3, 9, 7, 10, (3, 3), (1, 1), (1, 1), 1),
        (1, 12, 5, 5, 18, (3, 1), (2, 1), (1, 0), 3),
        (2, 16, 7, 6, 16, (3, 3), (2, 2), (1, 1), 16),
        (1, 8192, 3, 3, 3, (3, 3), (1, 1), (0, 0), 1),
    ]
    for (n, c, h, w, oc, k, st, p, g) in cases:
        xc = torch.randn(n, c, h, w) * 2
        xc[-1, 0, 0, 0] = float("nan")
        w8 = torch.randint(-128, 128, (oc, c // g, *k), dtype=torch.int8)
        wsc, bc = torch.rand(oc) * 0.01 + 0.001, torch.randn(oc)
        oh, ow = (h + 2 * p[0] - k[0]) // st[0] + 1, (w + 2 * p[1] - k[1]) // st[1] + 1
        ru = torch.randint(0, 256, (n, oc, oh, ow), dtype=torch.uint8)
        pc, pd = pack_conv(w8, g), pack_conv(w8.to(d), g)
        ok &= same(unpack_conv(pd, oc, c // g, list(k), g), w8, f"conv pack round trip {c}x{oc}")
        geo = dict(kernel_size=list(k), stride=list(st), padding=list(p), groups=g)
        ok &= same(conv(xc.to(d).bfloat16(), pd, wsc.to(d), bc.to(d), **geo, clamp_min=0.0),
                   conv(xc.bfloat16(), pc, wsc, bc, **geo, clamp_min=0.0), f"conv2d dynamic {c}x{oc}")
        xu = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)
        kw = dict(activation="static", input_scale=torch.tensor(0.05), input_zero_point=torch.tensor(100),
                  residual=ru, residual_scale=torch.tensor(0.02), residual_zero_point=torch.tensor(128),
                  clamp_min=0.0, clamp_max=6.0, output_scale=torch.tensor(0.03), output_zero_point=torch.tensor(0))
        kwd = {key: (v.to(d) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
        ok &= same(conv(xu.to(d), pd, wsc.to(d), bc.to(d), **geo, **kwd), conv(xu, pc, wsc, bc, **geo, **kw),
                   f"conv2d static uint8 {c}x{oc}")
    torch.cuda.synchronize()
    print("cuda smoke: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

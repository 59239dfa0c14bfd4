"""Shape-only (fake/meta) implementations of the ops, so torch.compile (torch >= 2.4) can trace
through them without running the kernels. Older torch has no torch.library.register_fake and
does not need it."""
import torch


def _has_register_fake():
    return hasattr(torch, "library") and hasattr(torch.library, "register_fake")


def register_fake_implementations():
    if not _has_register_fake():
        return
    from .modules import coefficient_dtype

    def coefficients(x, *shape):  # H_*, proj, rms: float32 under bfloat16 storage
        return x.new_empty(*shape, dtype=coefficient_dtype(x.dtype))

    @torch.library.register_fake("mhc::pre")
    def _pre(x, phi, bias, alpha, variant, sinkhorn_iters=20):
        N, n, C = x.shape
        return x.new_empty(N, C), coefficients(x, N, n), coefficients(x, N, n), coefficients(x, N, n, n)

    @torch.library.register_fake("mhc::pre_joint")
    def _pre_joint(x, phi, bias, alpha, variant, sinkhorn_iters=20):
        return _pre(x, phi, bias, alpha, variant, sinkhorn_iters) + (x.view(x.shape),)

    @torch.library.register_fake("mhc::post")
    def _post(x, y, H_post, H_res):
        return torch.empty_like(x)

    @torch.library.register_fake("mhc::pre_fwd")
    def _pre_fwd(x, phi, bias, alpha, variant, sinkhorn_iters):
        N, n, C = x.shape
        per_token = n if variant == "hc" else (0 if variant == "residual" else 1)
        return (x.new_empty(N, C), coefficients(x, N, n), coefficients(x, N, n), coefficients(x, N, n, n),
                coefficients(x, N, per_token, phi.shape[1] if phi.dim() == 2 else 0), coefficients(x, N, per_token))

    @torch.library.register_fake("mhc::pre_bwd")
    def _pre_bwd(dh, dH_pre, dH_post, dH_res, x, phi, bias, alpha, proj, rms, variant, sinkhorn_iters, dx_add=None):
        return torch.empty_like(x), torch.empty_like(phi), torch.empty_like(bias), torch.empty_like(alpha)

    @torch.library.register_fake("mhc::post_bwd")
    def _post_bwd(dout, x, y, H_post, H_res):
        return torch.empty_like(x), torch.empty_like(y), torch.empty_like(H_post), torch.empty_like(H_res)

    @torch.library.register_fake("mhc::boundary")
    def _boundary(x, y, H_post, H_res, phi, bias, alpha, variant, sinkhorn_iters=20):
        return (torch.empty_like(x),) + _pre(x, phi, bias, alpha, variant, sinkhorn_iters)

    @torch.library.register_fake("mhc::boundary_fwd")
    def _boundary_fwd(x, y, H_post, H_res, phi, bias, alpha, variant, sinkhorn_iters):
        return (torch.empty_like(x),) + _pre_fwd(x, phi, bias, alpha, variant, sinkhorn_iters)

    @torch.library.register_fake("mhc::boundary_bwd")
    def _boundary_bwd(dh, dH_pre, dH_post_next, dH_res_next, dx_next, x, y, H_post, H_res, x_next, phi, bias, alpha,
                      proj, rms, variant, sinkhorn_iters):
        return (torch.empty_like(x), torch.empty_like(y), torch.empty_like(H_post), torch.empty_like(H_res),
                torch.empty_like(phi), torch.empty_like(bias), torch.empty_like(alpha))

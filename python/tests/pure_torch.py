"""An independent pure-PyTorch implementation of the residual family, written from DESIGN.md §1–2
alone (not from the C++ reference), for the Python tests and python/bench.py to compare with.

Same parameter layouts as the library (python/mhc/modules.py): phi [K, m], bias [B], alpha [A].
"mhc-v4" is DeepSeek-V4's own math (deepseek_v4_mix, from V4's release) on V4's fn/base/scale, which
to_deepseek_v4_layout reads off mhc-v4's phi/bias/alpha (DESIGN.md §9).
"""
import itertools
import math

import torch

EPS = 1e-6


def rms(v):
    return torch.sqrt(v.pow(2).mean(-1, keepdim=True) + EPS)


def permutation_matrices(n, dtype=torch.float64):
    perms = list(itertools.permutations(range(n)))  # lexicographic, identity first
    P = torch.zeros(len(perms), n, n, dtype=dtype)
    for k, sigma in enumerate(perms):
        for i, j in enumerate(sigma):
            P[k, i, j] = 1.0
    return P


def kronecker_factors(n):
    """KromHC's factor sizes: n = 2^a·3^b as [2]*a + [3]*b."""
    factors = []
    for f in (2, 3):
        while n % f == 0:
            factors.append(f)
            n //= f
    if n != 1:
        raise ValueError(f"kromhc needs n = 2^a·3^b, got a factor {n}")
    return factors


def permutation_mixture(logits, f):
    """softmax(logits) [N, f!] over the f x f permutation matrices -> [N, f, f]."""
    weights = torch.softmax(logits, dim=-1)
    return torch.einsum("nk,kij->nij", weights, permutation_matrices(f, logits.dtype).to(logits.device))


def kronecker(factors):
    """U_1 ⊗ … ⊗ U_K per token; entry [i, j] is the product of U_k at the k-th digits of i and j."""
    sizes = [U.shape[-1] for U in factors]
    n = math.prod(sizes)
    entries = []
    for i in range(n):
        for j in range(n):
            entry, a, b = 1.0, i, j
            for U, f in reversed(list(zip(factors, sizes))):  # least significant digit last
                entry = entry * U[:, a % f, b % f]
                a, b = a // f, b // f
            entries.append(entry)
    return torch.stack(entries, dim=-1).view(-1, n, n)


def sinkhorn(logits, t):
    """SK_t(exp(logits)), columns first, rows last; column-max shift before exp (t ≥ 1)."""
    if t == 0:
        return logits.exp()
    M = (logits - logits.max(dim=-2, keepdim=True).values.detach()).exp()
    for _ in range(t):
        M = M / M.sum(dim=-2, keepdim=True)
        M = M / M.sum(dim=-1, keepdim=True)
    return M


def parse_spec(spec):
    """'gomhc:block_size=1' -> ('gomhc', {'block_size': 1}), with DESIGN.md §11's defaults."""
    name, _, items = spec.partition(":")
    options = {"block_size": 2, "cayley_iters": 0, "cayley_scale": 0.1}
    for item in filter(None, items.split(":")):
        key, value = item.split("=")
        options[key] = float(value) if key == "cayley_scale" else int(value)
    return name, options


def cayley(B, iters=0):
    """(I − B)⁻¹(I + B) by a solve, or JPmHC's iters steps Y ← I + B(I + Y) from Y = I + 2B."""
    I = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device).expand_as(B)
    if iters == 0:
        return torch.linalg.solve(I - B, I + B)
    Y = I + 2 * B
    for _ in range(iters):
        Y = I + B @ (I + Y)
    return Y


def jpmhc_coefficients(x, phi, bias, alpha, options):
    """JPmHC: LayerNorm read, row-softmax pre (column means), column-softmax post (row sums), Cayley H_res."""
    N, n, C = x.shape
    v = x.reshape(N, n * C)
    u = torch.nn.functional.layer_norm(v, (n * C,), eps=EPS)
    g = u @ phi
    block = lambda k: (alpha[k] * g[:, k * n * n:(k + 1) * n * n] + bias[k * n * n:(k + 1) * n * n]).view(N, n, n)
    Z = block(2)
    B = options["cayley_scale"] / 2 * (Z - Z.transpose(1, 2))
    return block(0).softmax(2).mean(1), block(1).softmax(1).sum(2), cayley(B, options["cayley_iters"])


def orthostochastic(theta, n, s):
    """go-mHC: A skew from its strict upper triangle, O = (I − A)(I + A)⁻¹, block means of O²."""
    N, d = theta.shape[0], n * s
    rows, cols = torch.triu_indices(d, d, 1)
    A = theta.new_zeros(N, d, d)
    A[:, rows, cols] = theta
    A = A - A.transpose(1, 2)
    I = torch.eye(d, dtype=theta.dtype, device=theta.device)
    O = (I - A) @ torch.linalg.inv(I + A)
    return O.square().view(N, n, s, n, s).sum((2, 4)) / s


def coefficients(x, phi, bias, alpha, spec, t=20):
    """x [N, n, C] -> (H_pre [N, n], H_post [N, n], H_res [N, n, n])."""
    N, n, C = x.shape
    variant, options = parse_spec(spec)
    if variant == "jpmhc":
        return jpmhc_coefficients(x, phi, bias, alpha, options)
    if variant == "residual":
        one = x.new_ones(N, 1)
        return one, one, one.view(N, 1, 1)
    if variant == "hc":
        u = torch.tanh((x @ phi) / rms(x))  # [N, n, n+2]: per-stream x̄_i · [w_pre | w_post | W_res]
        a_pre, b_post, A_res = bias[:n], bias[n:2 * n], bias[2 * n:].view(n, n)
        s_alpha, s_beta = alpha[0], alpha[1]
        H_pre = a_pre + s_alpha * u[..., 0]
        H_post = b_post + s_beta * u[..., 1]
        H_res = A_res + s_alpha * u[..., 2:].transpose(-1, -2)  # H_res[k, i] uses stream i's gate k
        return H_pre, H_post, H_res
    if variant == "mhc-v4":
        H_pre, H_post, comb = deepseek_v4_mix(x, *to_deepseek_v4_layout(phi, bias, alpha), iters=t)
        return H_pre, H_post, comb.transpose(-1, -2)
    v = x.reshape(N, n * C)
    g = (v @ phi) / rms(v)
    pre = alpha[0] * g[:, :n] + bias[:n]
    post = alpha[1] * g[:, n:2 * n] + bias[n:2 * n]
    res = alpha[2] * g[:, 2 * n:] + bias[2 * n:] if g.shape[1] > 2 * n else None
    if variant == "mhc":
        H_res = sinkhorn(res.view(N, n, n), t)
    elif variant == "mhc-lite":
        weights = torch.softmax(res, dim=-1)
        H_res = torch.einsum("nk,kij->nij", weights, permutation_matrices(n, x.dtype).to(x.device))
    elif variant == "kromhc":
        factors, start = [], 0
        for f in kronecker_factors(n):
            count = math.factorial(f)
            factors.append(permutation_mixture(res[:, start:start + count], f))
            start += count
        H_res = kronecker(factors)
    elif variant == "ihc" or (variant == "gomhc" and res is None):  # gomhc at d = 1 has no logits
        H_res = torch.eye(n, dtype=x.dtype, device=x.device).expand(N, n, n)
    elif variant == "gomhc":
        H_res = orthostochastic(res, n, options["block_size"])
    else:
        raise ValueError(variant)
    return torch.sigmoid(pre), 2 * torch.sigmoid(post), H_res


def pre(x, phi, bias, alpha, variant, t=20):
    H_pre, H_post, H_res = coefficients(x, phi, bias, alpha, variant, t)
    h = torch.einsum("ni,nic->nc", H_pre, x)
    return h, H_pre, H_post, H_res


def post(x, y, H_post, H_res):
    return torch.einsum("nkj,njc->nkc", H_res, x) + H_post.unsqueeze(-1) * y.unsqueeze(1)


def layout(spec, n, C):
    """(phi shape, bias size, alpha size)."""
    variant, options = parse_spec(spec)
    if variant == "jpmhc":
        return (n * C, 3 * n * n), 3 * n * n, 3
    if variant == "residual":
        return (0, 0), 0, 0
    if variant == "hc":
        return (C, n + 2), 2 * n + n * n, 2
    res = {"mhc": n * n, "mhc-lite": math.factorial(n), "ihc": 0}.get(variant)
    if variant == "kromhc":
        res = sum(math.factorial(f) for f in kronecker_factors(n))
    if variant == "gomhc":
        d = n * options["block_size"]
        res = d * (d - 1) // 2
    return (n * C, 2 * n + res), 2 * n + res, 3 if res else 2


def to_deepseek_v4_layout(phi, bias, alpha):
    """mhc-v4's (phi [n·C, 2n + n²], bias, alpha) -> V4's (fn [(2+n)·n, n·C], base, scale): phi
    transposed, the comb block's (destination, source) order swapped to V4's (source, destination)."""
    n = round(math.sqrt(bias.numel() + 1)) - 1  # bias holds 2n + n² = (n + 1)² - 1 values
    swap = lambda v: torch.cat([v[..., :2 * n], v[..., 2 * n:].unflatten(-1, (n, n)).transpose(-1, -2).flatten(-2)], -1)
    return swap(phi).T, swap(bias), alpha


def deepseek_v4_mix(x, fn, base, scale, iters=20, eps=1e-6):
    """DeepSeek-V4's hc_pre coefficients as released (DESIGN.md §9), in V4's own orientation and
    names: x [N, n, C] -> (pre [N, n], post [N, n], comb [N, n, n] with comb[j, k], j the source)."""
    N, n, C = x.shape
    v = x.reshape(N, n * C)
    mix = (v @ fn.T) * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    pre = torch.sigmoid(mix[:, :n] * scale[0] + base[:n]) + eps
    post = 2 * torch.sigmoid(mix[:, n:2 * n] * scale[1] + base[n:2 * n])
    comb = (mix[:, 2 * n:] * scale[2] + base[2 * n:]).view(N, n, n)
    comb = torch.softmax(comb, dim=-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return pre, post, comb


def deepseek_v4_sublayer(x, y, pre, post, comb):
    """V4's hc_pre input h = Σ_j pre_j·x_j and hc_post x'_k = post_k·y + Σ_j comb[j, k]·x_j."""
    h = (pre.unsqueeze(-1) * x).sum(1)
    return h, post.unsqueeze(-1) * y.unsqueeze(1) + (comb.unsqueeze(-1) * x.unsqueeze(2)).sum(1)


def deepseek_v4_head(x, fn, base, scale, eps=1e-6):
    """V4's hc_head: Σ_j w_j·x_j with w = σ((fn·v)·rsqrt(mean(v²) + 1e-6)·scale + base) + eps."""
    N, n, C = x.shape
    v = x.reshape(N, n * C)
    w = torch.sigmoid((v @ fn.T) * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * scale + base) + eps
    return (w.unsqueeze(-1) * x).sum(1)

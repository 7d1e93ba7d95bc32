"""Efficient non-local contrastive attention (ENLCA) and the exact non-local attention beside it.

Paper: Efficient Non-Local Contrastive Attention for Image Super-Resolution (Xia et al., AAAI 2022).

Tensors of the attention cores are laid out as (B, N, c): B images, N = H * W pixels, c channels.

- :func:`draw_random_matrix`: the Gaussian random matrix F (m x c) of Eq. 4, i.i.d. or with
  orthogonal rows (section 3.1, after Eq. 7).
- :func:`random_features`: phi(u) of Eq. 4, with the optional max-shift that keeps it finite.
- :func:`efficient_attention`: ENLA, Eq. 5-6, linear in N.
- :func:`softmax_attention`: exact non-local attention, Eq. 1, quadratic in N (naive, or through
  ``torch.nn.functional.scaled_dot_product_attention``).
- :class:`ENLA`: efficient_attention with F as a buffer and its redraw schedule.
- :class:`ENLCA` and :class:`NonLocalAttention`: modules on feature maps (B, C, H, W) with the
  same embeddings theta, delta, psi (Eq. 2-3) and parameter names, so that weights load from one
  into the other.

Nothing here is registered; :mod:`acla_basicsr.archs.enlcn_arch` builds the network.
"""
import hashlib
import math
import torch
from torch import nn as nn
from torch.nn import functional as F


def draw_random_matrix(num_samples, dim, generator=None, orthogonal=True, dtype=torch.float32):
    """Draw the Gaussian random matrix F of Eq. 4 on the CPU.

    With ``orthogonal=True`` the rows are drawn in blocks of ``dim`` rows that are exactly
    orthogonal to each other (QR of a Gaussian matrix), each row then rescaled by the norm of an
    independent Gaussian vector, so that every row is still marginally N(0, I_c): phi(q).phi(k)
    stays an unbiased estimate of exp(q.k) (Eq. 4) and its variance is lower than with i.i.d.
    rows (Choromanski et al. 2017, cited after Eq. 7). Rows of different blocks are independent.

    Args:
        num_samples (int): m, the number of random samples (rows).
        dim (int): c, the dimension of the queries and keys (columns).
        generator (torch.Generator | None): CPU generator to draw from. Default: None (global RNG).
        orthogonal (bool): Orthogonal rows within blocks of ``dim``. Default: True.
        dtype (torch.dtype): Type of the result. Default: torch.float32.

    Returns:
        Tensor: (num_samples, dim), on the CPU.
    """
    if not orthogonal:
        return torch.randn(num_samples, dim, generator=generator, dtype=torch.float64).to(dtype)
    num_blocks = math.ceil(num_samples / dim)
    gaussian = torch.randn(num_blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # sign fix: makes Q Haar-distributed (QR alone is biased by the sign convention of R's diagonal)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows = q.transpose(-2, -1).reshape(num_blocks * dim, dim)[:num_samples]
    norms = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (rows * norms).to(dtype)


def random_features(u, matrix, stabilizer=None):
    """Positive random features phi(u) = exp(F u - |u|^2 / 2) / sqrt(m) (Eq. 4).

    phi(q).phi(k) is an unbiased estimate of exp(q.k) when the rows of F are N(0, I_c).
    exp(F u) overflows for large |u|; as in Performer's positive random features, a shift
    ``stabilizer`` (broadcast against the (..., m) projections) is subtracted in the exponent.
    It multiplies phi by exp(-stabilizer), which cancels between the numerator and the
    normaliser D of Eq. 5-6 as long as it is one constant per query row ('row') or one
    constant for all keys of an image ('all'); the shift itself gets no gradient, since its
    exact gradient contributions cancel too.

    Args:
        u (Tensor): (..., N, c) queries or keys.
        matrix (Tensor): F, (m, c), or a batch (..., m, c) of them.
        stabilizer (str | None): None (exact phi, for tests), 'row' (subtract the max over the m
            features of each row: for queries) or 'all' (subtract the max over all rows and
            features of each batch item: for keys). Default: None.

    Returns:
        Tensor: (..., N, m).
    """
    projection = u @ matrix.transpose(-2, -1) - 0.5 * u.pow(2).sum(dim=-1, keepdim=True)
    if stabilizer == 'row':
        projection = projection - projection.amax(dim=-1, keepdim=True).detach()
    elif stabilizer == 'all':
        projection = projection - projection.amax(dim=(-2, -1), keepdim=True).detach()
    elif stabilizer is not None:
        raise ValueError(f"stabilizer: unknown value '{stabilizer}'; use None, 'row' or 'all'.")
    return torch.exp(projection) / math.sqrt(matrix.shape[-2])


def efficient_attention(q, k, v, matrix):
    """Efficient non-local attention (ENLA), Eq. 5-6: D^-1 (phi(Q) (phi(K)^T V)).

    Costs O(2mNc + 2mNc_out + mN) multiply-accumulates (section 3.1) instead of O(N^2 c).
    Factors that are constant per query row (exp(-|q|^2 / 2), 1 / sqrt(m) and the max-shift of
    :func:`random_features`) or constant over all keys of an image (1 / sqrt(m), the max-shift)
    cancel between phi(Q) (phi(K)^T V) and D, so they are skipped or chosen for stability; the
    result is Eq. 5-6 exactly. D is computed in the same product as the numerator, as an extra
    column of phi(K)^T [V, 1]. Half-precision inputs are computed in float32 (sums over N pixels
    can overflow float16).

    Args:
        q (Tensor): (B, N, c) queries (already amplified as in Eq. 3).
        k (Tensor): (B, N, c) keys.
        v (Tensor): (B, N, c_out) values.
        matrix (Tensor): F, (m, c).

    Returns:
        Tensor: (B, N, c_out), in the dtype of ``v``.
    """
    out_dtype = v.dtype
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    no_grad = not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, matrix)))
    if no_grad and not _tracing() and q.shape[-2] == k.shape[-2]:  # the inference path reuses phi(K)'s buffer
        # float32 like the inputs: under autocast its products would come out in half precision, which the
        # float32 buffers they are written into (``out=``) refuse
        with torch.autocast(q.device.type, enabled=False):
            return _efficient_attention_no_grad(q, k, v, matrix).to(out_dtype)
    matrix = matrix.to(q.dtype).t()
    # in-place shifts and exp: the products' outputs are not needed by autograd, exp keeps its result
    phi_q = q @ matrix  # (B, N, m)
    phi_q = phi_q.sub_(phi_q.amax(dim=-1, keepdim=True).detach()).exp_()
    phi_k = k @ matrix
    half_norm = 0.5 * k.pow(2).sum(dim=-1, keepdim=True)  # (B, N, 1)
    # one shift per key: |k|^2 / 2 plus the max over the image of (k.f_l - |k|^2 / 2)
    shift = half_norm + (phi_k.amax(dim=-1, keepdim=True) - half_norm).amax(dim=-2, keepdim=True).detach()
    phi_k = phi_k.sub_(shift).exp_()
    kv = phi_k.transpose(1, 2) @ v  # (B, m, c_out)
    kv = torch.cat([kv, phi_k.sum(dim=1).unsqueeze(-1)], dim=-1)  # last column: phi(K) 1_N (Eq. 6)
    out = phi_q @ kv  # (B, N, c_out + 1)
    normaliser = out[..., -1:]  # the diagonal of D
    out = out[..., :-1] / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)
    return out.to(out_dtype)


def _tracing():
    """Whether a tracer records the call (ONNX export, ``torch.jit.trace``, ``torch.compile``).

    The inference path of :func:`efficient_attention` writes into buffers shaped from the input's sizes, which
    a trace would freeze (an ONNX graph exported at one size then fails at another); traced calls take the
    shape-agnostic path, which computes the same output.
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _efficient_attention_no_grad(q, k, v, matrix):
    """:func:`efficient_attention` without autograd: the same shifts and products, fewer passes over N x m.

    The time of ENLA on a CPU goes to its four (N x c) x (c x m)-sized matrix products and to the passes over
    the (B, N, m) features around them (docs/enlca.md, profile). Without gradients:

    - one (B, N, m) buffer serves phi(K), then phi(Q) (``torch.mm(..., out=)``): every fresh (N, m) tensor costs
      its page faults on the CPU, about as much as a pass over it;
    - phi(K)^T [V, 1] is written into a (B, m, c_pad) buffer whose width c_out + 1 is rounded up to a multiple
      of 8 (zero columns): the last product phi(Q) (phi(K)^T [V, 1]) runs faster at width 72 than at 65
      (docs/enlca.md, profile);
    - D^-1 is applied in place to the columns of the product.

    The result is the same floating-point computation as the autograd path (same order of the shifts, exp and
    products); tests compare the two.
    """
    b, n, c = k.shape
    m, c_out = matrix.shape[0], v.shape[-1]
    matrix = matrix.to(q.dtype).t()
    phi = torch.mm(k.reshape(b * n, c), matrix).view(b, n, m)  # phi(K) exponents
    half_norm = 0.5 * k.pow(2).sum(dim=-1, keepdim=True)
    shift = half_norm + (phi.amax(dim=-1, keepdim=True) - half_norm).amax(dim=-2, keepdim=True)
    phi.sub_(shift).exp_()
    kv = phi.new_zeros(b, m, -(-(c_out + 1) // 8) * 8)  # [phi(K)^T V, phi(K)^T 1_N, 0 ...]
    kv[..., :c_out] = phi.transpose(1, 2) @ v
    kv[..., c_out] = phi.sum(dim=1)
    torch.mm(q.reshape(b * n, c), matrix, out=phi.view(b * n, m))  # the buffer now holds phi(Q) exponents
    phi.sub_(phi.amax(dim=-1, keepdim=True)).exp_()
    out = phi @ kv  # (B, N, c_pad)
    normaliser = out[..., c_out:c_out + 1]
    return out[..., :c_out].div_(normaliser.clamp_min_(torch.finfo(normaliser.dtype).tiny))


def softmax_attention(q, k, v, implementation='naive'):
    """Exact non-local attention, Eq. 1: softmax_j(q_i . k_j) weighted sum of v_j (no scaling).

    Args:
        q (Tensor): (B, N, c) queries.
        k (Tensor): (B, N, c) keys.
        v (Tensor): (B, N, c_out) values.
        implementation (str): 'naive' (the N x N matrix, then softmax) or 'sdpa'
            (``torch.nn.functional.scaled_dot_product_attention`` with scale 1, which uses a
            fused, memory-efficient kernel where one exists). Default: 'naive'.

    Returns:
        Tensor: (B, N, c_out).
    """
    if implementation == 'naive':
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    if implementation == 'sdpa':
        # strided inputs make the CPU kernel fall back to a path that builds the N x N matrix
        return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=1.0)
    raise ValueError(f"implementation: unknown value '{implementation}'; use 'naive' or 'sdpa'.")


class ENLA(nn.Module):
    """Efficient non-local attention core (Eq. 4-6) with its random matrix and redraw schedule.

    F is a buffer, so it is saved in checkpoints and moves with the module. It is redrawn after
    every ``redraw_every`` forward passes in training mode (the paper redraws it every epoch,
    section 4.2; an epoch of its recipe is 1000 iterations) and never in evaluation mode. Draw
    number r uses a CPU ``torch.Generator`` seeded with (seed, r), both kept as buffers, so every
    process of a distributed run draws the same F without communicating, and a resumed run
    continues the same sequence.

    Args:
        dim (int): c, the dimension of queries and keys.
        num_samples (int): m, the number of random samples. Default: 128.
        orthogonal (bool): Orthogonal random samples (lower variance). Default: True.
        redraw_every (int): Training forward passes between two draws of F; 0 keeps F fixed.
            Default: 1000.
        seed (int): Seed of the draws; give each module of a network its own. Default: 0.
    """

    def __init__(self, dim, num_samples=128, orthogonal=True, redraw_every=1000, seed=0):
        super().__init__()
        for key, value in (('dim', dim), ('num_samples', num_samples)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{key}: {value!r} must be a positive integer.')
        if not isinstance(redraw_every, int) or redraw_every < 0:
            raise ValueError(f'redraw_every: {redraw_every!r} must be an integer >= 0 (0: never redraw).')
        if not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f'seed: {seed!r} must be an integer in 0..2^31-1.')
        self.orthogonal = orthogonal
        self.redraw_every = redraw_every
        self.register_buffer('seed', torch.tensor(seed, dtype=torch.int64))
        self.register_buffer('num_draws', torch.tensor(0, dtype=torch.int64))
        self.register_buffer('forward_count', torch.tensor(0, dtype=torch.int64))
        self.register_buffer('matrix', self._draw(num_samples, dim, seed, 0))
        self._count = None  # host copy of forward_count: read once after construction or loading

    def _load_from_state_dict(self, *args, **kwargs):
        self._count = None
        super()._load_from_state_dict(*args, **kwargs)

    def _draw(self, num_samples, dim, seed, draw):
        # torch's CPU generator keeps 32 bits of a seed: hash (seed, draw) into them, so that the
        # streams of different modules and draws do not collide
        key = hashlib.sha256(f'ENLA:{seed}:{draw}'.encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key[:4], 'little'))
        return draw_random_matrix(num_samples, dim, generator, self.orthogonal)

    @torch.no_grad()
    def redraw(self):
        """Draw the next F of this module's sequence, in place (same device and dtype)."""
        self.num_draws += 1
        matrix = self._draw(*self.matrix.shape, int(self.seed), int(self.num_draws))
        self.matrix.copy_(matrix)
        self.forward_count.zero_()
        self._count = 0

    def forward(self, q, k, v):
        """Attend (B, N, c) queries to keys and (B, N, c_out) values; returns (B, N, c_out)."""
        if self.training and self.redraw_every:
            # the schedule runs on a host copy of the count: reading the buffer every pass would wait for the device
            if self._count is None:
                self._count = int(self.forward_count)
            if self._count >= self.redraw_every:
                self.redraw()
            self._count += 1
            self.forward_count += 1
        return efficient_attention(q, k, v, self.matrix)

    def extra_repr(self):
        return (f'dim={self.matrix.shape[1]}, num_samples={self.matrix.shape[0]}, '
                f'orthogonal={self.orthogonal}, redraw_every={self.redraw_every}')


class _EmbeddedAttention(nn.Module):
    """Embeddings theta, delta, psi (Eq. 2) of a feature map, an attention core and a residual.

    theta and delta are 1x1 convolutions to ``num_embed_feat`` channels, psi a 1x1 convolution
    keeping ``num_feat`` channels (the paper leaves them unspecified; 1x1 embeddings are the
    non-local convention and keep the module's cost near one convolution, section 4.3). They are
    plain convolutions, as in the public ENLCA code (``act=None``); ``embedding_activation:
    prelu`` puts a PReLU after each (this project's first version). Either way the convolution is
    entry 0 of an ``nn.Sequential``, so parameter names do not depend on the choice.
    Output: x + res_scale * attention(x).
    """

    def __init__(self, num_feat, num_embed_feat, res_scale, embedding_activation=None):
        super().__init__()
        for key, value in (('num_feat', num_feat), ('num_embed_feat', num_embed_feat)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{key}: {value!r} must be a positive integer.')
        if embedding_activation not in (None, 'prelu'):
            raise ValueError(f"embedding_activation: unknown value {embedding_activation!r}; use ~ (plain 1x1 "
                             "convolutions, as the public code) or 'prelu'.")
        self.res_scale = res_scale
        self.embedding_activation = embedding_activation

        def embedding(out_feat):
            conv = nn.Conv2d(num_feat, out_feat, 1)
            return nn.Sequential(conv, nn.PReLU()) if embedding_activation == 'prelu' else nn.Sequential(conv)

        self.conv_query = embedding(num_embed_feat)
        self.conv_key = embedding(num_embed_feat)
        self.conv_value = embedding(num_feat)

    def embed(self, x):
        """(B, C, H, W) -> theta(x), delta(x) as (B, N, c) and psi(x) as (B, N, C)."""
        # contiguous (B, N, c): fused attention kernels fall back to slow paths on strided inputs
        return tuple(
            conv(x).flatten(2).transpose(1, 2).contiguous()
            for conv in (self.conv_query, self.conv_key, self.conv_value))

    def attend(self, q, k, v):
        raise NotImplementedError

    def forward(self, x):
        b, c, h, w = x.shape
        out = self.attend(*self.embed(x))
        return x + self.res_scale * out.transpose(1, 2).reshape(b, c, h, w)


class ENLCA(_EmbeddedAttention):
    """Efficient Non-Local Contrastive Attention: ENLA (Eq. 3-6) with sparse aggregation (3.2).

    Queries and keys are normalised per pixel and multiplied by sqrt(k) (Eq. 3), so that
    Q_i.K_j = k cos(theta_i, delta_j): the amplification k sharpens the attention on relevant
    pixels; the other half of sparse aggregation, the contrastive loss of Eq. 8-10, is
    :class:`acla_basicsr.losses.enlca_contrastive_loss.ENLCAContrastiveLoss`. Eq. 3 as printed
    divides K by the norm of theta(X); we divide it by its own norm, which is what the cosine
    of Eq. 8 and the bounded variance argument of Eq. 7 assume.

    The loss reads the unit-norm embeddings of the last training forward pass: it sets
    ``store_embeddings`` when it needs them, and the module then keeps them in
    ``stored_embeddings`` (a pair of (B, N, c) tensors). Nothing is kept in evaluation mode.

    Args:
        num_feat (int): Channels of the feature map. Default: 256.
        num_embed_feat (int): c, channels of the query and key embeddings. Default: 64.
        num_samples (int): m, random samples of ENLA. Default: 128.
        amplification (float): k of Eq. 3 (> 0; 1 is plain ENLA). Default: 6.
        orthogonal (bool): Orthogonal random samples. Default: True.
        redraw_every (int): Training forward passes between draws of F (0: never). Default: 1000.
        seed (int): Seed of the random matrices. Default: 0.
        res_scale (float): Scale of the attention output added to the input (ENLCN passes its
            ``attention_res_scale``, 0.1 as in the public code). Default: 1.
        embedding_activation (str | None): None: plain 1x1 embeddings (public code); 'prelu'.
            Default: None.
    """

    def __init__(self,
                 num_feat=256,
                 num_embed_feat=64,
                 num_samples=128,
                 amplification=6.,
                 orthogonal=True,
                 redraw_every=1000,
                 seed=0,
                 res_scale=1.,
                 embedding_activation=None):
        super().__init__(num_feat, num_embed_feat, res_scale, embedding_activation)
        if not isinstance(amplification, (int, float)) or amplification <= 0:
            raise ValueError(f'amplification: {amplification!r} must be a number > 0 (the paper uses 6).')
        self.amplification = float(amplification)
        self.attention = ENLA(num_embed_feat, num_samples, orthogonal, redraw_every, seed)
        self.store_embeddings = False
        self.stored_embeddings = None

    def attend(self, q, k, v):
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        self.stored_embeddings = (q, k) if (self.training and self.store_embeddings) else None
        scale = math.sqrt(self.amplification)
        return self.attention(q * scale, k * scale, v)


class NonLocalAttention(_EmbeddedAttention):
    """Exact non-local attention (Eq. 1-2), the quadratic reference of :class:`ENLCA`.

    It has the parameters of ENLCA under the same names, so ``load_state_dict(..., strict=False)``
    moves weights between the two. ENLCA's output is an estimate of this module's whose error
    falls as m grows but grows fast with the amplification: measured on random unit embeddings
    (c = 64, N = 1024), the relative error of ENLA at m = 128 is about 0.16 for k = 1 and about 3
    for the paper's k = 6 (docs/enlca.md); at k = 6 ENLCA is a different attention, not a close
    approximation of this one (ENLCA paper, Eq. 7 and Fig. 6).

    Args:
        num_feat (int): Channels of the feature map. Default: 256.
        num_embed_feat (int): c, channels of the query and key embeddings. Default: 64.
        amplification (float | None): None: Eq. 1 on the raw embeddings (standard non-local
            attention); a number k: embeddings normalised and amplified as in Eq. 3. Default: None.
        implementation (str): 'naive' or 'sdpa', see :func:`softmax_attention`. Default: 'sdpa'.
        res_scale (float): Scale of the attention output added to the input. Default: 1.
        embedding_activation (str | None): None (plain 1x1 embeddings) or 'prelu'. Default: None.
    """

    def __init__(self, num_feat=256, num_embed_feat=64, amplification=None, implementation='sdpa', res_scale=1.,
                 embedding_activation=None):
        super().__init__(num_feat, num_embed_feat, res_scale, embedding_activation)
        if amplification is not None and (not isinstance(amplification, (int, float)) or amplification <= 0):
            raise ValueError(f'amplification: {amplification!r} must be ~ or a number > 0.')
        if implementation not in ('naive', 'sdpa'):
            raise ValueError(f"implementation: unknown value '{implementation}'; use 'naive' or 'sdpa'.")
        self.amplification = amplification
        self.implementation = implementation

    def attend(self, q, k, v):
        if self.amplification is not None:
            scale = math.sqrt(self.amplification)
            q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1) * scale
        return softmax_attention(q, k, v, self.implementation)

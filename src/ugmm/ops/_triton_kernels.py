"""Triton kernels of the uGMM op (plain functions; :mod:`ugmm.ops.triton` jit-compiles or interprets them).

Notation (one layer): x (B, K) inputs, per component (j, k) of neuron j on input k

    inv[j, k] = 1 / sigma[j, k]
    c[j, k]   = log pi[j, k] - log sigma[j, k] - log sqrt(2 pi)       (-inf for a dropped component)
    z         = (x[b, k] - mu[j, k]) * inv[j, k]
    q         = c[j, k] - z^2 / 2                                      (component log-density)
    y[b, j]   = logsumexp_k q                                          (forward)
    r         = exp(q - y[b, j]),   G = g[b, j] * r                    (backward, g = dL/dy)

    dx[b, k]     = -sum_j G z inv          dmu[j, k]    = inv * sum_b G z
    dsigma[j, k] = inv * sum_b G (z^2 - 1) dlogpi[j, k] = sum_b G

All tensors are contiguous row-major. Every kernel works on 3-D register tiles (BLOCK_B, BLOCK_J,
BLOCK_K) with k the fastest axis, so loads of x and of the parameters are contiguous. Ragged edges are
masked: out-of-range components load c = -inf (they contribute exp(-inf) = 0), out-of-range rows load
g = 0 and y = -inf (they contribute G = 0). No kernel ever stores a (B, J, K) tensor.

This module deliberately has no ``from __future__ import annotations``: Triton reads the
``tl.constexpr`` annotations as objects.
"""

import triton.language as tl


def mixture_fwd_kernel(
    x_ptr,
    mu_ptr,
    inv_ptr,
    c_ptr,
    y_ptr,
    B,
    J,
    K,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[b, j] = logsumexp_k q[b, j, k]. Grid: (B tiles, J tiles); loop over K tiles.

    Online logsumexp, as in flash attention: keep a running max m and a running sum s of exp(q - m);
    when a tile raises the max, rescale s by exp(m_old - m_new) once per tile.
    """
    pid_b = tl.program_id(0)
    pid_j = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_b = offs_b < B
    mask_j = offs_j < J
    dt = y_ptr.dtype.element_ty

    m = tl.full([BLOCK_B, BLOCK_J], float("-inf"), dt)  # running max of q over k
    s = tl.zeros([BLOCK_B, BLOCK_J], dt)  # running sum of exp(q - m)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
        p_offs = offs_j[:, None] * K + offs_k[None, :]
        p_mask = mask_j[:, None] & mask_k[None, :]
        mu = tl.load(mu_ptr + p_offs, mask=p_mask, other=0.0)
        inv = tl.load(inv_ptr + p_offs, mask=p_mask, other=1.0)
        c = tl.load(c_ptr + p_offs, mask=p_mask, other=float("-inf"))

        # centred form z = (x - mu) / sigma, never the expanded quadratic
        z = (x[:, None, :] - mu[None, :, :]) * inv[None, :, :]  # (BLOCK_B, BLOCK_J, BLOCK_K)
        q = c[None, :, :] - 0.5 * z * z
        m_new = tl.maximum(m, tl.max(q, axis=2))
        # a row whose components are all -inf so far: shift by 0, so exp(-inf - 0) = 0 and not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(q - m_safe[:, :, None]), axis=2)
        m = m_new

    # s == 0 only when every component is -inf: log(0) = -inf, the right answer
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    y = m_safe + tl.log(s)
    tl.store(y_ptr + offs_b[:, None] * J + offs_j[None, :], y, mask=mask_b[:, None] & mask_j[None, :])


def mixture_bwd_x_kernel(
    x_ptr,
    mu_ptr,
    inv_ptr,
    c_ptr,
    y_ptr,
    g_ptr,
    dx_ptr,
    B,
    J,
    K,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx[b, k] = -sum_j G z inv. Grid: (B tiles, K tiles); loop over J tiles, recomputing r."""
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_k = offs_k < K
    dt = dx_ptr.dtype.element_ty

    x = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_K], dt)
    for j0 in range(0, J, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < J
        o_offs = offs_b[:, None] * J + offs_j[None, :]
        o_mask = mask_b[:, None] & mask_j[None, :]
        y = tl.load(y_ptr + o_offs, mask=o_mask, other=float("-inf"))
        g = tl.load(g_ptr + o_offs, mask=o_mask, other=0.0)
        # rows with y = -inf (no live component) or g = 0 contribute nothing: shift by +inf, weight 0
        live = (y > float("-inf")) & (g != 0.0)
        y = tl.where(live, y, float("inf"))
        g = tl.where(live, g, 0.0)

        p_offs = offs_j[:, None] * K + offs_k[None, :]
        p_mask = mask_j[:, None] & mask_k[None, :]
        mu = tl.load(mu_ptr + p_offs, mask=p_mask, other=0.0)
        inv = tl.load(inv_ptr + p_offs, mask=p_mask, other=1.0)
        c = tl.load(c_ptr + p_offs, mask=p_mask, other=float("-inf"))

        z = (x[:, None, :] - mu[None, :, :]) * inv[None, :, :]
        q = c[None, :, :] - 0.5 * z * z
        G = g[:, :, None] * tl.exp(q - y[:, :, None])  # g * responsibility, recomputed
        acc -= tl.sum(G * z * inv[None, :, :], axis=1)

    tl.store(dx_ptr + offs_b[:, None] * K + offs_k[None, :], acc, mask=mask_b[:, None] & mask_k[None, :])


def mixture_bwd_params_kernel(
    x_ptr,
    mu_ptr,
    inv_ptr,
    c_ptr,
    y_ptr,
    g_ptr,
    dmu_ptr,
    dsigma_ptr,
    dlogpi_ptr,
    B,
    J,
    K,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Parameter-stationary: grid (J tiles, K tiles), each program owns its parameters and loops over B.

    dmu = inv * sum_b G z;  dsigma = inv * sum_b G (z^2 - 1);  dlogpi = sum_b G.
    """
    pid_j = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_j = offs_j < J
    mask_k = offs_k < K
    dt = dmu_ptr.dtype.element_ty

    p_offs = offs_j[:, None] * K + offs_k[None, :]
    p_mask = mask_j[:, None] & mask_k[None, :]
    mu = tl.load(mu_ptr + p_offs, mask=p_mask, other=0.0)
    inv = tl.load(inv_ptr + p_offs, mask=p_mask, other=1.0)
    c = tl.load(c_ptr + p_offs, mask=p_mask, other=float("-inf"))

    acc_gz = tl.zeros([BLOCK_J, BLOCK_K], dt)  # sum_b G z
    acc_gzz = tl.zeros([BLOCK_J, BLOCK_K], dt)  # sum_b G (z^2 - 1)
    acc_g = tl.zeros([BLOCK_J, BLOCK_K], dt)  # sum_b G
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < B
        x = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
        o_offs = offs_b[:, None] * J + offs_j[None, :]
        o_mask = mask_b[:, None] & mask_j[None, :]
        y = tl.load(y_ptr + o_offs, mask=o_mask, other=float("-inf"))
        g = tl.load(g_ptr + o_offs, mask=o_mask, other=0.0)
        live = (y > float("-inf")) & (g != 0.0)
        y = tl.where(live, y, float("inf"))
        g = tl.where(live, g, 0.0)

        z = (x[:, None, :] - mu[None, :, :]) * inv[None, :, :]
        q = c[None, :, :] - 0.5 * z * z
        G = g[:, :, None] * tl.exp(q - y[:, :, None])
        Gz = G * z
        acc_gz += tl.sum(Gz, axis=0)
        acc_gzz += tl.sum(Gz * z - G, axis=0)
        acc_g += tl.sum(G, axis=0)

    # inv does not depend on b: apply it once after the reduction
    tl.store(dmu_ptr + p_offs, acc_gz * inv, mask=p_mask)
    tl.store(dsigma_ptr + p_offs, acc_gzz * inv, mask=p_mask)
    tl.store(dlogpi_ptr + p_offs, acc_g, mask=p_mask)

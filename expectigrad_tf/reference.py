"""Independent NumPy implementation of Expectigrad, written from Algorithm 1
of the paper (shared/paper, page 3). It shares no code with the optimizer or
the kernels and needs only NumPy: the tests and tools/ check every path against
it.
"""

import numpy as np


class ExpectigradNumpy:
    """Algorithm 1, for one array (or several, via one instance each).

    s_t = s_{t-1} + g^2
    n_t = n_{t-1} + sign(g^2)   (sparse_counter) | n_t = t
    m_t = beta m_{t-1} + (1 - beta) g / (eps + sqrt(s_t / n_t)),  0/0 := 0
    x_t = x_{t-1} - lr / (1 - beta^t) m_t           (beta > 0)
    x_t = x_{t-1} - lr g / (eps + sqrt(s_t / n_t))  (beta == 0)
    """

    def __init__(self, x0, lr=1e-3, beta=0.9, eps=1e-8, sparse_counter=True,
                 dtype=np.float64):
        self.dtype = dtype
        self.x = np.array(x0, dtype=dtype)
        self.s = np.zeros_like(self.x)
        self.n = np.zeros_like(self.x)
        self.m = np.zeros_like(self.x)
        self.lr, self.beta, self.eps = lr, beta, eps
        self.sparse_counter = sparse_counter
        self.t = 0

    def step(self, g, lr=None):
        lr = self.lr if lr is None else lr
        g = np.asarray(g, dtype=self.dtype)
        self.t += 1
        self.s = self.s + g * g
        if self.sparse_counter:
            self.n = self.n + np.sign(g * g)
            n = self.n
        else:
            n = np.full_like(self.s, self.t)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(n == 0, 0.0, self.s / np.where(n == 0, 1, n))
        u = g / (self.eps + np.sqrt(ratio))
        if self.beta > 0:
            self.m = self.beta * self.m + (1 - self.beta) * u
            self.x = self.x - lr / (1 - self.beta ** self.t) * self.m
        else:
            self.x = self.x - lr * u
        return self.x


class LazySparseExpectigradNumpy:
    """Lazy sparse Expectigrad (``lazy_sparse=True``), from its definition:
    at step ``t`` a gradient given as (row indices, row values) with
    duplicate indices summed defines the rows ``R`` it touches; Algorithm 1
    is applied to the rows in ``R`` only, with the global ``t`` in the bias
    correction (and in ``n_t = t`` without sparse counter); every other row
    keeps ``x``, ``s``, ``n`` and ``m`` unchanged (its momentum does not
    decay). Arrays of shape (rows, ...)."""

    def __init__(self, x0, lr=1e-3, beta=0.9, eps=1e-8, sparse_counter=True,
                 dtype=np.float64):
        self.dtype = dtype
        self.x = np.array(x0, dtype=dtype)
        self.s = np.zeros_like(self.x)
        self.n = np.zeros_like(self.x)
        self.m = np.zeros_like(self.x)
        self.lr, self.beta, self.eps = lr, beta, eps
        self.sparse_counter = sparse_counter
        self.t = 0

    def step(self, indices, values, lr=None):
        lr = self.lr if lr is None else lr
        indices = np.asarray(indices).reshape(-1)
        values = np.asarray(values, dtype=self.dtype).reshape((indices.size,) + self.x.shape[1:])
        self.t += 1
        for r in sorted(set(indices.tolist())):
            g = values[indices == r].sum(axis=0)  # duplicates summed
            self.s[r] = self.s[r] + g * g
            if self.sparse_counter:
                self.n[r] = self.n[r] + np.sign(g * g)
                n = self.n[r]
            else:
                n = np.full_like(g, self.t)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(n == 0, 0.0, self.s[r] / np.where(n == 0, 1, n))
            u = g / (self.eps + np.sqrt(ratio))
            if self.beta > 0:
                self.m[r] = self.beta * self.m[r] + (1 - self.beta) * u
                self.x[r] = self.x[r] - lr / (1 - self.beta ** self.t) * self.m[r]
            else:
                self.x[r] = self.x[r] - lr * u
        return self.x


def online_gradient(problem, x, t):
    """Deterministic online problems, each a function of (x, t) only.

    'quadratic': g = a*(x - b) + 0.3*sin(t*k)
    'intermittent': like quadratic but most components are exactly 0 for long
        stretches (active only on some steps), which exercises the sparse
        counter and 0/0 := 0.
    'reddi': the Reddi problem's gradient, C on every third step, else -1.
    """
    x = np.asarray(x, dtype=np.float64)
    k = np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape)
    if problem == "quadratic":
        return 0.5 * k * (x - 1.0 / k) + 0.3 * np.sin(t * k)
    if problem == "intermittent":
        g = (x - 2.0) + 0.5 * np.cos(t * k)
        period = 7 + (np.arange(x.size).reshape(x.shape) % 5) * 50
        active = (t % period) < 3
        active[..., 0] = t > 400  # never touched for the first 400 steps
        return np.where(active, g, 0.0)
    if problem == "reddi":
        return np.where(np.full(x.shape, t % 3 == 0), 3.0, -1.0)
    raise ValueError(problem)

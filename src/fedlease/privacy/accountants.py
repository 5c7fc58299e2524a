"""``privacy.accountant``: the Opacus accountants a DP run's epsilon may be computed with, each
with the keyword arguments of its ``get_epsilon``. Apart from ``accounting.py`` so that config
validation can name them without importing Opacus."""

from __future__ import annotations

from fedlease.registry import Registry

# the RDP orders searched: fractional ones near 1 (costly to compute) sparse, integers dense;
# Opacus' default stops at 63, which cannot state an epsilon much below 0.2 at delta 1e-5 (the
# allocation vector's share can be); a coarser grid only loosens the bound (upper bound kept)
RDP_ORDERS = ([1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64))
              + [80, 96, 128, 192, 256, 384, 512, 1024])

ACCOUNTANTS: Registry[dict] = Registry("privacy.accountant", {
    "rdp": {"alphas": RDP_ORDERS},
    "prv": {},
})

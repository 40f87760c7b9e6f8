"""Derives the constants of the table log in csrc/cpu/vec_math.h.

log(x) = k ln 2 + log(c_i) + log1p(r), r = z / c_i - 1, where x = 2^k z with
z in [OFF, 2 OFF) and i the top 3 bits of z's mantissa offset from OFF. This
script picks OFF (so that 1 sits at 2/3 of its interval, which makes the
interval symmetric around 1 in value: 1/24 on either side), the 8 table
entries (1/c_i as a float near 1/centre whose log is closest to a float, so
log(c_i) is stored with next to no rounding error; c = 1 for the interval
holding 1), and fits R in log1p(r) = r + r^2 R(r) on |r| <= max |r|: degree 3,
coefficients rounded to float one at a time, lowest first, each refit after
the previous rounding (a weighted least-squares fit driven towards minimax).

    python tools/log_table.py     # prints the C++ constants and the fit error
"""
import math
import struct

import numpy as np

BITS = 3
N = 1 << BITS
SHIFT = 23 - BITS
DEGREE = 3


def bits_of(f):
    return struct.unpack("<i", struct.pack("<f", f))[0]


def float_of(i):
    return struct.unpack("<f", struct.pack("<i", i & 0xFFFFFFFF))[0]


def ulp(v):
    v = abs(float(np.float32(v)))
    return 2.0 ** (max(math.frexp(v)[1] - 1, -126) - 23) if v else 2.0 ** -149


def table():
    # tmp = bits(x) - OFF; 1.0 at 2/3 of interval 4, z in about [0.708, 1.417)
    off = 0x3F800000 - (2 << SHIFT) // 3 - 4 * (1 << SHIFT)
    rows = []
    for i in range(N):
        a, b = float_of(off + (i << SHIFT)), float_of(off + ((i + 1) << SHIFT))
        if a <= 1.0 < b:
            rows.append((1.0, 0.0, a, b))
            continue
        centre_bits = bits_of(float(np.float32(2 / (a + b))))
        best = None
        for d in range(-4096, 4097):
            invc = float_of(centre_bits + d)
            if max(abs(a * invc - 1), abs(b * invc - 1)) > (b - a) / (a + b) * 1.02:
                continue  # stay near the centre: |r| at most 2% above optimal
            logc = -math.log(invc)
            err = abs(logc - float(np.float32(logc))) / ulp(logc)
            if best is None or err < best[0]:
                best = (err, invc, float(np.float32(logc)))
        rows.append((best[1], best[2], a, b))
    return off, rows


def fit(rmax):
    r = np.cos(np.linspace(0.0, np.pi, 4001)) * rmax
    r = r[np.abs(r) > 1e-7]
    target = (np.log1p(r) - r) / r**2
    weight = r**2 / np.abs(np.log1p(r))  # error of R -> relative error of log1p
    coef = []
    for k in range(DEGREE + 1):
        basis = np.stack([r**j for j in range(k, DEGREE + 1)], 1)
        rest = target - sum(c * r**j for j, c in enumerate(coef))
        w = weight.copy()
        for _ in range(60):
            sol = np.linalg.lstsq(basis * w[:, None], rest * w, rcond=None)[0]
            e = np.abs((basis @ sol - rest) * weight)
            w = w * np.sqrt(1 + e / e.max())
        coef.append(float(np.float32(sol[0])))
    poly = sum(c * r**j for j, c in enumerate(coef))
    rel = np.abs(r + r * r * poly - np.log1p(r)) / np.abs(np.log1p(r))
    return coef, rel.max()


def hexf(v):
    m, e = float(np.float32(v)).hex().split("p")
    return f"{m.rstrip('0').rstrip('.')}p{e}f"


def main():
    off, rows = table()
    rmax = max(max(abs(a * ic - 1), abs(b * ic - 1)) for ic, _, a, b in rows)
    print(f"kLogTableOffBits = {off:#x}  ({float_of(off)!r}); max |r| = {rmax:.4f}")
    print("kLogInvC:", ", ".join(hexf(ic) for ic, *_ in rows))
    print("kLogLogC:", ", ".join(hexf(lc) for _, lc, *_ in rows))
    coef, err = fit(rmax)
    print("kLogR:", ", ".join(f"{np.float32(c)!r}" for c in coef), f"(relative error {err:.2e})")


if __name__ == "__main__":
    main()

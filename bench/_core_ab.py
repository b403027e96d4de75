import statistics, handshakes
r=[handshakes.core_round(2000) for _ in range(5)]; f=[handshakes.crypto_floor(2000) for _ in range(5)]
c=statistics.median(x[1] for x in r); fl=statistics.median(f)
print(f"rekey {c*1e6:.0f} us, floor {fl*1e6:.0f} us, ratio {c/fl:.2f}, {statistics.median(x[0] for x in r):.0f}/s")

"""steeldefect: a reproducible DVC pipeline for a ResNet50 steel-defect classifier.

The same bits on every x86-64 CPU with AVX2: TensorFlow's oneDNN picks its kernels by the CPU's instruction set
(AVX2, AVX-512, ...), and the kernels round differently, so the same run gives other weights on another CPU. Any
import of steeldefect caps oneDNN at AVX2 (ONEDNN_MAX_CPU_ISA), before TensorFlow runs its first op; oneDNN reads
the cap then, so this holds even when TensorFlow was imported first. STEELDEFECT_CPU_ISA=native lifts the cap
(faster on AVX-512 CPUs, machine-dependent bits); a ONEDNN_MAX_CPU_ISA set by the user is kept as it is.
"""

import os
import sys

CPU_ISA = os.environ.get("STEELDEFECT_CPU_ISA", "").strip().lower() or "avx2"
if CPU_ISA not in ("avx2", "native"):
    print(
        f"error: environment: STEELDEFECT_CPU_ISA = {CPU_ISA!r} is not allowed; expected avx2 or native.",
        file=sys.stderr,
    )
    raise SystemExit(2)
if CPU_ISA == "avx2":
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

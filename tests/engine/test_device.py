"""What the CPU computes natively: flags from /proc/cpuinfo text, and native bf16 from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffpir_rt.engine import cpu_flags, cpu_native_bf16
from diffpir_rt.engine.device import parse_cpu_flags

# Abridged /proc/cpuinfo of three machines (first processor only matters).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu
"""
SKYLAKE_X = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl
"""
NEOVERSE_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve i8mm bf16
CPU implementer\t: 0x41
"""


def test_flags_of_the_first_processor_on_x86_and_arm() -> None:
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= parse_cpu_flags(SAPPHIRE_RAPIDS)
    assert "fpu" in parse_cpu_flags(SAPPHIRE_RAPIDS) and len(parse_cpu_flags(SAPPHIRE_RAPIDS)) == 13
    assert {"asimd", "sve", "bf16"} <= parse_cpu_flags(NEOVERSE_V1)
    assert parse_cpu_flags("processor\t: 0\nmodel name\t: mystery\n") == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (SAPPHIRE_RAPIDS, True),  # AMX-BF16 and AVX512-BF16
        (SKYLAKE_X, False),  # AVX-512 without BF16: oneDNN emulates bf16 there, slower than fp32
        (NEOVERSE_V1, True),  # Arm v8.6 BF16
        ("", False),
    ],
)
def test_native_bf16_follows_the_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_native_bf16(parse_cpu_flags(cpuinfo)) is native


def test_each_native_flag_alone_is_enough() -> None:
    assert cpu_native_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert cpu_native_bf16(frozenset({"amx_bf16"}))
    assert not cpu_native_bf16(frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "amx_int8"}))


def test_flags_are_read_from_a_file_and_an_unreadable_one_is_empty(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(SKYLAKE_X)
    assert "avx512f" in cpu_flags(str(info)) and not cpu_native_bf16(cpu_flags(str(info)))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
